"""Shared pieces of the fault-injection suite: config, log inspection, convergence, disks.

The load is ``e2e_helpers.Writer`` on ``accounts`` (a version column every update moves
forward) and the target carries ``ACCOUNTS_TARGET_DDL``'s trigger that records any update
which does not move it forward: a change applied twice shows up in ``double_applies``.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from e2e_helpers import (
    ACCOUNTS_DDL,
    ACCOUNTS_SELECT,
    ACCOUNTS_TARGET_DDL,
    SynclineProcess,
    pg_exec,
    pg_rows,
    wait_until,
    write_config,
)
from syncline.config import load_config
from syncline.events import decode_value
from syncline.transports.embedded import EmbeddedTransport

PIPELINE = "accounts"


def setup_tables(src: str, dst: str, preload: int = 0) -> None:
    pg_exec(src, ACCOUNTS_DDL)
    pg_exec(dst, ACCOUNTS_TARGET_DDL)
    if preload:
        pg_exec(
            src,
            "INSERT INTO accounts(id, owner, balance, tags) SELECT g, 'pre ' || g, g * 1.5, "
            f"ARRAY['p'] FROM generate_series(1, {preload}) g",
        )


def pipeline_config(
    path: Path, src: str, dst: str, log_dir: Path, batch: int = 200, partitions: int = 4
) -> Path:
    return write_config(
        path,
        f"""
pipelines:
  - name: {PIPELINE}
    source: {{kind: postgres, dsn: "{src}", tables: [public.accounts], heartbeat_interval: 1}}
    transport: {{kind: embedded, path: "{log_dir}", partitions: {partitions}}}
    sink: {{kind: postgres, dsn: "{dst}"}}
    batch: {{max_events: {batch}, max_wait_ms: 10}}
