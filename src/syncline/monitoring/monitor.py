"""The monitoring stream: stage records queued in memory, written by a background thread.

Each process (the runtime, and each apply child) has one ``Monitor``: a bounded
queue of record batches and a writer thread that drains it into the monitoring
store every ``FLUSH_INTERVAL_S``, one transaction per drain, and purges rows
older than ``retention_hours``. The data path only appends a list to a deque
under a lock; when the queue already holds ``queue_size`` records the new batch
is dropped and counted (``syncline_monitoring_dropped_total``), so a slow or
unreachable store can never slow capture or apply down. Records are not the
data: losing some on a crash or an outage of the store is acceptable, blocking
is not.

``PipelineMonitor`` turns one pipeline's batches into records: the capture side
after the log holds a batch (captured and published times), the apply side after
the target committed it (applied time, log offset, target) or dead-lettered or
held a change (error).
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Sequence
from hashlib import blake2b
from typing import Protocol

from syncline.config import MonitoringConfig, PipelineConfig
from syncline.errors import SynclineError
from syncline.events import Change, now_us
from syncline.metrics import PipelineStats
from syncline.monitoring.records import (
    DEAD_LETTERED,
    HELD,
    Row,
    commit_us,
    correlation_id,
    format_lsn,
    position_of,
)
from syncline.monitoring.store import MonitoringStore, open_store
from syncline.transports.base import Delivered, Record, partition_for

log = logging.getLogger("syncline.monitoring")

FLUSH_INTERVAL_S = 0.25
PURGE_INTERVAL_S = 60.0
WARN_INTERVAL_S = 60.0
REOPEN_INTERVAL_S = 5.0
_SAMPLE_SEED = 0x5BD1E995  # decorrelates sampling from the crc32 partitioning


class DeliveredChange(Protocol):
    """A log record with its decoded change (the dispatcher's batch items)."""

    @property
    def record(self) -> Delivered: ...

    @property
    def change(self) -> Change: ...


class Monitor:
    """One per process: bounded queue → writer thread → monitoring store."""

    def __init__(self, cfg: MonitoringConfig, flush_interval: float = FLUSH_INTERVAL_S) -> None:
        self.cfg = cfg
        self.flush_interval = flush_interval
        self._queue: deque[list[Row]] = deque()
        self._pending = 0  # records in the queue
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stats: dict[str, PipelineStats] = {}
        self.dropped = 0
        self.written = 0
        self._next_purge = 0.0
        self._next_warning = 0.0
        self._next_open = 0.0

    @property
    def pending(self) -> int:
        return self._pending

    def for_pipeline(self, cfg: PipelineConfig, stats: PipelineStats) -> PipelineMonitor:
        self._stats[cfg.name] = stats
        return PipelineMonitor(self, cfg, stats)

    def offer(self, rows: list[Row], stats: PipelineStats | None = None) -> bool:
        """Queue ``rows`` unless that would pass ``queue_size``; never waits."""
        n = len(rows)
        with self._lock:
            if self._pending + n > self.cfg.queue_size:
                self.dropped += n
                if stats is not None:
                    stats.monitoring_dropped += n
                return False
            self._queue.append(rows)
            self._pending += n
        return True

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="syncline-monitoring", daemon=True
            )
            self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (within ``timeout``), then stop the writer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # ---- writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        store: MonitoringStore | None = None
        try:
            while True:
                stopping = self._stop.wait(self.flush_interval)
                if store is None and time.monotonic() >= self._next_open:
                    store = self._open()
                if store is not None:
                    self.flush(store)
                    self._purge(store)
                else:
                    self._discard(self._take())  # nowhere to write them: drop, count
                if stopping:
                    return
        finally:
            if store is not None:
                store.close()

    def _open(self) -> MonitoringStore | None:
        try:
            return open_store(self.cfg)
        except SynclineError as exc:
            self._warn(f"monitoring store unavailable: {exc}")
            self._next_open = time.monotonic() + REOPEN_INTERVAL_S
            return None

    def _take(self) -> list[Row]:
        with self._lock:
            batches, self._queue = self._queue, deque()
            self._pending = 0
        rows: list[Row] = []
        for b in batches:
            rows.extend(b)
        return rows

    def flush(self, store: MonitoringStore) -> int:
        """Write everything queued now to ``store``; records that fail are dropped, counted."""
        rows = self._take()
        if not rows:
            return 0
        try:
            store.write(rows)
        except SynclineError as exc:
            self._warn(f"monitoring store write failed, {len(rows)} record(s) dropped: {exc}")
            self._discard(rows)
            return 0
        self.written += len(rows)
        return len(rows)

    def _purge(self, store: MonitoringStore) -> None:
        now = time.monotonic()
        if now < self._next_purge:
            return
        self._next_purge = now + PURGE_INTERVAL_S
        cutoff = now_us() - int(self.cfg.retention_hours * 3600 * 1_000_000)
        try:
            gone = store.purge(cutoff)
        except SynclineError as exc:
            self._warn(f"monitoring store purge failed: {exc}")
            return
        if gone:
            log.info(
                "monitoring: purged %d record(s) older than %gh", gone, self.cfg.retention_hours
            )

    def _discard(self, rows: list[Row]) -> None:
        if not rows:
            return
        with self._lock:
            self.dropped += len(rows)
            for name, n in Counter(r[0] for r in rows).items():
                stats = self._stats.get(name)
                if stats is not None:
                    stats.monitoring_dropped += n

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now >= self._next_warning:
            self._next_warning = now + WARN_INTERVAL_S
            log.warning("%s", message)


