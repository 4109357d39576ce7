"""Bad input with PostgreSQL, table-driven: each case, the command, the one line, nothing lost.

The config-only and SQLite cases are in tests/test_bad_input.py; docs/reliability.md
("Bad input") lists every case with its message and test.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from typer.testing import CliRunner

from e2e_helpers import pg_exec, pg_rows, syncline, wait_until
from servers import PgServer
from syncline.cli import app
from syncline.config import load_config
from syncline.dlq import DeadLetterStore
from syncline.pipeline import Pipeline

runner = CliRunner()
PASSWORD = "syncline-test"  # tests/servers.py: must never show in any output


def cli(*args: str) -> Any:
    return runner.invoke(app, list(args))


def assert_one_line(result: Any, code: int, message: str) -> None:
    out = result.stdout + result.stderr
    assert result.exit_code == code, out
    assert "Traceback" not in out and PASSWORD not in out
    assert result.exception is None or isinstance(result.exception, SystemExit), out
    assert result.stderr.splitlines() == [f"syncline: error: {message}"]


def with_parts(dsn: str, *, user: str = "", password: str = "", host: str = "", port: int = 0,
               db: str = "") -> str:  # fmt: skip
    u = urlsplit(dsn)
    netloc = f"{user or u.username}:{password or u.password}@{host or u.hostname}:{port or u.port}"
    return urlunsplit(u._replace(netloc=netloc, path="/" + (db or u.path.lstrip("/"))))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- startup: syncline check / run stop with one line before anything runs -------------


@dataclass
class Dbs:
    src: str
    dst: str
    bare: str  # a target database without tables
    other: str  # another source database on the same server
    norepl: str  # a role without REPLICATION

    def name(self, dsn: str) -> str:
        return urlsplit(dsn).path.lstrip("/")

    @property
    def port(self) -> int:
        return int(urlsplit(self.src).port or 0)


@pytest.fixture(scope="module")
def dbs(pg_server: PgServer) -> Iterator[Dbs]:
    made = [pg_server.create_database("bad") for _ in range(4)]
    src, dst, bare, other = made
    role = f"norepl_{uuid.uuid4().hex[:8]}"
    pg_exec(
        src,
        "CREATE TABLE orders (id int PRIMARY KEY, qty int)",
        "CREATE TABLE audit (at timestamptz, what text)",
        "CREATE TABLE locks (id int PRIMARY KEY, owner text)",
        "ALTER TABLE locks REPLICA IDENTITY NOTHING",
        "CREATE VIEW big_orders AS SELECT * FROM orders WHERE qty > 10",
        f"CREATE ROLE {role} LOGIN PASSWORD 'pw'",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}",
    )
    pg_exec(dst, "CREATE TABLE orders (id int PRIMARY KEY, qty int)")
    pg_exec(other, "SELECT pg_create_logical_replication_slot('syncline_taken', 'pgoutput')")
    yield Dbs(src, dst, bare, other, role)
    for dsn in made:
        pg_server.drop_database(dsn)
    pg_exec(pg_server.admin_dsn, f"DROP ROLE IF EXISTS {role}")


Case = dict[str, Any]
SRC_WHERE = "127.0.0.1:{port}"

# id, what to change, exit code, message: {port} the server's, {free} a port nobody
# listens on, {src_db}/{dst_db}/{bare_db}/{other_db} the databases, {role} the role
STARTUP_CASES: list[tuple[str, Case, int, str]] = [
    (
        "source-connection-refused",
        {"src": lambda d: with_parts(d.src, port=d.free)},
        1,
        "cannot connect to PostgreSQL at 127.0.0.1:{free}: connection refused (source of pipeline"
        " shop); check the host and port in the source dsn and that the server is running",
    ),
    (
        "source-unknown-host",
        {"src": lambda d: with_parts(d.src, host="no-such-host.invalid")},
        1,
        "cannot connect to PostgreSQL at no-such-host.invalid:{port}: unknown host (source of"
        " pipeline shop); check the host and port in the source dsn and that the server is running",
    ),
    (
        "sink-connection-refused",
        {"dst": lambda d: with_parts(d.dst, port=d.free)},
        1,
        "cannot connect to PostgreSQL at 127.0.0.1:{free}: connection refused (sink of pipeline"
        " shop); check the host and port in the sink dsn and that the server is running",
    ),
    (
        "sink-unknown-host",
        {"dst": lambda d: with_parts(d.dst, host="no-such-host.invalid")},
        1,
        "cannot connect to PostgreSQL at no-such-host.invalid:{port}: unknown host (sink of"
        " pipeline shop); check the host and port in the sink dsn and that the server is running",
    ),
    (
        "source-wrong-password",
        {"src": lambda d: with_parts(d.src, password="wrong")},
        1,
        "password authentication failed for user postgres at 127.0.0.1:{port} (source of pipeline"
        " shop); check the user and password in the source dsn",
    ),
    (
        "sink-wrong-password",
        {"dst": lambda d: with_parts(d.dst, password="wrong")},
        1,
        "PostgreSQL at 127.0.0.1:{port} refused user postgres (sink of pipeline shop): password"
        ' authentication failed for user "postgres"; check the user and password in the sink dsn',
    ),
    (
        "source-unknown-user",
        {"src": lambda d: with_parts(d.src, user="ghost")},
        1,
        "password authentication failed for user ghost at 127.0.0.1:{port} (source of pipeline"
        " shop); check the user and password in the source dsn",
    ),
    (
        "sink-unknown-user",
        {"dst": lambda d: with_parts(d.dst, user="ghost")},
        1,
        "PostgreSQL at 127.0.0.1:{port} refused user ghost (sink of pipeline shop): password"
        ' authentication failed for user "ghost"; check the user and password in the sink dsn',
    ),
    (
        "source-database-missing",
        {"src": lambda d: with_parts(d.src, db="no_such_db")},
        2,
        "database no_such_db does not exist at 127.0.0.1:{port} (source of pipeline shop);"
        " create it or fix the source dsn",
    ),
    (
        "sink-database-missing",
        {"dst": lambda d: with_parts(d.dst, db="no_such_db")},
        2,
        "database no_such_db does not exist at 127.0.0.1:{port} (sink of pipeline shop);"
        " create it or fix the sink dsn",
    ),
    (
        "source-dsn-not-a-dsn",
        {"src": lambda d: "orders database on the old server"},
        2,
        "the source dsn of pipeline shop is not a valid PostgreSQL connection string"
        " (expected postgresql://user:password@host:port/dbname)",
    ),
    (
        "sink-dsn-bad-port",
        {"dst": lambda d: "host=127.0.0.1 port=fivefourthreetwo dbname=x"},
        2,
        "sink dsn of pipeline shop has a bad port 'fivefourthreetwo'"
        " (expected postgresql://user:password@host:port/dbname)",
    ),
    (
        "source-user-without-replication",
        {"src": lambda d: with_parts(d.src, user=d.norepl, password="pw")},
        1,
        "user {role} may not use replication at 127.0.0.1:{port}: ALTER ROLE {role} REPLICATION"
        " (source of pipeline shop)",
    ),
    (
        "source-table-missing",
        {"tables": "[orders, refunds]"},
        1,
        "table public.refunds does not exist in database {src_db} (source of pipeline shop)",
    ),
    (
        "source-is-a-view",
        {"tables": "[big_orders]"},
        1,
        "public.big_orders in database {src_db} is a view; logical replication captures tables"
        " only (source of pipeline shop)",
    ),
    (
        "source-table-without-primary-key",
        {"tables": "[audit]"},
        1,
        "table public.audit has no primary key: add one or set REPLICA IDENTITY FULL (database"
        " {src_db}, source of pipeline shop)",
    ),
    (
        "replica-identity-nothing",
        {"tables": "[locks]"},
        1,
        "table public.locks has REPLICA IDENTITY NOTHING, so deletes carry no key: ALTER TABLE"
        " public.locks REPLICA IDENTITY DEFAULT (database {src_db}, source of pipeline shop)",
    ),
    (
        "slot-name-taken-by-another-database",
        {"extra": "slot: syncline_taken"},
        1,
        "replication slot syncline_taken already exists for database {other_db} with plugin"
        " pgoutput; choose another slot name for pipeline shop",
    ),
    (
        "target-table-missing-without-create-tables",
        {"dst": lambda d: d.bare},
        1,
        "target table public.orders does not exist in database {bare_db} at 127.0.0.1:{port}"
        " (sink of pipeline shop); create it or set create_tables: true",
    ),
    (
        "target-table-lacks-a-column",
        {"sink": ", tables: {orders: {target: public.orders_narrow}}"},
        1,
        "target table public.orders_narrow in database {dst_db} at 127.0.0.1:{port} (sink of"
        " pipeline shop) lacks column(s) qty that source table public.orders sends; add them or"
        " drop them from the source",
    ),
    (
        "target-table-without-primary-key",
        {"sink": ", tables: {orders: {target: public.orders_heap}}"},
        1,
        "target table public.orders_heap in database {dst_db} at 127.0.0.1:{port} (sink of"
        " pipeline shop) has no primary key; add PRIMARY KEY (id)",
    ),
]


@pytest.fixture(scope="module")
def narrow_targets(dbs: Dbs) -> None:
    pg_exec(
        dbs.dst,
        "CREATE TABLE orders_narrow (id int PRIMARY KEY)",
        "CREATE TABLE orders_heap (id int, qty int)",
    )


@pytest.mark.parametrize(
    ("case", "code", "message"), [c[1:] for c in STARTUP_CASES], ids=[c[0] for c in STARTUP_CASES]
)
def test_bad_connections_tables_and_keys_stop_check_and_run_with_one_line(
    tmp_path: Path, dbs: Dbs, narrow_targets: None, case: Case, code: int, message: str
) -> None:
    dbs.free = free_port()  # type: ignore[attr-defined]
    src = case.get("src", lambda d: d.src)(dbs)
    dst = case.get("dst", lambda d: d.dst)(dbs)
    extra = ", " + case["extra"] if "extra" in case else ""
    cfg = tmp_path / "syncline.yaml"
    cfg.write_text(
        f"""
