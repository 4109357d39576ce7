"""In-process counters and latency samples for one pipeline.

Kept dependency-free and cheap on the hot path (plain ints updated by the one
thread that owns them); Prometheus export reads these.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field


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

    def latency_percentiles(self, *qs: float) -> list[float]:
        with self._lock:
            data = sorted(self.latencies_ms)
        return [percentile(data, q) for q in qs]

    def reset_latencies(self) -> None:
        with self._lock:
            self.latencies_ms.clear()
