"""Runs the pipelines of one config until a signal, then drains them.

One broken pipeline does not stop the others; the process exits non-zero if
any pipeline failed.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType

from syncline.config import Config
from syncline.errors import SynclineError
from syncline.pipeline import Pipeline

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


class Runtime:
    def __init__(self, config: Config, only: Sequence[str] = ()) -> None:
        cfgs = [config.pipeline(n) for n in only] if only else list(config.pipelines)
        self.pipelines = [Pipeline(c) for c in cfgs]
        self._stop = threading.Event()
        self._watch = _ApplyWatch()

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
            self._watch.tick(self.pipelines)
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
        """Drain and stop all pipelines in parallel; the process can exit within ``timeout`` s.

        A pipeline whose apply side is stuck behind the log (target down) is not
        drained: nothing would move, and the log keeps its records for the next start. Part of the
        budget is kept for stopping the workers; an apply worker process still busy
        after it is killed, which is safe: its open batch is rolled back together
        with its positions and applied again on the next start.
        """
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
    return (
        f"{p.name} {s.state}{error}: captured={s.captured:,} applied={s.applied:,} "
        f"lag_p50={p50:.1f}ms lag_p99={p99:.1f}ms"
    )
