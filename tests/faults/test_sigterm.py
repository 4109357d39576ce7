"""SIGTERM under load: capture stops, apply drains what the log holds, exit 0 within 10 s."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

from fault_helpers import (
    double_applies,
    log_end_offsets,
    log_text,
    pipeline_config,
    setup_tables,
    target_positions,
    wait_converged,
)

from e2e_helpers import SynclineProcess, Writer, wait_until
from servers import PgServer

DRAIN_BOUND_S = 10.0  # the documented contract of `syncline run` (README, --drain-timeout)


def test_sigterm_under_load_drains_and_exits_0(
    tmp_path: Path, pg_source_dsn: str, pg_target_dsn: str
) -> None:
    src, dst = pg_source_dsn, pg_target_dsn
    setup_tables(src, dst, preload=5000)
    cfg = pipeline_config(tmp_path / "syncline.yaml", src, dst, tmp_path / "log")
    writers = [Writer(src, seed=s, first_id=5001 + s * 10**7, pause=0) for s in (1, 2)]
    for w in writers:
        w.start()
    proc = SynclineProcess(cfg, tmp_path / "run.log")
    try:
        assert wait_until(lambda: sum(target_positions(dst).values()) > 8000, 60), log_text(proc)
        time.sleep(2)  # steady load, apply a little behind capture
        applied_before = sum(target_positions(dst).values())
        behind = sum(log_end_offsets(cfg).values()) - applied_before
        sent = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        code = proc.proc.wait(30)
        took = time.monotonic() - sent
        text = log_text(proc)
        assert code == 0, text[-3000:]
        assert took < DRAIN_BOUND_S, f"exit took {took:.1f}s\n{text[-3000:]}"
        assert "received SIGTERM, draining" in text
        # drained: the target holds everything the log took before capture stopped
        ends, applied = log_end_offsets(cfg), target_positions(dst)
        assert all(applied.get(p, 0) >= end for p, end in ends.items()), (ends, applied)
        print(f"SIGTERM with {behind} records unapplied: exit 0 after {took:.2f}s")
    finally:
        for w in writers:
            w.stop()
        if proc.alive():
            proc.kill9()
    proc = SynclineProcess(cfg, tmp_path / "run.log")  # what came in meanwhile arrives too
    try:
        diff = wait_converged(src, dst, 60)
        assert not diff, diff
        assert double_applies(dst) == []
        assert proc.terminate() == 0
    finally:
        if proc.alive():
            proc.kill9()


def test_sigterm_while_the_target_is_down_exits_0_within_10s(
    tmp_path: Path,
    pg_source_dsn: str,
    own_pg_server: PgServer,
    own_pg_db: Callable[[], str],
) -> None:
    """Nothing can be drained: waiting the whole drain timeout would only delay the exit."""
    src, dst = pg_source_dsn, own_pg_db()
    setup_tables(src, dst, preload=2000)
    cfg = pipeline_config(tmp_path / "syncline.yaml", src, dst, tmp_path / "log")
    writer = Writer(src, seed=3, first_id=2001)
    writer.start()
    proc = SynclineProcess(cfg, tmp_path / "run.log")
    try:
        assert wait_until(lambda: sum(target_positions(dst).values()) > 2000, 60), log_text(proc)
        own_pg_server.halt("fast")
        try:
            time.sleep(3)  # the load goes on into the log
            sent = time.monotonic()
            proc.proc.send_signal(signal.SIGTERM)
            code = proc.proc.wait(30)
            took = time.monotonic() - sent
        finally:
            own_pg_server.start()
        text = log_text(proc)
        assert code == 0, text[-3000:]
        assert took < DRAIN_BOUND_S, f"exit took {took:.1f}s\n{text[-3000:]}"
        assert "not draining, apply is stuck behind the log" in text, text[-3000:]
        print(f"SIGTERM with the target down: exit 0 after {took:.2f}s")
    finally:
        writer.stop()
        if proc.alive():
            proc.kill9()
    proc = SynclineProcess(cfg, tmp_path / "run.log")
    try:
        diff = wait_converged(src, dst, 60)
        assert not diff, diff
        assert double_applies(dst) == []
        assert proc.terminate() == 0
    finally:
        if proc.alive():
            proc.kill9()
