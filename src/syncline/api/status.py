"""A pipeline's status as the API reports it: state, counters, position, lag, latency, DLQ."""

from __future__ import annotations

from collections.abc import Iterable

from syncline.api.models import (
    DlqCounts,
    Latency,
    PartitionLag,
    PipelineStatus,
    Snapshot,
    TransportLag,
)
from syncline.dlq import DeadLetterStore, dlq_file
from syncline.errors import SynclineError
from syncline.pipeline import Pipeline
from syncline.redact import redact_config, redact_text


def transport_lag(p: Pipeline, secrets: Iterable[str] = ()) -> TransportLag:
    """Per partition: the log's end offset minus the offset the sink has committed.

    Only the partitions this process applies have a lag (others belong to other
    workers); before the apply worker has settled its partitions, it is unknown.
    """
    try:
        ends = p.transport.end_offsets()
    except SynclineError as exc:
        return TransportLag(total=None, partitions=[], error=redact_text(str(exc), secrets))
    _, apply = p.sides
    owned = p.owned
    applied = p.applied_end
    rows = []
    for partition, end in sorted(ends.items()):
        mine = apply and owned is not None and partition in owned
        done = applied.get(partition, 0) if mine else None
        rows.append(
            PartitionLag(
                partition=partition,
                end_offset=end,
                applied_offset=done,
                lag=max(0, end - done) if done is not None else None,
            )
        )
    lags = [r.lag for r in rows if r.lag is not None]
    return TransportLag(total=sum(lags) if lags else None, partitions=rows)


def _dlq_entries(p: Pipeline) -> dict[str, int]:
    if not p.cfg.dlq.enabled or not dlq_file(p.cfg.dlq_dir, p.name).exists():
        return {}
    try:
        store = DeadLetterStore(p.cfg.dlq_dir, p.name, create=False)
    except SynclineError:
        return {}
    try:
        return store.counts()
    finally:
        store.close()


def pipeline_status(p: Pipeline, role: str, secrets: Iterable[str] = ()) -> PipelineStatus:
    known = tuple(secrets)
    s = p.stats
    p50, p99 = s.latency_percentiles(50, 99)
    owned = p.owned
    return PipelineStatus(
        name=p.name,
        state=s.state,
        error=redact_text(s.error, known) if s.error else None,
        worker_id=p.worker_id,
        role=role,
        captured=s.captured,
        published=s.published,
        applied=s.applied,
        skipped=s.skipped,
        batches=s.batches,
        retries=s.retries,
        source_position=redact_config(dict(s.source_checkpoint), known),
        slot_retained_wal_bytes=s.slot_retained_wal_bytes,
        snapshot=(
            Snapshot(rows=s.snapshot_rows, total=s.snapshot_total)
            if s.state == "snapshot" or s.snapshot_rows
            else None
        ),
        transport_lag=transport_lag(p, known),
        apply_latency=Latency(p50_ms=round(p50, 3), p99_ms=round(p99, 3)),
        dlq=DlqCounts(
            dead_lettered=s.dead_lettered,
            held=s.held,
            replayed=s.replayed,
            open=s.dlq_open,
            entries=_dlq_entries(p),
        ),
        owned_partitions=sorted(owned) if owned is not None else None,
    )
