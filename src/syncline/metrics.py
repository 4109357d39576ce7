"""In-process counters and latency samples for one pipeline.

Kept dependency-free and cheap on the hot path (plain ints updated by the one
thread that owns them); Prometheus export reads these.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_right
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

TableOp = tuple[str, str]  # (source ``schema.table``, Debezium op code)

# commit → applied latency buckets (upper bounds, ms): 1 ms … 60 s
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
)  # fmt: skip


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    idx = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[idx]


def pretty_bytes(n: int | None) -> str:
    """Sizes as PostgreSQL's pg_size_pretty writes them (1 MB = 1024 kB)."""
    if n is None:
        return "-"
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1024
        if value < 1024 or unit == "TB":
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


class LatencyHistogram:
    """Cumulative bucket counts of latencies (ms), fed a batch at a time.

    ``observe_many`` sorts a batch (in C) and bisects it once per bucket bound, so
    the per-event cost is a sort step; readers take a consistent copy under the lock.
    """

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS_MS) -> None:
        self.bounds = tuple(bounds)
        self._counts = [0] * (len(self.bounds) + 1)  # last one: above every bound
        self._sum = 0.0
        self._count = 0
        self._lock = threading.Lock()

    def observe_many(self, values: Sequence[float]) -> None:
        if not values:
            return
        ordered = sorted(values)  # C; near-linear for a batch's mostly ordered latencies
        n = len(ordered)
        total = sum(ordered)
        below = 0
        with self._lock:
            counts = self._counts
            for i, bound in enumerate(self.bounds):
                upto = bisect_right(ordered, bound, below)
                counts[i] += upto - below
                below = upto
                if below == n:
                    break
            counts[-1] += n - below
            self._sum += total
            self._count += n

    @property
    def count(self) -> int:
        return self._count

    def snapshot(self) -> tuple[list[int], float, int]:
        """(per-bucket counts, not cumulative; sum in ms; count)."""
        with self._lock:
            return list(self._counts), self._sum, self._count


def count_table_ops(tables: Iterable[str], ops: Iterable[str]) -> Counter[TableOp]:
    """(table, op) counts of one batch, counted in C; folded into the stats once per batch."""
    return Counter(zip(tables, ops, strict=True))


@dataclass
class PipelineStats:
    name: str
    state: str = (
        "starting"  # starting | snapshot | running | degraded | stopping | stopped | failed
    )
    error: str | None = None
    captured: int = 0
    published: int = 0
    applied: int = 0
    skipped: int = 0
    batches: int = 0
    retries: int = 0
    dead_lettered: int = 0  # events stored in the dead-letter queue after failing
    held: int = 0  # later events of a dead-lettered key, stored behind it
    replayed: int = 0  # dead-letter entries applied by a replay
    dlq_open: int = 0  # entries in the queue not yet replayed (gauge)
    conflicts: int = 0  # changes that met a conflict rule in the sink
    # per (source table, op) counts, updated once per batch by the thread owning each side;
    # the Prometheus collector copies them at scrape time (see observability/metrics.py)
    captured_by: Counter[TableOp] = field(default_factory=Counter)
    published_by: Counter[TableOp] = field(default_factory=Counter)
    applied_by: Counter[TableOp] = field(default_factory=Counter)
    dead_lettered_by: Counter[TableOp] = field(default_factory=Counter)
    latency_hist: LatencyHistogram = field(default_factory=LatencyHistogram)
    monitoring_dropped: int = 0  # monitoring records this process dropped (queue full, store down)
    monitoring_dropped_child: int = 0  # ... and those its apply child process dropped
    snapshot_rows: int = 0
    snapshot_total: int | None = None
    source_checkpoint: dict[str, object] = field(default_factory=dict)
    # WAL the source's replication slot holds back (PostgreSQL), None until measured
    slot_retained_wal_bytes: int | None = None
    started_at: float = field(default_factory=time.monotonic)
    # commit → applied latency in ms, most recent samples
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=200_000))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_latencies(self, values: list[float]) -> None:
        with self._lock:
            self.latencies_ms.extend(values)
            self.latency_hist.observe_many(values)

    def latencies_since(self, seen: int) -> tuple[list[float], int]:
        """Samples recorded after the first ``seen`` ones, and the new total (child reports)."""
        with self._lock:
            total = self.latency_hist.count
            new = min(total - seen, len(self.latencies_ms))
            return (list(self.latencies_ms)[-new:] if new > 0 else []), total

    # ---- apply in a child process: what crosses the report queue --------------------------

    def child_report(self) -> dict[str, Any]:
        """The child's per-table totals and extra counters, for ``absorb_child`` in the parent."""
        return {
            "applied_by": [[t, op, n] for (t, op), n in dict(self.applied_by).items()],
            "dead_lettered_by": [[t, op, n] for (t, op), n in dict(self.dead_lettered_by).items()],
            "conflicts": self.conflicts,
            "monitoring_dropped": self.monitoring_dropped,
        }

    def child_base(self) -> dict[str, Any]:
        """The parent's totals when a child starts (a restarted child counts from zero)."""
        return {
            "applied_by": Counter(self.applied_by),
            "dead_lettered_by": Counter(self.dead_lettered_by),
            "conflicts": self.conflicts,
            "monitoring_dropped": self.monitoring_dropped_child,
        }

    def absorb_child(self, report: dict[str, Any], base: dict[str, Any]) -> None:
        """Parent side: totals = totals before the child started + the child's own totals."""
        for name in ("applied_by", "dead_lettered_by"):
            merged: Counter[TableOp] = Counter(base[name])
            for table, op, n in report.get(name, ()):
                merged[(table, op)] += n
            setattr(self, name, merged)  # one assignment: a scrape sees old or new, never half
        self.conflicts = base["conflicts"] + report.get("conflicts", 0)
        # a field of its own: the parent's capture side counts into monitoring_dropped meanwhile
        self.monitoring_dropped_child = base["monitoring_dropped"] + report.get(
            "monitoring_dropped", 0
        )

    def latency_percentiles(self, *qs: float) -> list[float]:
        with self._lock:
            data = sorted(self.latencies_ms)
        return [percentile(data, q) for q in qs]

    def reset_latencies(self) -> None:
        with self._lock:
            self.latencies_ms.clear()