""",
    )


# ---- convergence ------------------------------------------------------------------------


def table_diff(src: str, dst: str) -> str:
    """Empty when both hold the same rows; else what differs (missing, extra, changed ids)."""
    a = {r[0]: r for r in pg_rows(src, ACCOUNTS_SELECT)}
    b = {r[0]: r for r in pg_rows(dst, ACCOUNTS_SELECT)}
    if a == b:
        return ""
    missing = sorted(a.keys() - b.keys())
    extra = sorted(b.keys() - a.keys())
    changed = sorted(k for k in a.keys() & b.keys() if a[k] != b[k])
    return (
        f"source {len(a)} rows, target {len(b)}: missing in target {missing[:20]} "
        f"({len(missing)}), only in target {extra[:20]} ({len(extra)}), "
        f"different {changed[:20]} ({len(changed)}); e.g. "
        + "; ".join(f"{a[k]} vs {b[k]}" for k in changed[:3])
    )


def wait_converged(src: str, dst: str, timeout: float) -> str:
    """Wait until target == source; returns the last difference ("" once converged)."""
    last = ["not checked"]

    def same() -> bool:
        last[0] = table_diff(src, dst)
        return not last[0]

    wait_until(same, timeout, interval=0.5)
    return last[0]


def double_applies(dst: str, after_seq: int = 0) -> list[tuple[Any, ...]]:
    return pg_rows(
        dst,
        "SELECT seq, id, old_version, new_version FROM double_applies "
        f"WHERE seq > {after_seq} ORDER BY seq",
    )


def last_double_apply_seq(dst: str) -> int:
    return int(pg_rows(dst, "SELECT coalesce(max(seq), 0) FROM double_applies")[0][0])


def target_positions(dst: str) -> dict[int, int]:
    """The log offsets the sink has committed in the target (its exactly-once record)."""
    if pg_rows(dst, "SELECT to_regclass('syncline.syncline_offsets')") == [(None,)]:
        return {}
    rows = pg_rows(
        dst,
        "SELECT partition, next_offset FROM syncline.syncline_offsets "
        f"WHERE pipeline = '{PIPELINE}' AND partition >= 0",
    )
    return {int(p): int(o) for p, o in rows}


# ---- the log ------------------------------------------------------------------------------


def open_log(cfg_path: Path) -> EmbeddedTransport:
    cfg = load_config(cfg_path).pipeline(PIPELINE)
    return EmbeddedTransport(cfg.transport, PIPELINE)


def log_end_offsets(cfg_path: Path) -> dict[int, int]:
    t = open_log(cfg_path)
    try:
        return t.end_offsets()
    finally:
        t.close()


def log_checkpoint(cfg_path: Path) -> dict[str, Any] | None:
    """The source checkpoint stored in the log (only while no syncline holds the producer)."""
    t = open_log(cfg_path)
    try:
        prod = t.producer()
        try:
            return prod.checkpoint()
        finally:
            prod.close()
    finally:
        t.close()


def snapshot_applied(cfg_path: Path, dst: str) -> bool:
    """True once the initial snapshot is complete in the log and the target has applied all of it.

    Call only while syncline is not running. After a crash during the snapshot the
    snapshot is taken again, and its rows are upserted again (docs/guarantees.md): the
    target trigger sees those as version-not-advancing updates. They are not changes
    applied twice, so the double-apply check counts only what comes after this point.
    """
    ckpt = log_checkpoint(cfg_path)
    if ckpt is None or ckpt.get("snapshot") != "done":
        return False
    t = open_log(cfg_path)
    try:
        ends = t.end_offsets()
        positions = target_positions(dst)
        cons = t.consumer("faults-probe")
        try:
            cons.seek(positions)
            todo = sum(max(0, e - positions.get(p, 0)) for p, e in ends.items())
            while todo > 0:
                got = cons.poll(5000, 1.0)
                assert got, "log shorter than its end offsets"
                todo -= len(got)
                if any(decode_value(d.value).op == "r" for d in got):
                    return False
            return True
        finally:
            cons.close()
            t.drop_group("faults-probe")
    finally:
        t.close()


def log_integrity(log_dir: Path) -> str:
    conn = sqlite3.connect(log_dir / f"{PIPELINE}.log.db")
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def log_text(proc: SynclineProcess) -> str:
    return proc.log.read_text(errors="replace")


# ---- kill -9 cycles ---------------------------------------------------------------------


@dataclass
class KillReport:
    """What a run of kill cycles did, for assertion messages and the report."""

    delays: list[str] = field(default_factory=list)
    checked_from: int | None = None  # double_applies.seq baseline once the snapshot is applied
    checked_cycles: int = 0  # kills after that point

    def __str__(self) -> str:
        return (
            f"{len(self.delays)} kills ({', '.join(self.delays)}); double applies checked in "
            f"{self.checked_cycles} cycles and the final run"
        )


def kill_cycles(
    cfg: Path, dst: str, cycles: int, rng: random.Random, run_log: Path, snapshot_kills: int = 1
) -> KillReport:
    """Start syncline and kill -9 it ``cycles`` times at random points.

    Kinds of kill point, the first ones in this order, then at random: ``capture``
    (``snapshot_kills`` times: as soon as this run publishes to the log, which is inside
    the initial snapshot while it lasts), ``start`` (0-0.6 s: imports, checks, slot creation), ``apply`` (as soon as
    the target commits a batch of this run) and ``any`` (0.5-3 s). If no kill has come
    after the snapshot was applied yet, a few more follow (``caught-up``: once apply has
    reached what the log held when the run started, plus 0-0.5 s); in the random part, a
    ``caught-up`` kill also comes as soon as the snapshot is complete in the log.
    """
    report = KillReport()
    kinds = ["capture", "start", "apply", "any"]
    first = ["capture"] * snapshot_kills + kinds[1:]
    i = 0
    snapshot_done = False
    # Go on past ``cycles`` (a few times at most) until a kill has come after the snapshot
    # was applied, so the double-apply check covers at least one killed run.
    while i < cycles or (report.checked_cycles == 0 and i < cycles + 6):
        kind = first[i] if i < len(first) else rng.choice(kinds)
        if i >= cycles or (i >= len(first) and report.checked_from is None and snapshot_done):
            kind = "caught-up"  # let apply get through the snapshot once, then check
        i += 1
        applied = sum(target_positions(dst).values())
        published = sum(log_end_offsets(cfg).values())
        t0 = time.monotonic()
        proc = SynclineProcess(cfg, run_log)
        if kind == "capture":
            wait_until(lambda p=published: sum(log_end_offsets(cfg).values()) > p, 30, 0.01)
        elif kind == "start":
            time.sleep(rng.uniform(0, 0.6))
        elif kind == "apply":
            wait_until(lambda a=applied: sum(target_positions(dst).values()) > a, 30, 0.01)
        elif kind == "caught-up":
            ends = log_end_offsets(cfg)
            wait_until(
                lambda e=ends: all(target_positions(dst).get(p, 0) >= o for p, o in e.items()), 30
            )
            time.sleep(rng.uniform(0, 0.5))
        else:
            time.sleep(rng.uniform(0.5, 3.0))
        assert proc.alive(), f"syncline exited by itself: {run_log.read_text()[-3000:]}"
        proc.kill9()
        ckpt = log_checkpoint(cfg)
        snapshot_done = ckpt is not None and ckpt.get("snapshot") == "done"
        phase = "no checkpoint" if ckpt is None else f"snapshot {ckpt.get('snapshot')}"
        report.delays.append(f"{kind}@{time.monotonic() - t0:.2f}s ({phase})")
        if report.checked_from is not None:
            report.checked_cycles += 1
        elif snapshot_applied(cfg, dst):
            report.checked_from = last_double_apply_seq(dst)
    return report


# ---- disks --------------------------------------------------------------------------------


def require_root(what: str) -> None:
    """Fail (not skip) with the reason: these tests exercise real disks and need root."""
    if os.geteuid() != 0:
        pytest.fail(
            f"{what} needs root (it mounts a file system); run the suite as root or "
            "deselect it with -k 'not disk'",
            pytrace=False,
        )


def _run(*cmd: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stdout}{done.stderr}".strip())


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A size-limited tmpfs at ``path``: a disk that really fills up (ENOSPC)."""
    require_root("a full-disk test")
    path.mkdir(parents=True, exist_ok=True)
    try:
        _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    except RuntimeError as exc:
        pytest.fail(f"cannot mount a tmpfs for a full-disk test: {exc}", pytrace=False)
    try:
        yield path
    finally:
        _run("umount", "-l", str(path))