pipelines:
  - name: shop
    source: {{kind: postgres, dsn: "{src}", tables: {case.get("tables", "[orders]")}{extra}}}
    transport: {{path: "{tmp_path / "log"}"}}
    sink: {{kind: postgres, dsn: "{dst}"{case.get("sink", "")}}}
"""
    )
    expected = message.format(
        port=dbs.port,
        free=dbs.free,  # type: ignore[attr-defined]
        src_db=dbs.name(dbs.src),
        dst_db=dbs.name(dbs.dst),
        bare_db=dbs.name(dbs.bare),
        other_db=dbs.name(dbs.other),
        role=dbs.norepl,
    )
    for verb in ("check", "run"):
        assert_one_line(cli(verb, str(cfg)), code, expected)
    slots = "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'syncline_shop'"
    assert pg_rows(dbs.src, slots) == [(0,)]  # nothing was started


def test_a_real_process_prints_one_line_and_no_password(tmp_path: Path, dbs: Dbs) -> None:
    cfg = tmp_path / "syncline.yaml"
    cfg.write_text(
        f"""
pipelines:
  - name: shop
    source: {{kind: postgres, dsn: "{with_parts(dbs.src, password="wrong")}", tables: [orders]}}
    transport: {{path: "{tmp_path / "log"}"}}
    sink: {{kind: postgres, dsn: "{dbs.dst}"}}