class PipelineMonitor:
    """Turns one pipeline's batches into stage records (only for sampled keys)."""

    def __init__(self, monitor: Monitor, cfg: PipelineConfig, stats: PipelineStats) -> None:
        self.monitor = monitor
        self.name = cfg.name
        self.stats = stats
        self.partitions = cfg.transport.partitions
        sample = monitor.cfg.sample
        self._all = sample >= 1.0
        self._threshold = int(sample * 0x1_0000_0000)
        self._sink = cfg.sink
        self._targets: dict[str, str] = {}

    @property
    def config(self) -> MonitoringConfig:
        return self.monitor.cfg

    def sampled(self, key: bytes) -> bool:
        """Whether changes of this key are recorded: all, or a stable share of keys."""
        return self._all or zlib.crc32(key, _SAMPLE_SEED) < self._threshold

    def target_of(self, table: str) -> str:
        """``<sink kind>:<target table>`` for a source table (as configured; a route
        transform's destination is not followed)."""
        target = self._targets.get(table)
        if target is None:
            tables = self._sink.tables
            opts = tables.get(table) or tables.get(table.split(".", 1)[-1])
            name = opts.target if opts is not None and opts.target else table.split(".", 1)[-1]
            target = self._targets[table] = f"{self._sink.kind}:{name}"
        return target

    def published(
        self,
        changes: Sequence[Change],
        records: Sequence[Record],
        captured_us: int,
        published_us: int,
    ) -> None:
        """Capture side: the log holds ``records`` (built from ``changes``, same order).

        Written for speed (it runs per event when monitoring is on): the LSN text is
        formatted once per transaction and the id is one blake2b call.
        """
        name, parts = self.name, self.partitions
        every, sampled = self._all, self.sampled
        prefix = name.encode() + b"\x1f"
        last_lsn: int | None = -1
        lsn_text = ""
        rows: list[Row] = []
        append = rows.append
        for ch, r in zip(changes, records, strict=True):
            key = r.key
            if not every and not sampled(key):
                continue
            src = ch.event.source
            lsn = src.lsn
            if lsn != last_lsn:
                last_lsn, lsn_text = lsn, ("" if lsn is None else format_lsn(lsn))
            seq = src.seq
            pos = f"{lsn_text}#{'' if seq is None else seq}"
            table = r.table
            cid = blake2b(
                b"\x1f".join((prefix + table.encode(), key, pos.encode())), digest_size=8
            ).hexdigest()
            ts = src.ts_us
            append(
                (
                    name,
                    table,
                    key.decode("utf-8", "replace"),
                    pos,
                    cid,
                    ch.event.op,
                    ts if ts is not None else src.ts_ms * 1000,
                    captured_us,
                    published_us,
                    partition_for(key, parts),
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    published_us,
                )
            )
        if rows:
            self.monitor.offer(rows, self.stats)

    def applied(self, items: Sequence[DeliveredChange], applied_us: int | None = None) -> None:
        """Apply side: the target committed these changes (per-event loop, kept lean)."""
        at = now_us() if applied_us is None else applied_us
        name, every, sampled, target_of = self.name, self._all, self.sampled, self.target_of
        prefix = name.encode() + b"\x1f"
        last_lsn: int | None = -1
        lsn_text = ""
        rows: list[Row] = []
        append = rows.append
        for it in items:
            rec = it.record
            key = rec.key
            if not every and not sampled(key):
                continue
            event = it.change.event
            src = event.source
            lsn = src.lsn
            if lsn != last_lsn:
                last_lsn, lsn_text = lsn, ("" if lsn is None else format_lsn(lsn))
            seq = src.seq
            pos = f"{lsn_text}#{'' if seq is None else seq}"
            table = rec.table
            cid = blake2b(
                b"\x1f".join((prefix + table.encode(), key, pos.encode())), digest_size=8
            ).hexdigest()
            ts = src.ts_us
            append(
                (
                    name,
                    table,
                    key.decode("utf-8", "replace"),
                    pos,
                    cid,
                    event.op,
                    ts if ts is not None else src.ts_ms * 1000,
                    None,
                    None,
                    rec.partition,
                    rec.offset,
                    at,
                    target_of(table),
                    None,
                    None,
                    None,
                    at,
                )
            )
        if rows:
            self.monitor.offer(rows, self.stats)

    def held(self, items: Sequence[DeliveredChange], reason: str) -> None:
        """Apply side: stored in the dead-letter queue behind an earlier failed change."""
        at = now_us()
        rows = [
            self._row(
                it.record.table,
                it.record.key,
                it.change,
                it.record,
                failed_us=at,
                failure=HELD,
                error=reason,
            )
            for it in items
            if self.sampled(it.record.key)
        ]
        if rows:
            self.monitor.offer(rows, self.stats)

    def failed(
        self,
        table: str,
        key: bytes,
        change: Change | None,
        error: str,
        record: Delivered | None = None,
    ) -> None:
        """Apply side: one change was dead-lettered (or its replay failed again)."""
        if self.sampled(key):
            row = self._row(
                table, key, change, record, failed_us=now_us(), failure=DEAD_LETTERED, error=error
            )
            self.monitor.offer([row], self.stats)

    def replayed(self, table: str, key: bytes, change: Change) -> None:
        """Apply side: a dead-letter replay committed this change."""
        if self.sampled(key):
            self.monitor.offer(
                [self._row(table, key, change, None, applied_us=now_us())], self.stats
            )

    def _row(
        self,
        table: str,
        key: bytes,
        change: Change | None,
        record: Delivered | None,
        *,
        applied_us: int | None = None,
        failed_us: int | None = None,
        failure: str | None = None,
        error: str | None = None,
    ) -> Row:
        if change is not None:
            src = change.event.source
            pos = position_of(src)
            op: str | None = change.event.op
            committed: int | None = commit_us(src)
        else:  # undecodable: only its place in the log is known
            pos = f"@{record.partition}:{record.offset}" if record is not None else "@?"
            op = committed = None
        return (
            self.name,
            table,
            key.decode("utf-8", "replace"),
            pos,
            correlation_id(self.name, table, key, pos),
            op,
            committed,
            None,
            None,
            None if record is None else record.partition,
            None if record is None else record.offset,
            applied_us,
            self.target_of(table) if applied_us is not None else None,
            failed_us,
            failure,
            error,
            applied_us or failed_us or now_us(),
        )
