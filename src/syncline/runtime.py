"""Runs the pipelines of one config until a signal, then drains them.

One broken pipeline does not stop the others; the process exits non-zero if
any pipeline failed.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING

from syncline.config import Config
from syncline.errors import ConfigError
from syncline.metrics import pretty_bytes
from syncline.pipeline import Pipeline

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from syncline.monitoring.monitor import Monitor

log = logging.getLogger("syncline.runtime")


ROLES = ("all", "capture", "apply")


class Runtime:
    """``role``: ``all`` runs capture and apply; ``capture`` or ``apply`` runs one side,
    so apply workers can run in other processes or machines (they share the
    partitions through leases in the target)."""

    def __init__(
        self,
        config: Config,
        only: Sequence[str] = (),
        role: str = "all",
        worker_id: str | None = None,
        log_format: str = "text",
    ) -> None:
        if role not in ROLES:
            raise ConfigError(f"--role must be one of {', '.join(ROLES)}, not {role!r}")
        cfgs = [config.pipeline(n) for n in only] if only else list(config.pipelines)
        self.role = role
        self.pipelines = [Pipeline(c, worker_id=_worker_id(c.name, role, worker_id)) for c in cfgs]
        self._stop = threading.Event()
        self.monitor: Monitor | None = None
        if config.monitoring.enabled:
            from syncline.monitoring.monitor import Monitor

            self.monitor = Monitor(config.monitoring)
        for p in self.pipelines:
            p.log_format = log_format
            if self.monitor is not None:
                p.attach_monitor(self.monitor)

    def metrics_registry(self) -> CollectorRegistry:
        """A Prometheus registry reading these pipelines' stats at scrape time."""
        from syncline.observability.prometheus import build_registry

        return build_registry(lambda: self.pipelines)

    def request_stop(self) -> None:
        self._stop.set()

    def run(
        self,
        status_every: float = 10.0,
        drain_timeout: float = 10.0,
        on_tick: Callable[[list[Pipeline]], None] | None = None,
    ) -> int:
        """Start everything, block until stopped or all pipelines end; return an exit code."""
        self._install_signals()
        if self.monitor is not None:
            self.monitor.start()
        for p in self.pipelines:
            p.start(capture=self.role != "apply", apply=self.role != "capture")
            log.info("pipeline %s started (role %s, worker %s)", p.name, self.role, p.worker_id)
        last_status = time.monotonic()
        while not self._stop.wait(0.2):
            if on_tick:
                on_tick(self.pipelines)
            if not any(p.alive for p in self.pipelines):
                break
            snapshotting = any(p.stats.state == "snapshot" for p in self.pipelines)
            every = min(status_every, 2.0) if snapshotting else status_every
            if every and time.monotonic() - last_status >= every:
                last_status = time.monotonic()
                for p in self.pipelines:
                    log.info("pipeline %s", status_line(p))
        self.shutdown(drain_timeout)
        failed = [p for p in self.pipelines if p.stats.state == "failed"]
        for p in failed:
            log.error("pipeline %s failed: %s", p.name, p.stats.error)
        return 1 if failed else 0

    def shutdown(self, timeout: float = 10.0) -> None:
        """Drain and stop all pipelines in parallel, within ``timeout`` seconds."""
        threads = [
            threading.Thread(target=p.stop, kwargs={"drain": True, "timeout": timeout})
            for p in self.pipelines
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout + 1)
        for p in self.pipelines:
            log.info("pipeline %s stopped (%s): applied=%d", p.name, p.stats.state, p.stats.applied)
        if self.monitor is not None:
            self.monitor.close()

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: FrameType | None) -> None:
            log.info("received %s, draining", signal.Signals(signum).name)
            self._stop.set()

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


def _worker_id(pipeline: str, role: str, given: str | None) -> str:
    """Stable for ``all`` (a restart takes its partitions back at once); unique per process
    for extra ``apply`` workers unless named with ``--worker-id``."""
    host = socket.gethostname()
    if given:
        return f"{given}/{pipeline}"
    if role == "apply":
        return f"{host}:{os.getpid()}/{pipeline}"
    return f"{host}/{pipeline}"


def status_line(p: Pipeline) -> str:
    s = p.stats
    wal = s.slot_retained_wal_bytes
    slot = f" slot_wal={pretty_bytes(wal).replace(' ', '')}" if wal is not None else ""
    if s.state == "snapshot":
        total = f"/~{s.snapshot_total:,}" if s.snapshot_total else ""
        return (
            f"{p.name} snapshot: {s.snapshot_rows:,}{total} rows read, applied={s.applied:,}{slot}"
        )
    p50, p99 = s.latency_percentiles(50, 99)
    error = f" ({s.error})" if s.error else ""
    dlq = ""
    if s.dead_lettered or s.dlq_open:
        dlq = f" dead_lettered={s.dead_lettered:,} held={s.held:,} dlq_open={s.dlq_open:,}"
    return (
        f"{p.name} {s.state}{error}: captured={s.captured:,} applied={s.applied:,} "
        f"lag_p50={p50:.1f}ms lag_p99={p99:.1f}ms{dlq}{slot}"
    )
