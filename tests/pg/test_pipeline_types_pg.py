"""Every supported type, TOAST, key changes and a 100k-row transaction, end to end PG → PG."""

from __future__ import annotations

from pathlib import Path

from e2e_helpers import SynclineProcess, pg_exec, pg_rows, wait_until, write_config

TYPES_DDL = """
CREATE TABLE public.everything (
    id bigint PRIMARY KEY,
    s smallint, i integer, b bigint, n numeric, n2 numeric(30,10),
    r real, d double precision, t text, v varchar(20), c char(3), flag boolean,
    u uuid, j json, jb jsonb, dt date, ts timestamp, tstz timestamptz, by bytea,
    ia int[], ta text[], nested int[][], big text
);
"""

ROWS = r"""
INSERT INTO everything VALUES
 (1, -32768, 2147483647, -9223372036854775808, 123456789012345678901234567890.123456789,
  -0.0000000001, 3.14, 'NaN', E'tab\there\nnewline \\ backslash "quote" ünïcödé ✓', 'varchar', 'ab',
  true, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2, {"b": null}]}', '{"z": 1, "a": "x"}',
  '2024-02-29', '2024-01-02 03:04:05.678901', '2024-01-02 03:04:05.678901+05:30',
  '\x00ff10deadbeef00', '{1,NULL,-3}', '{"a,b","c\"d",NULL,"","e f"}', '{{1,2},{3,4}}',
  repeat('toast-me ', 2000)),
 (2, NULL, NULL, NULL, NULL, NULL, 'Infinity', '-Infinity', NULL, NULL, NULL, false, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, '{}', NULL, NULL, NULL),
 (3, 0, 0, 0, 0, 0, 0, 0, '', '', '', NULL, NULL, 'null', '[]', '0001-01-01', '1970-01-01 00:00:00',
  '2038-01-19 03:14:08+00', '\x', NULL, '{NULL}', NULL, 'short');
"""

SELECT_TEXT = "SELECT ROW(e.*)::text FROM everything e ORDER BY id"


def test_every_type_toast_pk_change_and_big_transaction(
    tmp_path: Path, pg_source_dsn: str, pg_target_dsn: str
) -> None:
    pg_exec(pg_source_dsn, TYPES_DDL, ROWS)
    pg_exec(pg_target_dsn, TYPES_DDL)
    cfg = write_config(
        tmp_path / "c.yaml",
        f"""
pipelines:
  - name: types
    source: {{kind: postgres, dsn: "{pg_source_dsn}", tables: [everything]}}
    transport: {{path: "{tmp_path / "log"}"}}
    sink: {{kind: postgres, dsn: "{pg_target_dsn}"}}
""",
    )
    proc = SynclineProcess(cfg, tmp_path / "run.log")
    same = lambda: pg_rows(pg_source_dsn, SELECT_TEXT) == pg_rows(pg_target_dsn, SELECT_TEXT)  # noqa: E731
    try:
        assert wait_until(same, 60), (tmp_path / "run.log").read_text()[-2000:]  # snapshot
        # stream: an update that leaves the TOASTed column alone must not blank it
        pg_exec(pg_source_dsn, "UPDATE everything SET s = 7 WHERE id = 1")
        # primary-key change, delete, and every type again through the stream
        pg_exec(
            pg_source_dsn,
            "UPDATE everything SET id = 30 WHERE id = 3",
            "DELETE FROM everything WHERE id = 2",
        )
        pg_exec(
            pg_source_dsn,
            ROWS.replace("(1,", "(101,").replace("(2,", "(102,").replace("(3,", "(103,"),
        )
        assert wait_until(same, 60), (tmp_path / "run.log").read_text()[-2000:]
        big = pg_rows(pg_target_dsn, "SELECT length(big) FROM everything WHERE id = 1")
        assert big == [(len("toast-me ") * 2000,)]
        # one transaction of 100k rows
        pg_exec(
            pg_source_dsn,
            "INSERT INTO everything (id, t, ia) SELECT 1000 + g, md5(g::text), ARRAY[g] "
            "FROM generate_series(1, 100000) g",
        )
        count = "SELECT count(*) FROM everything"
        assert wait_until(
            lambda: pg_rows(pg_target_dsn, count) == pg_rows(pg_source_dsn, count), 120
        )
        assert same()
        assert proc.terminate() == 0
    finally:
        if proc.alive():
            proc.kill9()
