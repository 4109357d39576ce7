"""kill -9 of syncline at random points under continuous load, again and again."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from fault_helpers import (
    double_applies,
    kill_cycles,
    pipeline_config,
    setup_tables,
    wait_converged,
)

from e2e_helpers import SynclineProcess, Writer

PRELOAD = 10_000  # rows already there: the first kills land inside the initial snapshot


def run_kill_loop(
    tmp_path: Path, src: str, dst: str, cycles: int, seed: int, snapshot_kills: int = 1
) -> None:
    setup_tables(src, dst, preload=PRELOAD)
    cfg = pipeline_config(tmp_path / "syncline.yaml", src, dst, tmp_path / "log")
    run_log = tmp_path / "run.log"
    writer = Writer(src, seed=seed, first_id=PRELOAD + 1)
    writer.start()
    try:
        report = kill_cycles(cfg, dst, cycles, random.Random(seed), run_log, snapshot_kills)
    finally:
        writer.stop()
    assert writer.commits > 0
    proc = SynclineProcess(cfg, run_log)
    try:
        diff = wait_converged(src, dst, 120)
        assert not diff, f"{report}: {diff}\n{run_log.read_text()[-3000:]}"
        # only changes applied after the snapshot count (see fault_helpers.snapshot_applied)
        assert report.checked_cycles > 0, f"snapshot never applied between kills: {report}"
        assert report.checked_from is not None
        doubles = double_applies(dst, report.checked_from)
        assert doubles == [], f"{report}, baseline {report.checked_from}: {doubles[:20]}"
        assert proc.terminate() == 0
    finally:
        if proc.alive():
            proc.kill9()
    print(report)


def test_kill9_random_points_under_load(
    tmp_path: Path, pg_source_dsn: str, pg_target_dsn: str
) -> None:
    run_kill_loop(tmp_path, pg_source_dsn, pg_target_dsn, cycles=4, seed=11)


@pytest.mark.slow
def test_kill9_many_cycles_under_load(
    tmp_path: Path, pg_source_dsn: str, pg_target_dsn: str
) -> None:
    # the first five kills cut the initial snapshot short, each time in its retake
    run_kill_loop(tmp_path, pg_source_dsn, pg_target_dsn, cycles=25, seed=2024, snapshot_kills=5)
