"""The embedded log on a disk that fills up or turns read-only, with real file systems.

A full disk is a size-limited tmpfs (ENOSPC, as on any disk); a disk that turns
read-only under a running process is ext4 in a loop file with errors=remount-ro
after a file-system error (what the kernel does when a disk fails). Both need
root to mount; the tests fail, not skip, without it.
"""

from __future__ import annotations

import time
from pathlib import Path

from fault_helpers import (
    PIPELINE,
    double_applies,
    ext4,
    log_integrity,
    log_text,
    pipeline_config,
    remount,
    setup_tables,
    target_positions,
    tmpfs,
    wait_converged,
)

from e2e_helpers import SynclineProcess, Writer, pg_exec, syncline, wait_until


def _error_lines(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


def test_full_disk_is_retried_and_resumes_by_itself_when_space_returns(
    tmp_path: Path, pg_source_dsn: str, pg_target_dsn: str
) -> None:
    src, dst = pg_source_dsn, pg_target_dsn
    setup_tables(src, dst, preload=500)
    with tmpfs(tmp_path / "disk", "6m") as disk:
        log_dir = disk / "log"
        db = log_dir / f"{PIPELINE}.log.db"
        cfg = pipeline_config(tmp_path / "syncline.yaml", src, dst, log_dir)
        proc = SynclineProcess(cfg, tmp_path / "run.log")
        writer = Writer(src, seed=4, first_id=501, pad=3000, pause=0)  # ~3 KB per insert
        try:
            # the disk fills up while streaming (a snapshot cut short is taken again, and its
            # rows upserted again, which the double-apply check would count)
            assert wait_until(lambda: sum(target_positions(dst).values()) >= 500, 60)
            writer.start()
            assert wait_until(lambda: "out of disk space" in log_text(proc), 120), log_text(proc)
            time.sleep(3)  # full for a while: retried, not fatal
            text = log_text(proc)
            assert proc.alive(), text[-3000:]
            full = _error_lines(text, "out of disk space")
            # one line each, naming the file and the cause, and saying it is retried
            assert all(str(db) in line for line in full), full
            assert any(
                "pipeline accounts capture:" in line and "retrying in" in line for line in full
            )
            assert "Traceback" not in text

            remount(disk, "size=512m")  # the operator frees space; no restart
            time.sleep(2)
            writer.stop()
            diff = wait_converged(src, dst, 120)
            text = log_text(proc)
            assert not diff, f"{diff}\n{text[-3000:]}"
            assert double_applies(dst) == []
            assert proc.alive()
            assert proc.terminate() == 0
        finally:
            writer.stop()
            if proc.alive():
                proc.kill9()
        assert log_integrity(log_dir) == "ok"


def test_read_only_disk_at_start_is_one_clear_line_and_resumes_after_the_fix(
    tmp_path: Path, pg_source_dsn: str, pg_target_dsn: str
) -> None:
    src, dst = pg_source_dsn, pg_target_dsn
    setup_tables(src, dst, preload=1000)
    with tmpfs(tmp_path / "disk", "64m") as disk:
        log_dir = disk / "log"
        cfg = pipeline_config(tmp_path / "syncline.yaml", src, dst, log_dir)
        proc = SynclineProcess(cfg, tmp_path / "run.log")
        try:
            assert not wait_converged(src, dst, 60)
            assert proc.terminate() == 0
        finally:
            if proc.alive():
                proc.kill9()
        remount(disk, "ro")
        pg_exec(  # changes made while syncline is down wait in the slot
            src,
            "UPDATE accounts SET version = version + 1, owner = 'while down' WHERE id <= 300",
            "DELETE FROM accounts WHERE id > 900",
            "INSERT INTO accounts(id, owner, balance) VALUES (5000, 'new', 1)",
        )
        result = syncline("run", str(cfg), timeout=60)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        errors = _error_lines(result.stderr, "error")
        assert len(errors) == 1, result.stderr
        assert errors[0].startswith(
            f"syncline: error: pipeline {PIPELINE}: embedded log at {log_dir / PIPELINE}"
        )
        assert "Read-only file system" in errors[0], errors[0]

        remount(disk, "rw")
        proc = SynclineProcess(cfg, tmp_path / "run.log")
        try:
            diff = wait_converged(src, dst, 60)
            assert not diff, f"{diff}\n{log_text(proc)[-3000:]}"
            assert double_applies(dst) == []
            assert proc.terminate() == 0
        finally:
            if proc.alive():
                proc.kill9()
        assert log_integrity(log_dir) == "ok"


def test_disk_turning_read_only_under_load_no_corruption_resumes_after_repair(
    tmp_path: Path, pg_source_dsn: str, pg_target_dsn: str
) -> None:
    src, dst = pg_source_dsn, pg_target_dsn
    setup_tables(src, dst, preload=1000)
    with ext4(tmp_path) as fs:
        log_dir = fs.mountpoint / "log"
        cfg = pipeline_config(tmp_path / "syncline.yaml", src, dst, log_dir)
        proc = SynclineProcess(cfg, tmp_path / "run.log")
        writer = Writer(src, seed=8, first_id=1001)
        writer.start()
        try:
            assert wait_until(lambda: sum(target_positions(dst).values()) > 1500, 60)
            fs.fail()  # the kernel turns the file system read-only under us
            assert wait_until(lambda: "Read-only file system" in log_text(proc), 30), log_text(
                proc
            )[-3000:]
            time.sleep(2)
            text = log_text(proc)
            assert proc.alive(), text[-3000:]
            lines = _error_lines(text, "Read-only file system")
            assert all(str(log_dir) in line for line in lines), lines
            assert "Traceback" not in text
            assert proc.terminate() == 0  # still a clean stop
        finally:
            if proc.alive():
                proc.kill9()
        fs.repair()  # what an operator does: unmount, fsck, mount again
        assert log_integrity(log_dir) == "ok"
        proc = SynclineProcess(cfg, tmp_path / "run.log")
        try:
            time.sleep(1)
            writer.stop()
            diff = wait_converged(src, dst, 90)
            assert not diff, f"{diff}\n{log_text(proc)[-3000:]}"
            assert double_applies(dst) == []
            assert proc.terminate() == 0
        finally:
            writer.stop()
            if proc.alive():
                proc.kill9()
        assert log_integrity(log_dir) == "ok"
