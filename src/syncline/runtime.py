"""Runs the pipelines of one config until a signal, then drains them.

One broken pipeline does not stop the others; the process exits non-zero if
any pipeline failed.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING

from syncline.config import Config, PipelineConfig
from syncline.errors import ConfigError, SynclineError, for_pipeline
from syncline.metrics import pretty_bytes
from syncline.pipeline import Pipeline

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from syncline.api.server import ApiServer
    from syncline.api.settings import ApiSettings
    from syncline.monitoring.monitor import Monitor

log = logging.getLogger("syncline.runtime")

STOP_RESERVE_S = 1.5  # of the drain timeout, kept for stopping workers after the drain
STALLED_AFTER_S = 2.0  # apply behind the log and not moving for this long: not drained


class _ApplyWatch:
    """When each pipeline's apply side last moved, to tell a drain that cannot progress."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[dict[int, int], float]] = {}

    def tick(self, pipelines: Sequence[Pipeline]) -> None:
        now = time.monotonic()
        for p in pipelines:
            applied = p.applied_end
            seen = self._seen.get(p.name)
            if seen is None or seen[0] != applied:
                self._seen[p.name] = (applied, now)

    def stalled(self, p: Pipeline) -> bool:
        seen = self._seen.get(p.name)
        if seen is None or time.monotonic() - seen[1] < STALLED_AFTER_S:
            return False
        try:
            return not p.caught_up()
        except SynclineError:
            return True


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
        api: ApiSettings | None = None,
        log_format: str = "text",
    ) -> None:
        if role not in ROLES:
            raise ConfigError(f"--role must be one of {', '.join(ROLES)}, not {role!r}")
        cfgs = [config.pipeline(n) for n in only] if only else list(config.pipelines)
        self.role = role
        self._worker_id = worker_id
        self.pipelines: list[Pipeline] = []
        for c in cfgs:
            try:
                self.pipelines.append(Pipeline(c, worker_id=_worker_id(c.name, role, worker_id)))
            except SynclineError as exc:
                for p in self.pipelines:
                    p.transport.close()
                raise for_pipeline(exc, c.name) from exc
        self._stop = threading.Event()
        self.api = api  # serve the management API (docs/api.md) while running
        self.api_server: ApiServer | None = None
        self.lock = threading.RLock()  # one management change at a time
        self._watch = _ApplyWatch()
        self._log_format = log_format
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
        if self.api is not None:
            from syncline.api.server import ApiServer

            self.api_server = ApiServer(self, self.api)
            self.api_server.start()
        if self.monitor is not None:
            self.monitor.start()
        for p in self.pipelines:
            self._start(p)
        last_status = time.monotonic()
        while not self._stop.wait(0.2):
            self._watch.tick(self.pipelines)
            if on_tick:
                on_tick(self.pipelines)
            if self.api_server is None and not any(p.alive for p in self.pipelines):
                break  # with the API on, pipelines may be resumed or added: keep serving
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
        """Drain and stop all pipelines in parallel; the process can exit within ``timeout`` s.

        A pipeline whose apply side is stuck behind the log (target down) is not
        drained: nothing would move, and the log keeps its records for the next start. Part of the
        budget is kept for stopping the workers; an apply worker process still busy
        after it is killed, which is safe: its open batch is rolled back together
        with its positions and applied again on the next start.
        """
        if self.api_server is not None:
            self.api_server.stop()
        deadline = time.monotonic() + timeout
        budget = max(0.0, timeout - min(STOP_RESERVE_S, timeout / 2))
        threads = []
        for p in self.pipelines:
            drain = not self._watch.stalled(p)
            if not drain:
                log.warning(
                    "pipeline %s: not draining, apply is stuck behind the log (see the warnings "
                    "above); the log keeps the rest for the next start",
                    p.name,
                )
            threads.append(
                threading.Thread(
                    target=p.stop,
                    kwargs={"drain": drain, "timeout": budget},
                    name=f"{p.name}-stop",
                    daemon=True,
                )
            )
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        for child in multiprocessing.active_children():
            # children get the rest of the budget to finish the batch they are in
            child.join(max(0.0, deadline - time.monotonic()))
            if child.is_alive():
                log.warning(
                    "%s did not stop in time; killed (its open batch is redone)", child.name
                )
                child.kill()
                child.join(1.0)
        for p in self.pipelines:
            log.info("pipeline %s stopped (%s): applied=%d", p.name, p.stats.state, p.stats.applied)
        if self.monitor is not None:
            self.monitor.close()

    # ---- management (the API calls these under ``lock``) -------------------------------

    def _start(self, p: Pipeline) -> None:
        p.start(capture=self.role != "apply", apply=self.role != "capture")
        log.info("pipeline %s started (role %s, worker %s)", p.name, self.role, p.worker_id)

    def find(self, name: str) -> Pipeline | None:
        return next((p for p in self.pipelines if p.name == name), None)

    def build(self, cfg: PipelineConfig, check: bool = True) -> Pipeline:
        """A pipeline for ``cfg`` (checked like ``syncline run`` does), not started."""
        p = Pipeline(cfg, worker_id=_worker_id(cfg.name, self.role, self._worker_id))
        p.log_format = self._log_format
        if self.monitor is not None:
            p.attach_monitor(self.monitor)
        if check:
            try:
                p.check(source=self.role != "apply", sink=self.role != "capture")
            except BaseException:
                p.transport.close()
                raise
        return p

    def add(self, p: Pipeline) -> None:
        self.pipelines = [*self.pipelines, p]
        self._start(p)
        log.info("pipeline %s added", p.name)

    def remove(self, name: str, timeout: float = 10.0) -> Pipeline | None:
        """Drain and stop the pipeline, then forget it (its log, slot and positions stay)."""
        p = self.find(name)
        if p is not None:
            p.stop(drain=True, timeout=timeout)
            self.pipelines = [q for q in self.pipelines if q is not p]
            log.info("pipeline %s removed (%s)", name, p.stats.state)
        return p

    def replace(self, p: Pipeline, timeout: float = 10.0) -> None:
        """Stop the pipeline of the same name, then run ``p`` in its place."""
        old = self.find(p.name)
        if old is not None:
            old.stop(drain=True, timeout=timeout)
            self.pipelines = [p if q is old else q for q in self.pipelines]
            self._start(p)
            log.info("pipeline %s updated", p.name)
        else:
            self.add(p)

    def pause(self, name: str, timeout: float = 10.0) -> Pipeline | None:
        p = self.find(name)
        if p is not None:
            p.pause(timeout)
            log.info("pipeline %s paused", name)
        return p

    def resume(self, name: str) -> Pipeline | None:
        p = self.find(name)
        if p is not None:
            p.resume()
            log.info("pipeline %s resumed", name)
        return p

    def restart(self, name: str, timeout: float = 10.0) -> Pipeline | None:
        p = self.find(name)
        if p is not None:
            p.pause(timeout)
            p.resume()
            log.info("pipeline %s restarted", name)
        return p

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
