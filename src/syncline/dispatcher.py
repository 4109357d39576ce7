"""The apply side's decisions: what to apply, in which transactions, and what to dead-letter.

Happy path: one batch → one sink transaction (per origin run), positions stored
with the rows. When the sink or the transform chain refuses a batch with a
permanent error, the batch is retried ``dlq.max_attempts`` times with backoff (a
missing parent row may arrive meanwhile), then bisected: the halves that apply
are committed with their positions and each event that still fails on its own
is stored in the dead-letter queue. That costs O(k·log n) small transactions for
k bad events and never drops or reorders a good one.

Per-key order: once an event is dead-lettered its key is *blocked*; later events
of that key are stored behind it (``held``) until a replay or purge releases them,
while every other key keeps flowing. Dead-letter entries are written before the
positions that pass them, so each event is always in the target or in the queue.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from syncline.config import PipelineConfig
from syncline.dlq import DEAD, BlockedKey, DeadLetter, DeadLetterStore, NewDeadLetter
from syncline.errors import DataError, PermanentError, TransientError
from syncline.events import Change, decode_key, decode_value
from syncline.metrics import PipelineStats, count_table_ops
from syncline.retry import Backoff
from syncline.sinks.base import ApplyResult, Sink
from syncline.sinks.leases import mark_partition, replay_mark
from syncline.transforms.chain import Chain
from syncline.transports.base import Delivered

if TYPE_CHECKING:
    from syncline.monitoring.monitor import PipelineMonitor

log = logging.getLogger("syncline.dispatch")

REPLAY_CHECK_INTERVAL_S = 0.5


@dataclass(slots=True)
class _Item:
    index: int  # position in the delivered batch
    record: Delivered
    change: Change


class _Positions:
    """Positions reached after any prefix of a batch (indexed only when bisecting)."""

    def __init__(self, base: dict[int, int], delivered: Sequence[Delivered]) -> None:
        self.base = base
        self._delivered = delivered
        self._full: dict[int, int] | None = None
        self._index: dict[int, tuple[list[int], list[int]]] | None = None

    def upto(self, last: int) -> dict[int, int]:
        if last == len(self._delivered) - 1:
            if self._full is None:
                self._full = dict(self.base)
                for d in self._delivered:
                    self._full[d.partition] = d.offset + 1
            return dict(self._full)
        if self._index is None:
            self._index = {}
            for i, d in enumerate(self._delivered):
                idx, off = self._index.setdefault(d.partition, ([], []))
                idx.append(i)
                off.append(d.offset)
        out = dict(self.base)
        for p, (idx, off) in self._index.items():
            k = bisect.bisect_right(idx, last)
            if k:
                out[p] = off[k - 1] + 1
        return out


class Dispatcher:
    def __init__(
        self,
        cfg: PipelineConfig,
        sink: Sink,
        chain: Chain,
        stats: PipelineStats,
        store: DeadLetterStore | None,
        stop: threading.Event,
    ) -> None:
        self.cfg = cfg
        self.sink = sink
        self.chain = chain
        self.stats = stats
        self.store = store
        self._stop = stop
        self._hold = cfg.dlq.on_blocked_key == "hold"
        self.positions: dict[int, int] = {}
        self.owned: set[int] = set()
        # the changes of the last batch that the target committed (for latency)
        self.last_batch: list[Change] = []
        self._blocked: set[BlockedKey] = set()
        self._stored: set[tuple[int, int]] = set()  # positions already in the queue
        self._version = -1
        self._next_check = 0.0
        self.monitor: PipelineMonitor | None = None  # per-change stage records, if enabled
        self.batch_id = ""  # "<partition>:<offset>+<count>" of the batch being applied (logs)

    # ---- start -----------------------------------------------------------------------

    def open(self, owned: set[int]) -> dict[int, int]:
        """Read the owned partitions' positions, settle interrupted replays; where to resume."""
        stored = self.sink.positions()
        marks: dict[int, int] = {}
        positions: dict[int, int] = {}
        for key, value in stored.items():
            mark = mark_partition(key)
            if mark is not None:
                marks[mark] = value
            elif key in owned:
                positions[key] = value
        self.owned = set(owned)
        self.positions = positions
        if self.store is not None:
            self.store.take_worker_lock()
            self.store.recover(marks, owned)
            self._stored = self.store.stored_positions(positions)
            self._refresh()
            self.maintain(force=True)
        return dict(positions)

    def _refresh(self) -> None:
        assert self.store is not None
        self._blocked = self.store.blocked_keys() if self._hold else set()
        counts = self.store.counts()
        self.stats.dlq_open = sum(n for s, n in counts.items() if s != "replayed")
        self._version = self.store.data_version()

    # ---- live batches ----------------------------------------------------------------

    def apply(self, delivered: Sequence[Delivered]) -> ApplyResult:
        """Apply a batch; afterwards ``positions`` covers every delivered record."""
        if delivered:
            first = delivered[0]
            self.batch_id = f"{first.partition}:{first.offset}+{len(delivered)}"
        items = self._decode(delivered)
        if self._blocked or self._stored:
            items = self._set_aside(items)
        self.last_batch = []
        result = ApplyResult()
        prefix = _Positions(self.positions, delivered)
        for start, end in origin_runs([it.change for it in items]):
            self._apply_items(items[start:end], prefix, result, self.cfg.dlq.max_attempts)
        end_positions = prefix.upto(len(delivered) - 1)
        if end_positions != self.positions:
            # the batch ended in dead-lettered or held events: store positions past them
            self.sink.apply([], end_positions)
            self.positions = end_positions
        self._stored.difference_update(
            (d.partition, d.offset) for d in delivered if (d.partition, d.offset) in self._stored
        )
        return result

    def _decode(self, delivered: Sequence[Delivered]) -> list[_Item]:
        try:
            items = [
                _Item(i, d, Change(decode_key(d.key), decode_value(d.value)))
                for i, d in enumerate(delivered)
            ]
        except (msgspec.DecodeError, UnicodeDecodeError):
            items = self._decode_each(delivered)
        for it in items:
            if it.change.event.poison is not None:
                return self._set_poison_aside(items)
        return items

    def _set_poison_aside(self, items: list[_Item]) -> list[_Item]:
        """Dead-letter the changes their source could not read, in their log position."""
        keep: list[_Item] = []
        for it in items:
            poison = it.change.event.poison
            if poison is None:
                keep.append(it)
                continue
            if (it.record.partition, it.record.offset) in self._stored:
                continue  # redelivered after a crash: the queue has it already
            err = DataError(poison.error)
            if self.store is None:
                raise err
            self._dead_letter(it.record, err, attempts=1)
        return keep

    def _decode_each(self, delivered: Sequence[Delivered]) -> list[_Item]:
        items: list[_Item] = []
        for i, d in enumerate(delivered):
            try:
                items.append(_Item(i, d, Change(decode_key(d.key), decode_value(d.value))))
            except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                err = DataError(f"undecodable event at {d.partition}:{d.offset} ({d.table}): {exc}")
                if self.store is None:
                    raise err from exc
                self._dead_letter(d, err, attempts=1)
        return items

    def _set_aside(self, items: list[_Item]) -> list[_Item]:
        """Drop what the queue already has; store events of blocked keys behind them."""
        keep: list[_Item] = []
        held: list[NewDeadLetter] = []
        for it in items:
            d = it.record
            if (d.partition, d.offset) in self._stored:
                continue
            if (d.table, d.key) in self._blocked:
                held.append(NewDeadLetter(d.partition, d.offset, d.table, d.key, d.value))
            else:
                keep.append(it)
        if held:
            assert self.store is not None
            self.store.add(held, hold_open_keys=True)
            self.stats.held += len(held)
            self.stats.dlq_open += len(held)
            if self.monitor is not None:
                blocked = {(h.partition, h.offset) for h in held}
                self.monitor.held(
                    [it for it in items if (it.record.partition, it.record.offset) in blocked],
                    "held behind an earlier dead-lettered change of its key",
                )
        return keep

    def _apply_items(
        self, items: list[_Item], prefix: _Positions, result: ApplyResult, tries: int
    ) -> None:
        """Apply ``items`` in one transaction, or bisect them once ``tries`` are spent.

        The whole batch gets the configured attempts with backoff; the halves found
        by bisection are tried once each (their events already had their attempts).
        """
        if self._blocked:
            items = self._set_aside(items)  # an earlier half may have blocked a key
        if not items:
            return
        target = prefix.upto(items[-1].index)
        backoff = self._permanent_backoff()
        first_failed = time.time()
        failure: PermanentError | None = None
        for attempt in range(1, tries + 1):
            try:
                done = self.sink.apply(self.chain.apply([it.change for it in items]), target)
            except PermanentError as exc:
                if self.store is None:
                    raise
                failure = exc
                if attempt < tries:
                    self.stats.retries += 1
                    if self._stop.wait(backoff.next_delay()):
                        raise TransientError("stopped while retrying a failed batch") from exc
                continue
            self.positions = target
            result.applied += done.applied
            result.skipped += done.skipped
            result.conflicts += done.conflicts
            self._committed(items)
            return
        assert failure is not None
        if len(items) == 1:
            attempts = self.cfg.dlq.max_attempts
            self._dead_letter(
                items[0].record,
                failure,
                attempts=attempts,
                since=first_failed,
                change=items[0].change,
            )
            return
        log.info(
            "pipeline %s: a batch of %d events failed (%s); bisecting to find the bad ones",
            self.cfg.name,
            len(items),
            failure,
            extra={"batch": self.batch_id},
        )
        mid = len(items) // 2
        self._apply_items(items[:mid], prefix, result, 1)
        self._apply_items(items[mid:], prefix, result, 1)

    def _committed(self, items: list[_Item]) -> None:
        """Per-(table, op) counts, and stage records, of a run the target just committed."""
        self.stats.applied_by.update(
            count_table_ops([it.record.table for it in items], [it.change.event.op for it in items])
        )
        self.last_batch.extend([it.change for it in items])
        if self.monitor is not None:
            self.monitor.applied(items)

    def _permanent_backoff(self) -> Backoff:
        r = self.cfg.retry
        return Backoff(base=r.initial_delay_ms / 1000.0, cap=r.max_delay_ms / 1000.0)

    def _dead_letter(
        self,
        d: Delivered,
        exc: Exception,
        *,
        attempts: int,
        since: float | None = None,
        change: Change | None = None,
    ) -> None:
        assert self.store is not None
        self.store.add(
            [
                NewDeadLetter(
                    d.partition,
                    d.offset,
                    d.table,
                    d.key,
                    d.value,
                    error_class=type(exc).__name__,
                    error=str(exc),
                    attempts=attempts,
                    first_failed_at=since,
                )
            ],
            hold_open_keys=self._hold,
        )
        if self._hold:
            self._blocked.add((d.table, d.key))
        self.stats.dead_lettered += 1
        self.stats.dlq_open += 1
        op = change.event.op if change is not None else "?"
        self.stats.dead_lettered_by[(d.table, op)] += 1
        if self.monitor is not None:
            self.monitor.failed(d.table, d.key, change, f"{type(exc).__name__}: {exc}", d)
        log.error(
            "pipeline %s: event %s:%d of %s (key %s) dead-lettered: %s",
            self.cfg.name,
            d.partition,
            d.offset,
            d.table,
            d.key.decode("utf-8", "replace"),
            exc,
            extra=change_fields(self.cfg.name, d, change, self.batch_id),
        )

    # ---- replays ---------------------------------------------------------------------

    def maintain(self, force: bool = False) -> None:
        """Between batches: pick up replays and purges the CLI asked for."""
        if self.store is None:
            return
        now = time.monotonic()
        if not force and now < self._next_check:
            return
        self._next_check = now + REPLAY_CHECK_INTERVAL_S
        if not force and self.store.data_version() == self._version:
            return
        queue = self.store.replay_queue(self.owned)
        if queue:
            self._replay(queue)
        self._refresh()

    def _replay(self, queue: list[DeadLetter]) -> None:
        assert self.store is not None
        replayed = failed = 0
        blocked_key: BlockedKey | None = None
        for entry in queue:
            key = (entry.source_table, entry.key)
            if key == blocked_key:
                continue
            if entry.status == DEAD:
                if self._hold:
                    blocked_key = key  # the key's head was not asked for: it keeps waiting
                continue
            seq = self.store.begin_replay(entry.id)
            try:
                change = Change(decode_key(entry.key), decode_value(entry.value))
                if change.event.poison is not None:
                    raise DataError(change.event.poison.error)
                mark = replay_mark(entry.partition)
                self.sink.apply(self.chain.apply([change]), {mark: seq})
            except (msgspec.DecodeError, UnicodeDecodeError, PermanentError) as exc:
                self.store.fail_replay(entry.id, type(exc).__name__, str(exc), hold_rest=self._hold)
                failed += 1
                if self.monitor is not None:
                    self.monitor.failed(
                        entry.source_table,
                        entry.key,
                        _decoded(entry.key, entry.value),
                        f"replay: {type(exc).__name__}: {exc}",
                    )
                log.error(
                    "pipeline %s: replay of dead-letter #%d failed again: %s",
                    self.cfg.name,
                    entry.id,
                    exc,
                )
                if self._hold:
                    blocked_key = key
                continue
            except BaseException:
                self.store.abort_replay(entry.id)
                raise
            self.store.finish_replay(entry.id)
            replayed += 1
            if self.monitor is not None:
                self.monitor.replayed(entry.source_table, entry.key, change)
        self.stats.replayed += replayed
        if replayed or failed:
            log.info(
                "pipeline %s: dead-letter replay: %d applied, %d failed again",
                self.cfg.name,
                replayed,
                failed,
            )


