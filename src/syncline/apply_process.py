"""The apply worker of a pipeline, in a child process.

Capture (pgoutput decoding, encoding) and apply (decoding, folding, COPY
encoding) are both Python-heavy; in one process they take turns on the GIL. The
durable log already separates them, so the apply side runs in a child process
started with ``spawn`` and reports its progress to the parent over a queue.

The child dies with its parent (``PR_SET_PDEATHSIG``, plus a parent-pid check),
and even a child that outlived a ``kill -9`` cannot apply twice: sinks fence
stale appliers inside the apply transaction.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing as mp
import os
import queue
import signal
import time
from typing import Any

from syncline.config import PipelineConfig
from syncline.errors import SynclineError
from syncline.gctune import tune_for_throughput
from syncline.schema import TableSchema

REPORT_EVERY_S = 0.1
log = logging.getLogger("syncline.apply")


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def child_main(
    cfg_data: dict[str, Any],
    schemas: dict[str, TableSchema],
    stop: Any,
    reports: Any,
    parent_pid: int,
    log_level: int,
    worker_id: str,
    monitoring: dict[str, Any] | None = None,
    log_format: str = "text",
) -> None:
    """Entry point of the child: run the apply loop, report, stop when told or orphaned."""
    _die_with_parent()
    if os.getppid() != parent_pid:  # the parent died before PDEATHSIG was armed
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from syncline.observability.logs import bind_log_context, setup_logging
    from syncline.pipeline import Pipeline

    setup_logging(log_level, log_format)
    try:
        pipe = Pipeline(PipelineConfig.model_validate(cfg_data), worker_id=worker_id)
    except SynclineError as exc:  # e.g. the log's disk refuses to open: the parent retries
        log.error("apply worker could not start: %s", exc)
        os._exit(1)
    bind_log_context(pipeline=pipe.name)
    monitor = None
    if monitoring is not None:  # this process writes its own stage records
        from syncline.config import MonitoringConfig
        from syncline.monitoring.monitor import Monitor

        monitor = Monitor(MonitoringConfig.model_validate(monitoring))
        pipe.attach_monitor(monitor)
        monitor.start()
    pipe.provide_schemas(schemas)
    tune_for_throughput()
    pipe.start(capture=False)
    sent_latencies = 0
    while True:
        done = stop.wait(REPORT_EVERY_S)
        if os.getppid() != parent_pid:
            os._exit(1)
        if done:
            pipe.stop_apply(timeout=10.0)
        if monitor is not None and (done or not pipe.alive):
            monitor.close()  # write the last records before the final report
        s = pipe.stats
        lat, sent_latencies = s.latencies_since(sent_latencies)
        reports.put(
            {
                "applied": s.applied,
                "skipped": s.skipped,
                "batches": s.batches,
                "retries": s.retries,
                "dead_lettered": s.dead_lettered,
                "held": s.held,
                "replayed": s.replayed,
                "dlq_open": s.dlq_open,
                "state": s.state,
                "error": s.error,
                "failed": pipe.failure is not None,
                "applied_end": pipe.applied_end,
                "owned": pipe.owned,
                "latencies": lat,
                **s.child_report(),
            }
        )
        if done or not pipe.alive:
            break
    reports.close()
    reports.join_thread()


class ApplyProcess:
    """Parent-side handle: start the child, fold its reports into the parent's stats."""

    def __init__(
        self,
        cfg: PipelineConfig,
        schemas: dict[str, TableSchema],
        worker_id: str,
        monitoring: dict[str, Any] | None = None,
        log_format: str = "text",
    ) -> None:
        ctx = mp.get_context("spawn")
        self.stop_event = ctx.Event()
        self.reports: Any = ctx.Queue(maxsize=1000)
        self.proc = ctx.Process(
            target=child_main,
            name=f"syncline-apply-{cfg.name}",
            args=(
                cfg.model_dump(),
                schemas,
                self.stop_event,
                self.reports,
                os.getpid(),
                logging.getLogger().getEffectiveLevel(),
                worker_id,
                monitoring,
                log_format,
            ),
            daemon=True,
        )
        self.proc.start()

    def next_report(self, timeout: float) -> dict[str, Any] | None:
        try:
            report: dict[str, Any] = self.reports.get(timeout=timeout)
            return report
        except queue.Empty:
            return None

    def stop(self, timeout: float) -> None:
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        while self.proc.is_alive() and time.monotonic() < deadline:
            self.next_report(0.05)  # keep the queue moving so the child can exit
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(1)
