"""Database servers going away under load: the target for a while, the source restarted.

syncline must ride these out without exiting: retry with backoff, report itself
degraded meanwhile, then catch up with nothing lost and nothing applied twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fault_helpers import (
    double_applies,
    log_text,
    pipeline_config,
    setup_tables,
    target_positions,
    wait_converged,
)

from e2e_helpers import SynclineProcess, Writer, wait_until
from servers import PgServer


def _target_down(
    tmp_path: Path, src: str, server: PgServer, new_db: Callable[[], str], down: float
) -> None:
    dst = new_db()
    setup_tables(src, dst, preload=2000)
    cfg = pipeline_config(tmp_path / "syncline.yaml", src, dst, tmp_path / "log")
    proc = SynclineProcess(cfg, tmp_path / "run.log")
    writer = Writer(src, seed=5, first_id=2001)
    writer.start()
    try:
        assert wait_until(lambda: sum(target_positions(dst).values()) > 2000, 60), log_text(proc)
        server.halt("fast")
        stopped = time.monotonic()
        try:
            while time.monotonic() - stopped < down:
                assert proc.alive(), f"syncline exited while the target was down: {log_text(proc)}"
                time.sleep(0.2)
            seen = log_text(proc)
        finally:
            server.start()
        time.sleep(1)  # the load goes on after the target is back
        writer.stop()
        diff = wait_converged(src, dst, 60 + down)
        text = log_text(proc)
        assert not diff, f"{diff}\n{text[-3000:]}"
        assert double_applies(dst) == []
        assert proc.alive()
        # While down, each failed attempt said why and when it retries (one line each) ...
        retries = [line for line in seen.splitlines() if "pipeline accounts apply:" in line]
        assert retries and all("retrying in" in line for line in retries), seen[-3000:]
        assert "cannot connect to PostgreSQL" in seen or "interrupted" in seen, retries
        assert "Traceback" not in text
        assert proc.terminate() == 0
    finally:
        writer.stop()
        if proc.alive():
            proc.kill9()
    # ... and the periodic status lines (every 10 s) written while it was down said degraded
    statuses = [
        line.split("syncline.runtime: ")[1]
        for line in seen[seen.index("accounts apply:") :].splitlines()
        if "syncline.runtime: pipeline accounts" in line
    ]
    if down >= 10:
        assert statuses, seen[-3000:]
        assert all("degraded (apply:" in line for line in statuses), statuses


def test_target_down_5s_then_catches_up(
    tmp_path: Path,
    pg_source_dsn: str,
    own_pg_server: PgServer,
    own_pg_db: Callable[[], str],
) -> None:
    _target_down(tmp_path, pg_source_dsn, own_pg_server, own_pg_db, down=5)


@pytest.mark.slow
def test_target_down_30s_then_catches_up(
    tmp_path: Path,
    pg_source_dsn: str,
    own_pg_server: PgServer,
    own_pg_db: Callable[[], str],
) -> None:
    _target_down(tmp_path, pg_source_dsn, own_pg_server, own_pg_db, down=30)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_source_restart_resumes_from_the_slot(
    tmp_path: Path,
    own_pg_db: Callable[[], str],
    own_pg_server: PgServer,
    pg_target_dsn: str,
    mode: str,
) -> None:
    """``immediate`` is a crash: the slot may fall back to its last checkpointed position and
    resend transactions syncline already has; the log's checkpoint drops them again."""
    src, dst = own_pg_db(), pg_target_dsn
    setup_tables(src, dst, preload=2000)
    cfg = pipeline_config(tmp_path / "syncline.yaml", src, dst, tmp_path / "log")
    proc = SynclineProcess(cfg, tmp_path / "run.log")
    writer = Writer(src, seed=9, first_id=2001, reconnect=True)
    writer.start()
    try:
        # restarts while streaming (a snapshot cut short is taken again: not the point here)
        assert wait_until(lambda: sum(target_positions(dst).values()) > 2000, 60), log_text(proc)
        for _ in range(2):
            applied = sum(target_positions(dst).values())
            assert wait_until(lambda a=applied: sum(target_positions(dst).values()) > a + 500, 60)
            own_pg_server.restart(mode)
            assert proc.alive(), log_text(proc)
        time.sleep(2)
        writer.stop()
        assert writer.failures > 0  # the restarts did cut the load off
        diff = wait_converged(src, dst, 90)
        text = log_text(proc)
        assert not diff, f"{diff}\n{text[-3000:]}"
        assert double_applies(dst) == []
        assert proc.alive()
        capture = [line for line in text.splitlines() if "pipeline accounts capture:" in line]
        assert capture and all("retrying in" in line for line in capture), text[-3000:]
        assert "Traceback" not in text
        assert proc.terminate() == 0
    finally:
        writer.stop()
        if proc.alive():
            proc.kill9()