def _decoded(key: bytes, value: bytes) -> Change | None:
    try:
        return Change(decode_key(key), decode_value(value))
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None


def change_fields(
    pipeline: str, d: Delivered, change: Change | None, batch: str = ""
) -> dict[str, object]:
    """Log fields naming one change: table, key, positions and its correlation id."""
    from syncline.monitoring.records import correlation_id, position_of

    position = position_of(change.event.source) if change is not None else None
    return {
        "table": d.table,
        "key": d.key.decode("utf-8", "replace"),
        "position": position,
        "partition": d.partition,
        "offset": d.offset,
        "cid": correlation_id(pipeline, d.table, d.key, position) if position else None,
        "batch": batch or None,
    }


def origin_runs(changes: list[Change]) -> list[tuple[int, int]]:
    """Split a batch into consecutive runs written under one replication origin.

    A target transaction carries a single origin, and a forwarding node in a ring
    receives changes that started on different nodes. Splitting here, in log order,
    lets every run commit its own positions (exactly once across a crash between
    runs) and keeps each key's order. Almost every batch is a single run.
    """
    if not changes:
        return []
    first = changes[0].event.source.origin
    if all(c.event.source.origin == first for c in changes):
        return [(0, len(changes))]
    runs: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(changes)):
        if changes[i].event.source.origin != changes[i - 1].event.source.origin:
            runs.append((start, i))
            start = i
    runs.append((start, len(changes)))
    return runs
