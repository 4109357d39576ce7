"""Partition leases: several apply workers of one pipeline split its partitions.

The leases live in the target, in the same rows as the positions they guard
(``owner``, ``lease_until`` beside ``next_offset``), so the check that a worker
still owns a partition runs inside the very transaction that writes its rows.
A worker that stalls past its lease, or one that was declared dead, cannot
commit: its transaction sees another owner and rolls back.

Workers register with a heartbeat; each one, on its own heartbeat, renews what
it holds, gives back what exceeds its fair share, and takes free or expired
partitions up to that share. Nobody takes a partition from a live owner: the
owner gives it back on its next heartbeat, so a rebalance settles within two
heartbeats and a dead worker's partitions move after its lease runs out.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Pseudo-partitions in the stored positions: -1 is the PostgreSQL sink's legacy
# fence row; -(1000 + p) holds the sequence number of partition p's last
# dead-letter replay (stored with the replayed rows, so a crash never repeats one).
FENCE_ROW = -1
_MARK_BASE = 1000


def replay_mark(partition: int) -> int:
    return -(_MARK_BASE + partition)


def mark_partition(key: int) -> int | None:
    """The partition a replay-mark key belongs to, or None for an ordinary key."""
    return -key - _MARK_BASE if key <= -_MARK_BASE else None


def guarded_partition(key: int) -> int | None:
    """The partition whose lease guards writing ``key`` (None: the fence row)."""
    if key >= 0:
        return key
    return mark_partition(key)


@dataclass(frozen=True, slots=True)
class Slot:
    partition: int
    owner: str | None
    valid: bool  # the owner's lease has not run out


def plan(
    worker: str, live: Iterable[str], slots: Iterable[Slot], partitions: int
) -> tuple[set[int], set[int]]:
    """What ``worker`` should hold now and what it gives back: (keep + take, release).

    Quotas are deterministic (workers in name order, the first ``partitions % n``
    hold one more), so every worker computes the same split.
    """
    workers = sorted(set(live) | {worker})
    n = len(workers)
    rank = workers.index(worker)
    quota = partitions // n + (1 if rank < partitions % n else 0)
    alive = set(workers)
    mine: list[int] = []
    free: list[int] = []
    for s in sorted(slots, key=lambda s: s.partition):
        if s.owner == worker:
            mine.append(s.partition)  # even if lapsed: nobody else took it
        elif s.owner is None or not s.valid or s.owner not in alive:
            free.append(s.partition)
    if len(mine) > quota:
        return set(mine[:quota]), set(mine[quota:])
    return set(mine) | set(free[: quota - len(mine)]), set()


def check_ownership(
    pipeline: str, worker: str, rows: Mapping[int, tuple[str | None, bool]], needed: Iterable[int]
) -> None:
    """Refuse to write partitions this worker does not hold right now."""
    from syncline.errors import TransientError

    for p in needed:
        owner, valid = rows.get(p, (None, False))
        if owner != worker or not valid:
            raise TransientError(
                f"partition {p} of pipeline {pipeline} is no longer leased to worker {worker} "
                f"(owner now: {owner or 'nobody'}); re-balancing"
            )


def check_fence(
    pipeline: str,
    worker: str,
    expected: Mapping[int, int] | None,
    rows: Iterable[tuple[int, int, str | None, bool]],
    needed: Iterable[int],
) -> None:
    """Inside the apply transaction: this worker holds ``needed`` and nobody moved them.

    ``rows`` are (partition, next_offset, owner, lease valid) of the locked rows.
    """
    from syncline.errors import TransientError

    owners: dict[int, tuple[str | None, bool]] = {}
    for p, offset, owner, valid in rows:
        owners[int(p)] = (owner, bool(valid))
        if expected is not None and expected.get(int(p)) != int(offset):
            raise TransientError(
                f"the positions of partition {p} of pipeline {pipeline} moved under worker "
                f"{worker} (another process applied it); re-reading them"
            )
    check_ownership(pipeline, worker, owners, needed)


# ---- PostgreSQL ----------------------------------------------------------------------------

PG_WORKERS = "syncline.syncline_workers"


def pg_ensure(cur: Any, offsets: str) -> None:
    cur.execute(
        f"ALTER TABLE {offsets} ADD COLUMN IF NOT EXISTS owner text, "
        "ADD COLUMN IF NOT EXISTS lease_until timestamptz; "
        f"CREATE TABLE IF NOT EXISTS {PG_WORKERS} (pipeline text NOT NULL, worker text NOT NULL, "
        "seen_at timestamptz NOT NULL, PRIMARY KEY (pipeline, worker))"
    )


def pg_rebalance(
    cur: Any,
    offsets: str,
    pipeline: str,
    worker: str,
    partitions: int,
    lease_s: float,
    leaving: bool,
) -> set[int]:
    """One transaction's statements (the caller commits)."""
    if leaving:
        cur.execute(
            f"DELETE FROM {PG_WORKERS} WHERE pipeline = %s AND worker = %s; "
            f"UPDATE {offsets} SET owner = NULL, lease_until = NULL "
            "WHERE pipeline = %s AND owner = %s",
            (pipeline, worker, pipeline, worker),
        )
        return set()
    cur.execute(
        f"INSERT INTO {offsets} (pipeline, partition, next_offset) "
        "SELECT %s, g, 0 FROM generate_series(0, %s - 1) g ON CONFLICT DO NOTHING; "
        f"INSERT INTO {PG_WORKERS} (pipeline, worker, seen_at) VALUES (%s, %s, now()) "
        "ON CONFLICT (pipeline, worker) DO UPDATE SET seen_at = now(); "
        f"DELETE FROM {PG_WORKERS} WHERE pipeline = %s AND seen_at < now() - interval '1 day'",
        (pipeline, partitions, pipeline, worker, pipeline),
    )
    cur.execute(
        f"SELECT worker FROM {PG_WORKERS} WHERE pipeline = %s "
        "AND seen_at > now() - make_interval(secs => %s)",
        (pipeline, lease_s),
    )
    live = [r[0] for r in cur.fetchall()]
    cur.execute(
        f"SELECT partition, owner, coalesce(lease_until > now(), false) FROM {offsets} "
        "WHERE pipeline = %s AND partition >= 0 AND partition < %s ORDER BY partition FOR UPDATE",
        (pipeline, partitions),
    )
    slots = [Slot(int(p), o, bool(v)) for p, o, v in cur.fetchall()]
    keep, release = plan(worker, live, slots, partitions)
    cur.execute(
        f"UPDATE {offsets} SET owner = %s, lease_until = now() + make_interval(secs => %s) "
        "WHERE pipeline = %s AND partition = ANY(%s); "
        f"UPDATE {offsets} SET owner = NULL, lease_until = NULL "
        "WHERE pipeline = %s AND partition = ANY(%s) AND owner = %s",
        (worker, lease_s, pipeline, sorted(keep), pipeline, sorted(release), worker),
    )
    return keep


