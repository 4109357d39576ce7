"""PostgreSQL → embedded log → PostgreSQL, end to end through the CLI."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from e2e_helpers import (
    ACCOUNTS_DDL,
    ACCOUNTS_SELECT,
    ACCOUNTS_TARGET_DDL,
    SynclineProcess,
    Writer,
    pg_exec,
    pg_rows,
    syncline,
    wait_until,
    write_config,
)

SOURCE_DDL, TARGET_DDL, SELECT = ACCOUNTS_DDL, ACCOUNTS_TARGET_DDL, ACCOUNTS_SELECT


def config(tmp_path: Path, src: str, dst: str, batch: int = 500) -> Path:
    return write_config(
        tmp_path / "syncline.yaml",
        f"""
pipelines:
  - name: accounts
    source: {{kind: postgres, dsn: "{src}", tables: [public.accounts], heartbeat_interval: 1}}
    transport: {{kind: embedded, path: "{tmp_path / "log"}", partitions: 4}}
    sink: {{kind: postgres, dsn: "{dst}"}}
    batch: {{max_events: {batch}, max_wait_ms: 10}}
""",
    )


def test_snapshot_then_stream_converges(
    tmp_path: Path, pg_source_dsn: str, pg_target_dsn: str
) -> None:
    pg_exec(pg_source_dsn, SOURCE_DDL)
    pg_exec(pg_target_dsn, TARGET_DDL)
    pg_exec(
        pg_source_dsn,
        "INSERT INTO accounts(id, owner, balance) SELECT g, 'pre ' || g, g * 1.5 FROM generate_series(1, 5000) g",
    )
    proc = SynclineProcess(config(tmp_path, pg_source_dsn, pg_target_dsn), tmp_path / "run.log")
    try:
        writer = Writer(pg_source_dsn, seconds=3, seed=1, first_id=5001)
        writer.start()
        writer.join()
        assert writer.error is None
        assert wait_until(
            lambda: pg_rows(pg_source_dsn, SELECT) == pg_rows(pg_target_dsn, SELECT), 60
        ), (tmp_path / "run.log").read_text()[-3000:]
        assert pg_rows(pg_target_dsn, "SELECT count(*) FROM double_applies") == [(0,)]
        assert proc.terminate() == 0
    finally:
        if proc.alive():
            proc.kill9()


def test_kill9_midstream_restarts_without_loss_or_double_apply(
    tmp_path: Path, pg_source_dsn: str, pg_target_dsn: str
) -> None:
    pg_exec(pg_source_dsn, SOURCE_DDL)
    pg_exec(pg_target_dsn, TARGET_DDL)
    cfg = config(tmp_path, pg_source_dsn, pg_target_dsn, batch=200)
    writer = Writer(pg_source_dsn, seconds=8, seed=7)
    writer.start()
    rng = random.Random(3)
    for _ in range(3):
        proc = SynclineProcess(cfg, tmp_path / "run.log")
        time.sleep(rng.uniform(1.0, 2.0))
        proc.kill9()
    writer.join()
    assert writer.error is None
    proc = SynclineProcess(cfg, tmp_path / "run.log")
    try:
        converged = wait_until(
            lambda: pg_rows(pg_source_dsn, SELECT) == pg_rows(pg_target_dsn, SELECT), 90
        )
        assert converged, (tmp_path / "run.log").read_text()[-3000:]
        assert pg_rows(pg_target_dsn, "SELECT count(*) FROM double_applies") == [(0,)]
        assert proc.terminate() == 0
    finally:
        if proc.alive():
            proc.kill9()


def test_restart_resumes_from_slot(tmp_path: Path, pg_source_dsn: str, pg_target_dsn: str) -> None:
    pg_exec(pg_source_dsn, SOURCE_DDL)
    pg_exec(pg_target_dsn, TARGET_DDL)
    cfg = config(tmp_path, pg_source_dsn, pg_target_dsn)
    proc = SynclineProcess(cfg, tmp_path / "run.log")
    pg_exec(
        pg_source_dsn,
        "INSERT INTO accounts(id, owner, balance) SELECT g, 'x', 1 FROM generate_series(1, 100) g",
    )
    assert wait_until(
        lambda: pg_rows(pg_target_dsn, "SELECT count(*) FROM accounts") == [(100,)], 30
    )
    assert proc.terminate() == 0
    # changes made while syncline is down wait in the slot
    pg_exec(
        pg_source_dsn,
        "UPDATE accounts SET version = version + 1, owner = 'while down' WHERE id <= 50",
        "DELETE FROM accounts WHERE id > 90",
    )
    proc = SynclineProcess(cfg, tmp_path / "run.log")
    try:
        assert wait_until(
            lambda: pg_rows(pg_source_dsn, SELECT) == pg_rows(pg_target_dsn, SELECT), 30
        )
        assert pg_rows(pg_target_dsn, "SELECT count(*) FROM double_applies") == [(0,)]
    finally:
        proc.terminate()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unreachable", "cannot connect to PostgreSQL at 127.0.0.1:1"),
        ("password", "password authentication failed"),
        ("missing_table", "public.nope"),
        ("no_pk", "no primary key"),
    ],
)
def test_bad_input_gives_one_line_error(
    tmp_path: Path, pg_source_dsn: str, pg_target_dsn: str, case: str, expected: str
) -> None:
    pg_exec(pg_source_dsn, SOURCE_DDL, "CREATE TABLE public.nokey (a int, b text)")
    pg_exec(pg_target_dsn, SOURCE_DDL)
    src, table = pg_source_dsn, "public.accounts"
    if case == "unreachable":
        src = "postgresql://postgres:x@127.0.0.1:1/postgres"
    elif case == "password":
        src = pg_source_dsn.replace("syncline-test@", "wrong-password@")
    elif case == "missing_table":
        table = "public.nope"
    elif case == "no_pk":
        table = "public.nokey"
    cfg = write_config(
        tmp_path / "bad.yaml",
        f"""
pipelines:
  - name: bad
    source: {{kind: postgres, dsn: "{src}", tables: [{table}]}}
    transport: {{kind: embedded, path: "{tmp_path / "log"}"}}
    sink: {{kind: postgres, dsn: "{pg_target_dsn}"}}
""",
    )
    for verb in ("check", "run"):
        result = syncline(verb, str(cfg), timeout=60)
        assert result.returncode == 1, (verb, result.stdout, result.stderr)
        errors = [line for line in result.stderr.splitlines() if "error" in line]
        assert errors and expected in errors[-1], (verb, result.stderr)
        assert "Traceback" not in result.stderr
        assert "wrong-password" not in result.stderr and "syncline-test" not in result.stderr
