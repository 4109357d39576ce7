"""Runs the pipelines of one config until a signal, then drains them.

One broken pipeline does not stop the others; the process exits non-zero if
any pipeline failed.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType

from syncline.config import Config
from syncline.errors import SynclineError, for_pipeline
from syncline.pipeline import Pipeline

log = logging.getLogger("syncline.runtime")


class Runtime:
    def __init__(self, config: Config, only: Sequence[str] = ()) -> None:
        cfgs = [config.pipeline(n) for n in only] if only else list(config.pipelines)
        self.pipelines: list[Pipeline] = []
        for c in cfgs:
            try:
                self.pipelines.append(Pipeline(c))
            except SynclineError as exc:
                for p in self.pipelines:
                    p.transport.close()
                raise for_pipeline(exc, c.name) from exc
        self._stop = threading.Event()

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
        for p in self.pipelines:
            p.start()
            log.info("pipeline %s started", p.name)
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

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: FrameType | None) -> None:
            log.info("received %s, draining", signal.Signals(signum).name)
            self._stop.set()

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


def status_line(p: Pipeline) -> str:
    s = p.stats
    if s.state == "snapshot":
        total = f"/~{s.snapshot_total:,}" if s.snapshot_total else ""
        return f"{p.name} snapshot: {s.snapshot_rows:,}{total} rows read, applied={s.applied:,}"
    p50, p99 = s.latency_percentiles(50, 99)
    error = f" ({s.error})" if s.error else ""
    dlq = ""
    if s.dead_lettered or s.dlq_open:
        dlq = f" dead_lettered={s.dead_lettered:,} held={s.held:,} dlq_open={s.dlq_open:,}"
    return (
        f"{p.name} {s.state}{error}: captured={s.captured:,} applied={s.applied:,} "
        f"lag_p50={p50:.1f}ms lag_p99={p99:.1f}ms{dlq}"
    )