def pg_fence_sql(offsets: str) -> str:
    return (
        f"SELECT partition, next_offset, owner, coalesce(lease_until > now(), false) "
        f"FROM {offsets} WHERE pipeline = %s AND partition = ANY(%s) ORDER BY partition FOR UPDATE"
    )


# ---- SQLite ----------------------------------------------------------------------------

SQLITE_WORKERS = "_syncline_workers"


def sqlite_ensure(conn: sqlite3.Connection, offsets: str) -> None:
    columns = {r[1] for r in conn.execute(f"PRAGMA table_info({offsets})")}
    if "owner" not in columns:
        conn.execute(f"ALTER TABLE {offsets} ADD COLUMN owner TEXT")
    if "lease_until" not in columns:
        conn.execute(f"ALTER TABLE {offsets} ADD COLUMN lease_until REAL")
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {SQLITE_WORKERS} (pipeline TEXT NOT NULL, "
        "worker TEXT NOT NULL, seen_at REAL NOT NULL, PRIMARY KEY (pipeline, worker))"
    )


def sqlite_rebalance(
    conn: sqlite3.Connection,
    offsets: str,
    pipeline: str,
    worker: str,
    partitions: int,
    lease_s: float,
    leaving: bool,
) -> set[int]:
    """One transaction's statements (the caller begins and commits)."""
    now = time.time()
    if leaving:
        conn.execute(
            f"DELETE FROM {SQLITE_WORKERS} WHERE pipeline = ? AND worker = ?", (pipeline, worker)
        )
        conn.execute(
            f"UPDATE {offsets} SET owner = NULL, lease_until = NULL "
            "WHERE pipeline = ? AND owner = ?",
            (pipeline, worker),
        )
        return set()
    conn.executemany(
        f"INSERT OR IGNORE INTO {offsets} (pipeline, partition, next_offset, updated_at) "
        "VALUES (?, ?, 0, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
        [(pipeline, p) for p in range(partitions)],
    )
    conn.execute(
        f"INSERT INTO {SQLITE_WORKERS} (pipeline, worker, seen_at) VALUES (?, ?, ?) "
        "ON CONFLICT (pipeline, worker) DO UPDATE SET seen_at = excluded.seen_at",
        (pipeline, worker, now),
    )
    conn.execute(
        f"DELETE FROM {SQLITE_WORKERS} WHERE pipeline = ? AND seen_at < ?",
        (pipeline, now - 86400),
    )
    live = [
        r[0]
        for r in conn.execute(
            f"SELECT worker FROM {SQLITE_WORKERS} WHERE pipeline = ? AND seen_at > ?",
            (pipeline, now - lease_s),
        )
    ]
    slots = [
        Slot(int(p), o, bool(v))
        for p, o, v in conn.execute(
            f"SELECT partition, owner, coalesce(lease_until > ?, 0) FROM {offsets} "
            "WHERE pipeline = ? AND partition >= 0 AND partition < ?",
            (now, pipeline, partitions),
        )
    ]
    keep, release = plan(worker, live, slots, partitions)
    conn.executemany(
        f"UPDATE {offsets} SET owner = ?, lease_until = ? WHERE pipeline = ? AND partition = ?",
        [(worker, now + lease_s, pipeline, p) for p in keep],
    )
    conn.executemany(
        f"UPDATE {offsets} SET owner = NULL, lease_until = NULL "
        "WHERE pipeline = ? AND partition = ? AND owner = ?",
        [(pipeline, p, worker) for p in release],
    )
    return keep


def sqlite_fence_rows(
    conn: sqlite3.Connection, offsets: str, pipeline: str, owned: Iterable[int]
) -> list[tuple[int, int, str | None, bool]]:
    parts = sorted(owned)
    marks = ", ".join("?" * len(parts))
    return [
        (int(p), int(o), w, bool(v))
        for p, o, w, v in conn.execute(
            f"SELECT partition, next_offset, owner, coalesce(lease_until > ?, 0) FROM {offsets} "
            f"WHERE pipeline = ? AND partition IN ({marks})",
            (time.time(), pipeline, *parts),
        )
    ]
