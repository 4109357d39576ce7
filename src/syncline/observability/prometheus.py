"""Prometheus export: a collector that reads the pipelines' stats at scrape time.

Nothing is counted for Prometheus on the data path: the pipeline threads keep
plain ints, per-(table, op) ``Counter``s updated once per batch, and a bucket
array for latencies (``syncline.metrics``); this collector copies them when
``/metrics`` is scraped. So the cost is zero until someone scrapes, and one
registry per process serves both the standalone endpoint (``syncline run
--metrics HOST:PORT``) and the REST API (``asgi_app(registry)``).

Metric names and labels are listed in docs/observability.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from syncline.config import PostgresSourceConfig
from syncline.errors import ConfigError, SynclineError

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from syncline.pipeline import Pipeline

log = logging.getLogger("syncline.metrics")

PipelinesFn = Callable[[], Sequence["Pipeline"]]
STATES = (
    "starting", "snapshot", "running", "degraded", "standby", "stopping", "stopped", "failed",
)  # fmt: skip


def _client() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise ConfigError(
            "metrics need prometheus-client: pip install 'syncline[metrics]'"
        ) from exc
    return prometheus_client


def _slot_name(p: Pipeline) -> str | None:
    src = p.cfg.source
    if not isinstance(src, PostgresSourceConfig):
        return None
    if src.slot:
        return src.slot
    from syncline.sources.postgres.source import default_slot

    return default_slot(p.name)


class PipelineCollector:
    """Reads ``PipelineStats`` (and the log's end offsets, for lag) on each scrape."""

    def __init__(self, pipelines: PipelinesFn) -> None:
        self._pipelines = pipelines

    def describe(self) -> list[Any]:
        return []  # unchecked collector: families are built at scrape time

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        by = ["pipeline", "table", "op"]
        captured = CounterMetricFamily(
            "syncline_events_captured", "Changes read from the source.", labels=by
        )
        published = CounterMetricFamily(
            "syncline_events_published", "Changes the durable log holds.", labels=by
        )
        applied = CounterMetricFamily(
            "syncline_events_applied",
            "Changes committed to the target (folded into a later change of the key included).",
            labels=by,
        )
        dead = CounterMetricFamily(
            "syncline_events_dead_lettered", "Changes stored in the dead-letter queue.", labels=by
        )
        p1 = ["pipeline"]
        held = CounterMetricFamily(
            "syncline_events_held", "Changes stored behind a dead-lettered key.", labels=p1
        )
        replayed = CounterMetricFamily(
            "syncline_events_replayed", "Dead-letter entries applied by a replay.", labels=p1
        )
        batches = CounterMetricFamily("syncline_batches", "Batches applied.", labels=p1)
        retries = CounterMetricFamily(
            "syncline_retries", "Retries after transient or permanent failures.", labels=p1
        )
        conflicts = CounterMetricFamily(
            "syncline_conflicts", "Changes that met a conflict rule in the sink.", labels=p1
        )
        mon_dropped = CounterMetricFamily(
            "syncline_monitoring_dropped",
            "Monitoring records dropped because the monitoring queue was full.",
            labels=p1,
        )
        dlq_open = GaugeMetricFamily(
            "syncline_dlq_open", "Dead-letter entries not yet replayed.", labels=p1
        )
        snap_rows = GaugeMetricFamily(
            "syncline_snapshot_rows", "Rows read by the running initial snapshot.", labels=p1
        )
        snap_total = GaugeMetricFamily(
            "syncline_snapshot_rows_estimated",
            "Estimated rows of the snapshot's current table (absent when unknown).",
            labels=p1,
        )
        state = GaugeMetricFamily(
            "syncline_pipeline_state", "1 for the pipeline's current state.", labels=[*p1, "state"]
        )
        wal = GaugeMetricFamily(
            "syncline_slot_retained_wal_bytes",
            "WAL the source's replication slot holds back.",
            labels=[*p1, "slot"],
        )
        lag = GaugeMetricFamily(
            "syncline_transport_lag_events",
            "Records in the log not yet applied (end offset - applied offset), per partition.",
            labels=[*p1, "partition"],
        )
        latency = HistogramMetricFamily(
            "syncline_apply_latency_seconds",
            "Source commit to target commit, per change (snapshot reads excluded).",
            labels=p1,
        )
        for p in self._pipelines():
            s = p.stats
            name = p.name
            for family, counts in (
                (captured, s.captured_by),
                (published, s.published_by),
                (applied, s.applied_by),
                (dead, s.dead_lettered_by),
            ):
                for (table, op), n in dict(counts).items():
                    family.add_metric([name, table, op], n)
            held.add_metric([name], s.held)
            replayed.add_metric([name], s.replayed)
            batches.add_metric([name], s.batches)
            retries.add_metric([name], s.retries)
            conflicts.add_metric([name], s.conflicts)
            mon_dropped.add_metric([name], s.monitoring_dropped + s.monitoring_dropped_child)
            dlq_open.add_metric([name], s.dlq_open)
            snap_rows.add_metric([name], s.snapshot_rows)
            if s.snapshot_total is not None:
                snap_total.add_metric([name], s.snapshot_total)
            for st in STATES:
                state.add_metric([name, st], 1.0 if s.state == st else 0.0)
            slot = _slot_name(p)
            if slot is not None and s.slot_retained_wal_bytes is not None:
                wal.add_metric([name, slot], s.slot_retained_wal_bytes)
            for part, behind in self._lag(p).items():
                lag.add_metric([name, str(part)], behind)
            counts_, total_ms, count = s.latency_hist.snapshot()
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, n in zip(s.latency_hist.bounds, counts_, strict=False):
                cumulative += n
                buckets.append((_le(bound / 1000.0), cumulative))
            buckets.append(("+Inf", count))
            latency.add_metric([name], buckets, total_ms / 1000.0)
        yield from (
            captured, published, applied, dead, held, replayed, batches, retries, conflicts,
            mon_dropped, dlq_open, snap_rows, snap_total, state, wal, lag, latency,
        )  # fmt: skip

    @staticmethod
    def _lag(p: Pipeline) -> dict[int, int]:
        """Per partition this process applies: records in the log past the applied offset."""
        if not p.applies:
            return {}
        try:
            ends = p.transport.end_offsets()
        except SynclineError:
            return {}
        applied = p.applied_end
        owned = p.owned
        return {
            part: max(0, end - applied.get(part, 0))
            for part, end in ends.items()
            if owned is None or part in owned
        }


def _le(seconds: float) -> str:
    return f"{seconds:g}" if seconds < 1 else f"{seconds:.1f}"


def build_registry(pipelines: PipelinesFn) -> CollectorRegistry:
    """A registry with the pipelines' metrics (and nothing process-global)."""
    client = _client()
    registry: CollectorRegistry = client.CollectorRegistry(auto_describe=False)
    registry.register(PipelineCollector(pipelines))
    return registry


def asgi_app(registry: CollectorRegistry) -> Any:
    """An ASGI app serving ``registry`` in the text format (mount it at ``/metrics``)."""
    return _client().make_asgi_app(registry)


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition of ``registry`` (for tests and one-off dumps)."""
    data: bytes = _client().generate_latest(registry)
    return data


class MetricsServer:
    """prometheus_client's own HTTP server on HOST:PORT, in a daemon thread."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        client = _client()
        try:
            self._server, self._thread = client.start_http_server(port, host, registry=registry)
        except OSError as exc:
            raise ConfigError(f"--metrics {host}:{port}: cannot listen: {exc.strerror}") from exc
        self.host = host
        self.port = self._server.server_address[1]
        log.info("metrics at http://%s:%d/metrics", host, self.port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve_metrics(pipelines: PipelinesFn, listen: str) -> MetricsServer:
    """Start ``/metrics`` for ``pipelines`` on ``listen`` (``HOST:PORT``)."""
    from syncline.config import parse_listen

    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        raise ConfigError(f"--metrics: {exc}") from None
    return MetricsServer(build_registry(pipelines), host, port)