def remount(path: Path, options: str) -> None:
    """``mount -o remount,<options>``: grow a tmpfs (``size=…``), or make it ro/rw."""
    _run("mount", "-o", f"remount,{options}", str(path))


@dataclass
class Ext4:
    """An ext4 file system in a loop file, mounted with errors=remount-ro.

    ``fail()`` raises a file-system error the way a failing disk does, and the kernel
    makes the file system read-only under the running process (EROFS on every write).
    ``repair()`` is what an operator does then: unmount, fsck, mount again.
    """

    image: Path
    mountpoint: Path

    @property
    def device(self) -> str:
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mnt = line.split()[:2]
            if mnt == str(self.mountpoint):
                return dev
        raise RuntimeError(f"{self.mountpoint} is not mounted")

    def mount(self) -> None:
        _run("mount", "-o", "loop,errors=remount-ro", str(self.image), str(self.mountpoint))

    def fail(self) -> None:
        dev = os.path.basename(self.device)
        Path(f"/sys/fs/ext4/{dev}/trigger_fs_error").write_text("syncline fault test\n")

    def repair(self) -> None:
        _run("umount", str(self.mountpoint))
        done = subprocess.run(
            ["e2fsck", "-fy", str(self.image)], capture_output=True, text=True, check=False
        )
        if done.returncode not in (0, 1):  # 1: errors corrected
            raise RuntimeError(f"e2fsck failed ({done.returncode}): {done.stdout}{done.stderr}")
        self.mount()


@contextlib.contextmanager
def ext4(tmp: Path, size_mb: int = 64) -> Iterator[Ext4]:
    require_root("a read-only-disk test")
    missing = [t for t in ("mkfs.ext4", "e2fsck", "losetup") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"a read-only-disk test needs {', '.join(missing)} (e2fsprogs, mount)")
    fs = Ext4(tmp / "disk.img", tmp / "disk")
    fs.mountpoint.mkdir()
    with open(fs.image, "wb") as f:
        f.truncate(size_mb << 20)
    try:
        _run("mkfs.ext4", "-q", "-F", str(fs.image))
        fs.mount()
    except RuntimeError as exc:
        pytest.fail(f"cannot mount an ext4 loop file system (loop devices?): {exc}", pytrace=False)
    try:
        yield fs
    finally:
        with contextlib.suppress(RuntimeError):
            _run("umount", "-l", str(fs.mountpoint))
