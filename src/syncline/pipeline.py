"""One pipeline: a capture worker and an apply worker joined by the durable log.

capture: source.read → encode → producer.publish(records, checkpoint) → source.ack
apply:   consumer.poll → decode → sink.apply(changes, positions) → consumer.commit

The two workers share nothing but the log, so either can restart (or, later, run
in another process) without the other noticing. Transient failures are retried
with backoff forever, reopening the failed side from durable state: the capture
side from the log's checkpoint, the apply side from the sink's stored positions.
A permanent failure of one event sends it to the dead-letter queue (see
dispatcher.py); any other permanent failure stops the pipeline with its one-line
reason.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from syncline.config import PipelineConfig
from syncline.dispatcher import Dispatcher, origin_runs
from syncline.dlq import DeadLetterStore, check_dlq_dir
from syncline.errors import PermanentError, SynclineError, TransientError
from syncline.events import encode_key, encode_value, now_us
from syncline.factory import build_sink, build_source, build_transport
from syncline.metrics import PipelineStats, count_table_ops
from syncline.observability.logs import bind_log_context
from syncline.retry import Backoff
from syncline.schema import TableSchema, decode_schemas, encode_schemas
from syncline.sinks.base import Sink
from syncline.sources.base import Source
from syncline.transforms import build_chain
from syncline.transports.base import Consumer, Producer, Record, Transport

if TYPE_CHECKING:
    from syncline.monitoring.monitor import Monitor, PipelineMonitor

log = logging.getLogger("syncline.pipeline")

GROUP_COMMIT_INTERVAL_S = 1.0
SCHEMAS_META = "schemas"  # the source's table shapes, for apply workers in other processes


class Pipeline:
    def __init__(
        self,
        cfg: PipelineConfig,
        *,
        source_factory: Callable[[], Source] | None = None,
        sink_factory: Callable[[], Sink] | None = None,
        transport: Transport | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.cfg = cfg
        # who holds partition leases in the target; stable across restarts of one
        # machine's pipeline, so a restarted worker gets its partitions back at once
        self.worker_id = worker_id or f"{socket.gethostname()}/{cfg.name}"
        self.name = cfg.name
        self.stats = PipelineStats(cfg.name)
        self._source_factory = source_factory or (lambda: build_source(cfg.source, cfg.name))
        self._sink_factory = sink_factory or (lambda: build_sink(cfg.sink, cfg.name))
        self.transport = transport or build_transport(cfg.transport, cfg.name)
        self._chain = build_chain(cfg.transforms, cfg.name)
        self._stop_capture = threading.Event()
        self._stop_apply = threading.Event()
        self._threads: list[threading.Thread] = []
        self._schemas: dict[str, TableSchema] | None = None
        self._schemas_ready = threading.Event()
        self._applied_end: dict[int, int] = {}
        self._owned: set[int] | None = None  # partitions this process applies (None: all)
        self._trouble: dict[str, str] = {}  # side → why it is retrying (state "degraded")
        self._capture_thread: threading.Thread | None = None
        self._apply_thread: threading.Thread | None = None
        self.sides = (True, True)  # (capture, apply) as last started
        self.failure: SynclineError | None = None
        self.monitor: PipelineMonitor | None = None  # stage records (monitoring.enabled)
        self.log_format = "text"  # for an apply child process

    def attach_monitor(self, monitor: Monitor) -> None:
        """Record per-change stages through ``monitor`` (call before ``start``)."""
        self.monitor = monitor.for_pipeline(self.cfg, self.stats)

    # ---- lifecycle -------------------------------------------------------------------

    def check(self, source: bool = True, sink: bool = True) -> list[str]:
        """Connect to everything and check the target tables against the source's shapes.

        What the apply worker would refuse at start (a missing target table or
        column, a key mismatch, an unusable dead-letter directory) is refused here,
        so ``syncline run`` stops with one line before anything runs. An apply-only
        worker (no access to the source) checks the target against the shapes the
        capture process stored in the transport, if any.
        """
        notes: list[str] = []
        schemas: dict[str, TableSchema] | None = None
        if source:
            src = self._source_factory()
            try:
                notes += src.check()
                schemas = self._chain.schemas(src.describe())
            finally:
                src.close()
        notes += self.transport.check()
        if sink:
            if schemas is None:
                text = self.transport.get_meta(SCHEMAS_META)
                schemas = self._chain.schemas(decode_schemas(text)) if text else None
            notes += self._sink_factory().check(schemas)
            if self.cfg.dlq.enabled:
                notes.append(check_dlq_dir(self.cfg.dlq_dir, self.name))
        return notes

    def start(self, capture: bool = True, apply: bool = True) -> None:
        """Start the workers; the apply side runs in a child process if configured."""
        self.sides = (capture, apply)
        loops: list[tuple[str, Callable[[], None]]] = []
        if capture:
            loops.append(("capture", self._capture_loop))
        if apply:
            in_process = self.cfg.apply_in == "process" and capture
            loops.append(("apply", self._apply_proxy_loop if in_process else self._apply_loop))
        self._threads = [
            threading.Thread(target=self._guard(fn), name=f"{self.name}-{side}", daemon=True)
            for side, fn in loops
        ]
        self._capture_thread = self._threads[0] if capture else None
        self._apply_thread = self._threads[-1] if apply else None
        for t in self._threads:
            t.start()

    def provide_schemas(self, schemas: dict[str, TableSchema]) -> None:
        """Source table shapes for an apply-only pipeline (they come from capture otherwise)."""
        self._schemas = schemas
        self._schemas_ready.set()

    def stop(self, drain: bool = True, timeout: float = 10.0) -> None:
        """Stop capture, let apply catch up with what the log holds (if ``drain``), then stop."""
        deadline = time.monotonic() + timeout
        self.stats.state = "stopping" if self.stats.state != "failed" else "failed"
        self._stop_capture.set()
        if self._capture_thread is not None:
            self._capture_thread.join(max(0.0, deadline - time.monotonic()))
        if drain and self._apply_thread is not None:
            ends = self.transport.end_offsets()
            while (
                time.monotonic() < deadline
                and self._apply_thread.is_alive()
                and not self.caught_up(ends)
            ):
                time.sleep(0.01)
        self.stop_apply(max(0.0, deadline - time.monotonic()))
        if self.stats.state != "failed":
            self.stats.state = "stopped"
        self.transport.close()

    def pause(self, timeout: float = 10.0) -> bool:
        """Stop capturing and applying without draining; every position stays durable
        (the log's checkpoint, the sink's offsets), so ``resume`` goes on from there.
        True when both workers ended within ``timeout``."""
        deadline = time.monotonic() + timeout
        self._stop_capture.set()
        if self._capture_thread is not None:
            self._capture_thread.join(max(0.0, deadline - time.monotonic()))
        self.stop_apply(max(0.0, deadline - time.monotonic()))
        if self.stats.state != "failed":
            self.stats.state = "paused"
        return not self.alive

    def resume(self) -> None:
        """Start the workers again after ``pause`` or a failure, from the durable positions."""
        if self.alive:
            if not self._stop_capture.is_set() and not self._stop_apply.is_set():
                return  # running already
            raise TransientError(f"pipeline {self.name} is still stopping; try again")
        self._stop_capture = threading.Event()
        self._stop_apply = threading.Event()
        self.failure = None
        self.stats.state, self.stats.error = "starting", None
        self.start(*self.sides)

    def stop_apply(self, timeout: float) -> None:
        self._stop_apply.set()
        if self._apply_thread is not None:
            self._apply_thread.join(timeout)

    @property
    def owned(self) -> set[int] | None:
        """The partitions this process's apply worker holds (None: not settled yet)."""
        return None if self._owned is None else set(self._owned)

    @property
    def applied_end(self) -> dict[int, int]:
        """Next log offset per partition that the sink has committed."""
        return dict(self._applied_end)

    def caught_up(self, ends: dict[int, int] | None = None) -> bool:
        """True when apply has reached the log's end (or the given end offsets)."""
        ends = self.transport.end_offsets() if ends is None else ends
        applied = self._applied_end
        owned = self._owned
        return all(
            applied.get(p, 0) >= off
            for p, off in ends.items()
            if off > 0 and (owned is None or p in owned)
        )

    def wait(self, timeout: float | None = None) -> bool:
        """Block until both workers end (failure or stop); True if they ended."""
        end = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if end is None else max(0.0, end - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    @property
    def applies(self) -> bool:
        """Whether this process runs the pipeline's apply side (itself or in its child)."""
        return self._apply_thread is not None

    @property
    def alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def _guard(self, loop: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            bind_log_context(pipeline=self.name)
            try:
                loop()
            except SynclineError as exc:
                self._fail(exc)
            except Exception as exc:  # a bug: keep the traceback in the log, fail loudly
                log.exception("pipeline %s: unexpected error", self.name)
                self._fail(PermanentError(f"internal error: {type(exc).__name__}: {exc}"))

        return run

    def _fail(self, exc: SynclineError) -> None:
        if self.failure is None:
            self.failure = exc
        self.stats.state = "failed"
        self.stats.error = str(exc)
        log.error("pipeline %s failed: %s", self.name, exc)
        self._stop_capture.set()
        self._stop_apply.set()

    def _backoff(self) -> Backoff:
        r = self.cfg.retry
        return Backoff(base=r.initial_delay_ms / 1000.0, cap=r.max_delay_ms / 1000.0)

    def _degraded(self, side: str, exc: SynclineError, backoff: Backoff) -> float:
        limit = self.cfg.retry.max_attempts
        if limit is not None and backoff.attempt >= limit:
            raise PermanentError(
                f"{side}: gave up after {limit} attempts (retry.max_attempts): {exc}"
            )
        self._trouble[side] = f"{side}: {exc}"
        self.stats.state = "degraded"
        self.stats.error = self._trouble[side]
        self.stats.retries += 1
        delay = backoff.next_delay()
        log.warning("pipeline %s %s: %s (retrying in %.1fs)", self.name, side, exc, delay)
        return delay

    def _healthy(self, side: str) -> None:
        """``side`` works again; the pipeline is running once no side is in trouble."""
        if self._trouble.pop(side, None) is None and self.stats.state != "degraded":
            return
        if self._trouble:  # the other side is still failing: say so
            self.stats.state, self.stats.error = "degraded", next(iter(self._trouble.values()))
        elif self.stats.state == "degraded":
            self.stats.state, self.stats.error = "running", None

    # ---- capture ---------------------------------------------------------------------

    def _capture_loop(self) -> None:
        backoff = self._backoff()
        while not self._stop_capture.is_set():
            source: Source | None = None
            producer: Producer | None = None
            try:
                producer = self.transport.producer()
                source = self._source_factory()
                source.on_progress = self._on_progress
                source.on_retained = self._on_retained
                source.open(producer.checkpoint())
                self._schemas = source.describe()
                self._publish_schemas(self._schemas)
                self._schemas_ready.set()
                self._capture(source, producer, backoff)
            except TransientError as exc:
                if self._stop_capture.wait(self._degraded("capture", exc, backoff)):
                    break
            finally:
                if source is not None:
                    source.close()
                if producer is not None:
                    producer.close()

    def _publish_schemas(self, schemas: dict[str, TableSchema]) -> None:
        text = encode_schemas(schemas)
        if self.transport.get_meta(SCHEMAS_META) != text:
            self.transport.put_meta(SCHEMAS_META, text)

    def _on_progress(self, table: str, done: int, total: int | None) -> None:
        self.stats.state = "snapshot"
        self.stats.snapshot_rows = done
        self.stats.snapshot_total = total

    def _on_retained(self, size: int | None) -> None:
        self.stats.slot_retained_wal_bytes = size

    def _capture(self, source: Source, producer: Producer, backoff: Backoff) -> None:
        max_events = self.cfg.batch.max_events
        stats = self.stats
        monitor = self.monitor
        if stats.state == "starting":
            stats.state = "running"
        while not self._stop_capture.is_set():
            batch = source.read(max_events, 0.1)
            if batch is None:
                continue
            captured_us = now_us() if monitor is not None else 0
            records = [
                Record(
                    ch.event.source.schema + "." + ch.event.source.table,
                    encode_key(ch.key),
                    encode_value(ch.event),
                )
                for ch in batch.changes
            ]
            by = count_table_ops([r.table for r in records], [c.event.op for c in batch.changes])
            stats.captured_by.update(by)
            producer.publish(records, batch.checkpoint)
            published_us = now_us() if monitor is not None else 0
            source.ack(batch.checkpoint)
            if monitor is not None and records:
                monitor.published(batch.changes, records, captured_us, published_us)
            stats.captured += len(records)
            stats.published += len(records)
            stats.published_by.update(by)
            stats.source_checkpoint = batch.checkpoint
            if stats.state == "snapshot" and (
                not batch.changes or batch.changes[-1].event.source.snapshot != "true"
            ):
                stats.state = "running"
            self._healthy("capture")
            backoff.reset()

    # ---- apply in a child process -----------------------------------------------------

    def _apply_proxy_loop(self) -> None:
        """Run the apply worker in a child process; restart it if it dies."""
        from syncline.apply_process import ApplyProcess

        while not self._schemas_ready.wait(0.1):
            if self._stop_apply.is_set():
                return
        backoff = self._backoff()
        stats = self.stats
        while not self._stop_apply.is_set():
            child = ApplyProcess(
                self.cfg,
                self._schemas or {},
                self.worker_id,
                monitoring=None if self.monitor is None else self.monitor.config.model_dump(),
                log_format=self.log_format,
            )
            base_by = stats.child_base()
            base = (
                stats.applied,
                stats.skipped,
                stats.batches,
                stats.retries,
                stats.dead_lettered,
                stats.held,
                stats.replayed,
            )
            try:
                while not self._stop_apply.is_set():
                    report = child.next_report(0.2)
                    if report is not None:
                        self._absorb(report, base)
                        stats.absorb_child(report, base_by)
                        if report["failed"]:
                            raise PermanentError(report["error"] or "apply worker failed")
                    elif not child.proc.is_alive():
                        break
            finally:
                child.stop(timeout=10.0)
                while (report := child.next_report(0)) is not None:
                    self._absorb(report, base)
                    stats.absorb_child(report, base_by)
            if not self._stop_apply.is_set():
                exc = TransientError(f"apply worker exited with code {child.proc.exitcode}")
                if self._stop_apply.wait(self._degraded("apply", exc, backoff)):
                    break

    def _absorb(self, report: dict[str, Any], base: tuple[int, ...]) -> None:
        stats = self.stats
        stats.applied = base[0] + report["applied"]
        stats.skipped = base[1] + report["skipped"]
        stats.batches = base[2] + report["batches"]
        stats.retries = base[3] + report["retries"]
        stats.dead_lettered = base[4] + report["dead_lettered"]
        stats.held = base[5] + report["held"]
        stats.replayed = base[6] + report["replayed"]
        stats.dlq_open = report["dlq_open"]
        self._applied_end = report["applied_end"]
        self._owned = report["owned"]
        if report["latencies"]:
            stats.record_latencies(report["latencies"])
        if report["state"] == "degraded":
            self._trouble["apply"] = report["error"] or "apply: degraded"
            stats.state, stats.error = "degraded", self._trouble["apply"]
        else:
            self._healthy("apply")

    # ---- apply -----------------------------------------------------------------------

    def _apply_loop(self) -> None:
        backoff = self._backoff()
        while not self._stop_apply.is_set():
            sink: Sink | None = None
            store: DeadLetterStore | None = None
            try:
                if not self._await_schemas():
                    return
                sink = self._sink_factory()
                sink.open(self.name)
                sink.prepare(self._chain.schemas(self._schemas or {}))
                if self.cfg.dlq.enabled:
                    store = DeadLetterStore(self.cfg.dlq_dir, self.name)
                dispatcher = Dispatcher(
                    self.cfg, sink, self._chain, self.stats, store, self._stop_apply
                )
                dispatcher.monitor = self.monitor
                self._apply_owned(sink, dispatcher, backoff)
            except TransientError as exc:
                if self._stop_apply.wait(self._degraded("apply", exc, backoff)):
                    break
            finally:
                if store is not None:
                    store.close()
                if sink is not None:
                    sink.close()

    def _await_schemas(self) -> bool:
        """Source table shapes: from capture in this process, or through the transport."""
        while not self._schemas_ready.wait(0.1 if self._capture_thread else 0.5):
            if self._stop_apply.is_set():
                return False
            if self._capture_thread is None:
                text = self.transport.get_meta(SCHEMAS_META)
                if text is not None:
                    self.provide_schemas(decode_schemas(text))
        return True

    def _apply_owned(self, sink: Sink, dispatcher: Dispatcher, backoff: Backoff) -> None:
        """Apply the partitions this worker holds; re-balance every heartbeat."""
        scaling = self.cfg.scaling
        parts = self.transport.partitions
        try:
            while not self._stop_apply.is_set():
                owned = sink.rebalance(self.worker_id, parts, scaling.lease_s)
                self._owned = owned
                if not owned:  # more workers than partitions: stand by
                    self.stats.state = "standby"
                    self._stop_apply.wait(scaling.heartbeat_s)
                    continue
                if self.stats.state == "standby":
                    self.stats.state = "running"
                consumer = self.transport.consumer(self.name, sorted(owned))
                try:
                    self._apply(dispatcher, consumer, backoff, owned)
                finally:
                    consumer.close()
        finally:
            if self._stop_apply.is_set():
                with contextlib.suppress(SynclineError):  # others take over at once
                    sink.rebalance(self.worker_id, parts, scaling.lease_s, leaving=True)

    def _apply(
        self, dispatcher: Dispatcher, consumer: Consumer, backoff: Backoff, owned: set[int]
    ) -> None:
        positions = dispatcher.open(owned)
        consumer.seek(positions)
        self._applied_end = dict(positions)
        try:
            self._apply_until_stopped(dispatcher, consumer, backoff, owned)
        finally:
            if self._applied_end:
                with contextlib.suppress(SynclineError):
                    consumer.commit(self._applied_end)

    def _apply_until_stopped(
        self, dispatcher: Dispatcher, consumer: Consumer, backoff: Backoff, owned: set[int]
    ) -> None:
        """Apply batches until stopped or this worker's share of partitions changes."""
        max_events = self.cfg.batch.max_events
        wait = max(self.cfg.batch.max_wait_ms / 1000.0, 0.005)
        stats = self.stats
        last_commit = time.monotonic()
        heartbeat = self.cfg.scaling.heartbeat_s
        next_heartbeat = time.monotonic() + heartbeat
        while not self._stop_apply.is_set():
            if time.monotonic() >= next_heartbeat:
                next_heartbeat = time.monotonic() + heartbeat
                parts = self.transport.partitions
                if (
                    dispatcher.sink.rebalance(self.worker_id, parts, self.cfg.scaling.lease_s)
                    != owned
                ):
                    return  # the caller re-opens a consumer for the new share
            dispatcher.maintain()
            delivered = consumer.poll(max_events, wait)
            if not delivered:
                continue
            result = dispatcher.apply(delivered)
            done_us = now_us()
            positions = dispatcher.positions
            self._applied_end = dict(positions)
            if time.monotonic() - last_commit >= GROUP_COMMIT_INTERVAL_S:
                # Advisory (the sink holds the authoritative offsets), so it is batched:
                # a write to the log per apply would contend with the producer. A failure
                # (log disk full) must not stop applying: the next commit catches up.
                try:
                    consumer.commit(positions)
                except TransientError as exc:
                    log.warning("pipeline %s: group offsets not recorded: %s", self.name, exc)
                last_commit = time.monotonic()
            stats.applied += result.applied
            stats.skipped += result.skipped
            stats.conflicts += result.conflicts
            stats.batches += 1
            stats.record_latencies(
                [
                    (done_us - (c.event.source.ts_us or c.event.source.ts_ms * 1000)) / 1000.0
                    for c in dispatcher.last_batch
                    if c.event.op != "r"
                ]
            )
            self._healthy("apply")
            backoff.reset()


__all__ = ["Pipeline", "origin_runs"]