"""
    )
    result = syncline("run", str(cfg))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"syncline: error: password authentication failed for user postgres at"
        f" 127.0.0.1:{dbs.port} (source of pipeline shop); check the user and password in the"
        " source dsn"
    ]
    assert PASSWORD not in result.stdout + result.stderr


# ---- bad data at run time -------------------------------------------------------------


@pytest.fixture
def pipes() -> Iterator[list[Pipeline]]:
    started: list[Pipeline] = []
    yield started
    for p in started:
        p.stop(drain=False, timeout=10)


def pipeline_config(
    tmp_path: Path, src: str, sink: str, tables: str = "[t]", name: str = "shop"
) -> Path:
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(
        f"""
pipelines:
  - name: {name}
    source: {{kind: postgres, dsn: "{src}", tables: {tables}}}
    transport: {{path: "{tmp_path / "log"}", fsync: false}}
    sink: {sink}
    apply_in: thread
    batch: {{max_events: 500, max_wait_ms: 5}}
    retry: {{initial_delay_ms: 10, max_delay_ms: 100}}
    dlq: {{max_attempts: 1}}
"""
    )
    return cfg


def start(pipes: list[Pipeline], config: Path) -> Pipeline:
    pipe = Pipeline(load_config(config).pipelines[0])
    pipes.append(pipe)
    pipe.check()
    pipe.start()
    return pipe


def settled(pipe: Pipeline, n: int) -> Callable[[], bool]:
    """Every one of ``n`` changes applied or set aside, and the log drained."""

    def done() -> bool:
        assert pipe.failure is None, pipe.failure
        s = pipe.stats
        return s.applied + s.skipped + s.dead_lettered + s.held >= n and pipe.caught_up()

    return done


def dlq_errors(config: Path) -> list[str]:
    cfg = load_config(config).pipelines[0]
    store = DeadLetterStore(cfg.dlq_dir, cfg.name, create=False)
    try:
        return [f"{e.key_text} {e.error_class}: {e.error}" for e in store.entries()]
    finally:
        store.close()


def test_values_the_target_refuses_are_dead_lettered_with_the_column_named(
    tmp_path: Path, pg_source_dsn: str, pg_target_dsn: str, pipes: list[Pipeline]
) -> None:
    pg_exec(
        pg_source_dsn,
        "CREATE TABLE t (id int PRIMARY KEY, code text, n text, note text, pos int, ref int,"
        " mood text)",
    )
    pg_exec(
        pg_target_dsn,
        "CREATE TYPE mood AS ENUM ('sad', 'happy')",
        "CREATE TABLE parent (id int PRIMARY KEY)",
        "INSERT INTO parent VALUES (1)",
        "CREATE TABLE t (id int PRIMARY KEY, code varchar(3), n int, note text NOT NULL,"
        " pos int CONSTRAINT positive CHECK (pos > 0), ref int REFERENCES parent, mood mood)",
    )
    config = pipeline_config(tmp_path, pg_source_dsn, f'{{kind: postgres, dsn: "{pg_target_dsn}"}}')
    pipe = start(pipes, config)
    pg_exec(
        pg_source_dsn,
        "INSERT INTO t VALUES (1, 'abc', '1', 'x', 1, 1, 'sad')",
        "INSERT INTO t VALUES (2, 'abcdef', '1', 'x', 1, 1, 'sad')",  # too long
        "INSERT INTO t VALUES (3, 'abc', 'one', 'x', 1, 1, 'sad')",  # not an int
        "INSERT INTO t VALUES (4, 'abc', '1', NULL, 1, 1, 'sad')",  # NOT NULL
        "INSERT INTO t VALUES (5, 'abc', '1', 'x', -1, 1, 'sad')",  # CHECK
        "INSERT INTO t VALUES (6, 'abc', '1', 'x', 1, 99, 'sad')",  # foreign key
        "INSERT INTO t VALUES (7, 'abc', '1', 'x', 1, 1, 'angry')",  # enum
        "INSERT INTO t VALUES (8, 'abc', '99999999999', 'x', 1, 1, 'sad')",  # out of range
        "INSERT INTO t VALUES (9, 'xyz', '9', 'y', 9, 1, 'happy')",
    )
    assert wait_until(settled(pipe, 9), 60)
    assert pg_rows(pg_target_dsn, "SELECT id FROM t ORDER BY id") == [(1,), (9,)]
    db = urlsplit(pg_target_dsn).path.lstrip("/")
    port = urlsplit(pg_target_dsn).port
    where = f"applying changes to public.t in database {db} at 127.0.0.1:{port} (sink of pipeline shop) failed"
    assert sorted(dlq_errors(config)) == [
        f'{{"id":2}} DataError: {where}: value too long for type character varying(3) (column code)',
        f'{{"id":3}} DataError: {where}: invalid input syntax for type integer: "one" (column n)',
        f'{{"id":4}} DataError: {where}: null value in column "note" of relation "t" violates'
        " not-null constraint",
        f'{{"id":5}} DataError: {where}: new row for relation "t" violates check constraint'
        ' "positive"',
        f'{{"id":6}} DataError: {where}: insert or update on table "t" violates foreign key'
        ' constraint "t_ref_fkey" (Key (ref)=(99) is not present in table "parent")',
        f'{{"id":7}} DataError: {where}: invalid input value for enum mood: "angry" (column mood)',
        f'{{"id":8}} DataError: {where}: value "99999999999" is out of range for type integer'
        " (column n)",
    ]
    # fix the target, then replay: everything converges
    pg_exec(
        pg_target_dsn,
        "ALTER TABLE t ALTER code TYPE text, ALTER n TYPE text, ALTER note DROP NOT NULL,"
        " DROP CONSTRAINT positive, ALTER mood TYPE text",
        "INSERT INTO parent VALUES (99)",
    )
    replayed = cli("dlq", "replay", str(config), "--all")
    assert replayed.exit_code == 0, replayed.output
    same = "SELECT id, code, n, note, pos, ref, mood::text FROM t ORDER BY id"
    assert pg_rows(pg_target_dsn, same) == pg_rows(pg_source_dsn, same)


TYPES = {  # column: (type, a literal); user-defined types are created in the source only
    "e": ("mood", "'happy'"),
    "comp": ("pair", "ROW(1, 'x,y\"z')"),
    "dom": ("posint", "5"),
    "fr": ("floatrange", "'[1.5,2.5]'"),
    "r": ("int4range", "'[1,5)'"),
    "tsr": ("tstzrange", "'[2024-01-01,2024-02-01)'"),
    "mr": ("int4multirange", "'{[1,2),[5,6)}'"),
    "pt": ("point", "'(1,2)'"),
    "bx": ("box", "'((0,0),(1,1))'"),
    "pg": ("polygon", "'((0,0),(1,1),(1,0))'"),
    "ci": ("circle", "'<(0,0),1>'"),
    "ln": ("line", "'{1,2,3}'"),
    "ls": ("lseg", "'[(0,0),(1,1)]'"),
    "pa": ("path", "'[(0,0),(1,1)]'"),
    "x": ("xml", "'<a>1</a>'"),
    "tv": ("tsvector", "'a fat cat'"),
    "tq": ("tsquery", "'fat & cat'"),
    "m": ("money", "'12.34'"),
    "iv": ("interval", "'1 day 2 hours'"),
    "bt": ("bit(3)", "B'101'"),
    "vb": ("varbit", "B'1'"),
    "mac": ("macaddr", "'08:00:2b:01:02:03'"),
    "ip": ("inet", "'10.0.0.1/8'"),
    "cd": ("cidr", "'10.0.0.0/8'"),
    "ttz": ("timetz", "'12:34:56+02'"),
    "lsn": ("pg_lsn", "'16/B374D848'"),
    "ea": ("mood[]", "'{sad,happy}'"),
    "ca": ("pair[]", "ARRAY[ROW(1,'a')::pair, ROW(2,'b')::pair]"),
    "da": ("posint[]", "ARRAY[1,2]::posint[]"),
    "ra": ("int4range[]", "ARRAY['[1,2)'::int4range]"),
    "bxa": ("box[]", "ARRAY['((0,0),(1,1))'::box, '((2,2),(3,3))'::box]"),
    "ma": ("money[]", "ARRAY['1.5'::money]"),
}
TYPES_DDL = (
    "CREATE TYPE mood AS ENUM ('sad', 'happy');"
    "CREATE TYPE pair AS (a int, b text);"
    "CREATE DOMAIN posint AS integer CHECK (VALUE > 0);"
    "CREATE TYPE floatrange AS RANGE (subtype = float8);"
    "CREATE TABLE t (id int PRIMARY KEY, "
    + ", ".join(f"{c} {t}" for c, (t, _) in TYPES.items())
    + ")"
)
ROW = ", ".join(v for _, v in TYPES.values())
AS_TEXT = "SELECT id, " + ", ".join(f"{c}::text" for c in TYPES) + " FROM t ORDER BY id"


@pytest.mark.parametrize("target", ["created-by-syncline", "same-types", "sqlite"])
def test_every_postgres_type_arrives(
    tmp_path: Path,
    pg_source_dsn: str,
    pg_target_dsn: str,
    pipes: list[Pipeline],
    target: str,
) -> None:
    """Enums, composites, domains, ranges, geometry, xml, text search, money, bit strings, arrays of them."""
    pg_exec(
        pg_source_dsn,
        TYPES_DDL,
        f"INSERT INTO t VALUES (1, {ROW})",
        "INSERT INTO t (id) VALUES (2)",
    )
    if target == "sqlite":
        sink = f"{{kind: sqlite, path: {tmp_path / 'dst.db'}}}"
    else:
        create = target == "created-by-syncline"
        if not create:
            pg_exec(pg_target_dsn, TYPES_DDL)
        sink = f'{{kind: postgres, dsn: "{pg_target_dsn}", create_tables: {str(create).lower()}}}'
    pipe = start(pipes, pipeline_config(tmp_path, pg_source_dsn, sink))
    assert wait_until(settled(pipe, 2), 60)  # the snapshot, then the stream
    pg_exec(
        pg_source_dsn, f"INSERT INTO t VALUES (3, {ROW})", "UPDATE t SET e = 'sad' WHERE id = 1"
    )
    assert wait_until(settled(pipe, 4), 60)
    assert pipe.stats.dead_lettered == 0
    source_rows = pg_rows(pg_source_dsn, AS_TEXT)
    if target == "sqlite":
        db = sqlite3.connect(tmp_path / "dst.db")
        got = db.execute("SELECT id, e, comp, dom, r, pt, x, m FROM t ORDER BY id").fetchall()
        db.close()
        assert got[0] == (1, "sad", '(1,"x,y""z")', "5", "[1,5)", "(1,2)", "<a>1</a>", "$12.34")
        assert [r[0] for r in got] == [1, 2, 3]
        return
    assert pg_rows(pg_target_dsn, AS_TEXT) == source_rows
    if target == "created-by-syncline":  # the types the target lacks became text
        kinds = pg_rows(
            pg_target_dsn,
            "SELECT column_name, udt_name FROM information_schema.columns WHERE table_name = 't'"
            " AND column_name IN ('e', 'comp', 'dom', 'fr', 'ea', 'pt') ORDER BY column_name",
        )
        assert kinds == [
            ("comp", "text"),
            ("dom", "text"),
            ("e", "text"),
            ("ea", "_text"),
            ("fr", "text"),
            ("pt", "point"),
        ]


def test_replica_identity_full_without_primary_key_works_on_unique_rows(
    tmp_path: Path, pg_source_dsn: str, pg_target_dsn: str, pipes: list[Pipeline]
) -> None:
    """Decision: supported (every column is the key); a NULL makes that row a dead letter."""
    pg_exec(
        pg_source_dsn,
        "CREATE TABLE t (a int, b text)",
        "ALTER TABLE t REPLICA IDENTITY FULL",
        "INSERT INTO t VALUES (1, 'x'), (2, 'y')",
    )
    config = pipeline_config(
        tmp_path, pg_source_dsn, f'{{kind: postgres, dsn: "{pg_target_dsn}", create_tables: true}}'
    )
    notes = Pipeline(load_config(config).pipelines[0]).check()
    assert (
        "postgres: public.t has no primary key; with REPLICA IDENTITY FULL all its columns form"
        " the key: rows must be unique and free of NULLs (a NULL row is dead-lettered,"
        " duplicates become one target row)"
    ) in notes
    pipe = start(pipes, config)
    assert wait_until(settled(pipe, 2), 60)  # the snapshot, then the stream
    pg_exec(
        pg_source_dsn,
        "UPDATE t SET b = 'x2' WHERE a = 1",
        "DELETE FROM t WHERE a = 2",
        "INSERT INTO t VALUES (3, NULL)",
        "INSERT INTO t VALUES (4, 'w')",
    )
    assert wait_until(settled(pipe, 7), 60)
    assert pg_rows(pg_target_dsn, "SELECT a, b FROM t ORDER BY a") == [(1, "x2"), (4, "w")]
    [entry] = dlq_errors(config)
    assert entry.startswith('{"a":3,"b":null} DataError: applying changes to public.t')
    assert entry.endswith('null value in column "b" of relation "t" violates not-null constraint')


def test_big_rows_go_through(
    tmp_path: Path, pg_source_dsn: str, pg_target_dsn: str, pipes: list[Pipeline]
) -> None:
    """A 16 MB bytea and a 16 MB text (the limits are in docs/reliability.md)."""
    ddl = "CREATE TABLE t (id int PRIMARY KEY, b bytea, s text)"
    pg_exec(pg_source_dsn, ddl)
    pg_exec(pg_target_dsn, ddl)
    pipe = start(
        pipes,
        pipeline_config(tmp_path, pg_source_dsn, f'{{kind: postgres, dsn: "{pg_target_dsn}"}}'),
    )
    pg_exec(
        pg_source_dsn,
        "INSERT INTO t VALUES (1, (SELECT string_agg(sha256(i::text::bytea), '') FROM"
        " generate_series(1, 524288) i), NULL)",
        "INSERT INTO t VALUES (2, NULL, (SELECT string_agg(md5(i::text), '') FROM"
        " generate_series(1, 524288) i))",
        "INSERT INTO t VALUES (3, '\\x00', 'small')",
    )
    assert wait_until(settled(pipe, 3), 120)
    check = "SELECT id, length(b), length(s), md5(b), md5(s) FROM t ORDER BY id"
    got = pg_rows(pg_target_dsn, check)
    assert got == pg_rows(pg_source_dsn, check)
    assert [r[1:3] for r in got] == [(16 << 20, None), (None, 16 << 20), (1, 5)]


@pytest.mark.slow
@pytest.mark.parametrize("megabytes", [200])
def test_very_big_rows_go_through(
    tmp_path: Path, pg_source_dsn: str, pg_target_dsn: str, pipes: list[Pipeline], megabytes: int
) -> None:
    ddl = "CREATE TABLE t (id int PRIMARY KEY, b bytea, s text)"
    pg_exec(pg_source_dsn, ddl)
    pg_exec(pg_target_dsn, ddl)
    pipe = start(
        pipes,
        pipeline_config(tmp_path, pg_source_dsn, f'{{kind: postgres, dsn: "{pg_target_dsn}"}}'),
    )
    n = megabytes << 15  # 32-byte digests
    pg_exec(
        pg_source_dsn,
        f"INSERT INTO t VALUES (1, (SELECT string_agg(sha256(i::text::bytea), '') FROM"
        f" generate_series(1, {n}) i), NULL)",
        f"INSERT INTO t VALUES (2, NULL, (SELECT string_agg(md5(i::text), '') FROM"
        f" generate_series(1, {n}) i))",
    )
    assert wait_until(settled(pipe, 2), 600)
    check = "SELECT id, length(b), length(s), md5(b), md5(s) FROM t ORDER BY id"
    assert pg_rows(pg_target_dsn, check) == pg_rows(pg_source_dsn, check)


def test_text_that_is_not_utf8_in_a_sql_ascii_database_stops_with_one_line(
    tmp_path: Path, pg_server: PgServer, pg_target_dsn: str
) -> None:
    """PostgreSQL itself refuses to send it as UTF-8: the change stays in the slot."""
    name = f"ascii_{uuid.uuid4().hex[:8]}"
    pg_exec(
        pg_server.admin_dsn,
        f"CREATE DATABASE {name} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'"
        " TEMPLATE template0",
    )
    src = pg_server.dsn(name)
    try:
        pg_exec(
            src,
            "CREATE TABLE t (id int PRIMARY KEY, s text)",
            "INSERT INTO t VALUES (1, E'caf\\xe9')",
        )
        pg_exec(pg_target_dsn, "CREATE TABLE t (id int PRIMARY KEY, s text)")
        config = pipeline_config(tmp_path, src, f'{{kind: postgres, dsn: "{pg_target_dsn}"}}')
        result = syncline("run", str(config), timeout=60)
        assert result.returncode == 1
        assert "Traceback" not in result.stderr and PASSWORD not in result.stderr
        port = urlsplit(src).port
        assert result.stderr.splitlines()[-1] == (
            f"syncline: error: reading the snapshot failed at 127.0.0.1:{port}: invalid byte"
            f' sequence for encoding "UTF8": 0xe9: database {name} holds text that is not valid'
            " UTF-8 (a SQL_ASCII database?) and syncline reads UTF-8 only; see"
            " docs/reliability.md, bad input (source of pipeline shop)"
        )
        assert pg_rows(pg_target_dsn, "SELECT count(*) FROM t") == [(0,)]
    finally:
        pg_server.drop_database(src)


def test_events_of_a_sqlite_source_the_postgres_target_refuses(
    tmp_path: Path, pg_target_dsn: str, pipes: list[Pipeline]
) -> None:
    """SQLite keeps any value in any column; PostgreSQL's types refuse some: one column named."""
    src = tmp_path / "src.db"
    db = sqlite3.connect(src, isolation_level=None)
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, qty INTEGER)")
    db.execute("INSERT INTO t VALUES (1, 1), (2, 'two'), (3, 3)")
    db.close()
    pg_exec(pg_target_dsn, "CREATE TABLE t (id bigint PRIMARY KEY, qty bigint)")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"""
pipelines:
  - name: shop
    source: {{kind: sqlite, path: {src}, tables: [t]}}
    transport: {{path: "{tmp_path / "log"}", fsync: false}}
    sink: {{kind: postgres, dsn: "{pg_target_dsn}"}}
    apply_in: thread
    dlq: {{max_attempts: 1}}
"""
    )
    pipe = start(pipes, cfg)
    assert wait_until(settled(pipe, 3), 60)
    assert pg_rows(pg_target_dsn, "SELECT id, qty FROM t ORDER BY id") == [(1, 1), (3, 3)]
    [entry] = dlq_errors(cfg)
    assert entry.startswith('{"id":2} DataError: applying changes to public.t')
    assert entry.endswith('invalid input syntax for type bigint: "two" (column qty)')
    assert os.path.exists(tmp_path / "log" / "shop.dlq.db")
