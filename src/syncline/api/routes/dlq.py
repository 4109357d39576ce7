"""A pipeline's dead-letter queue: list, show, replay, purge.

As with ``syncline dlq``, the API only marks entries; the pipeline's apply worker
replays them between its batches. ``wait`` makes a replay wait for the outcome.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter, Query, Request

from syncline.api.auth import requires, set_audit_detail
from syncline.api.context import Ctx
from syncline.api.errors import ApiError
from syncline.api.models import (
    DeadLetterDetail,
    DeadLetterEntry,
    PurgeRequest,
    PurgeResult,
    ReplayOutcome,
    ReplayRequest,
    ReplayResult,
)
from syncline.dlq import (
    DEAD,
    OPEN_STATUSES,
    REPLAY,
    REPLAYED,
    REPLAYING,
    DeadLetter,
    DeadLetterStore,
    dlq_file,
)
from syncline.errors import ConfigError
from syncline.pipeline import Pipeline

router = APIRouter(prefix="/api/v1", tags=["dead-letter queue"])

STATUSES = ("open", "all", *OPEN_STATUSES, REPLAYED)


@contextmanager
def _store(p: Pipeline) -> Iterator[DeadLetterStore | None]:
    """The pipeline's queue file, None if nothing was ever dead-lettered."""
    if not p.cfg.dlq.enabled:
        raise ApiError(400, f"pipeline {p.name} has the dead-letter queue disabled (dlq.enabled)")
    if not dlq_file(p.cfg.dlq_dir, p.name).exists():
        yield None
        return
    store = DeadLetterStore(p.cfg.dlq_dir, p.name, create=False)
    try:
        yield store
    finally:
        store.close()


def _table(p: Pipeline, table: str | None) -> str | None:
    if table is None or "." in table:
        return table
    return f"{'main' if p.cfg.source.kind == 'sqlite' else 'public'}.{table}"


def _entry(e: DeadLetter) -> dict[str, Any]:
    return {
        "id": e.id,
        "pipeline": e.pipeline,
        "partition": e.partition,
        "offset": e.offset,
        "table": e.source_table,
        "key": e.key_text,
        "status": e.status,
        "error_class": e.error_class,
        "error": e.error,
        "attempts": e.attempts,
        "blocked_by": e.blocked_by,
        "first_failed_at": e.first_failed_at,
        "last_failed_at": e.last_failed_at,
        "updated_at": e.updated_at,
    }


def _get(store: DeadLetterStore | None, p: Pipeline, entry_id: int) -> DeadLetter:
    try:
        if store is not None:
            return store.get(entry_id)
    except ConfigError:
        pass
    raise ApiError(404, f"no dead-letter entry {entry_id} in pipeline {p.name}")


@router.get("/pipelines/{name}/dlq", response_model=list[DeadLetterEntry])
@requires("viewer", "dlq.list")
def list_entries(
    name: str,
    ctx: Ctx,
    table: str | None = Query(None, description="Only entries of this source table."),
    status: str = Query("open", description=f"One of {', '.join(STATUSES)}."),
    limit: int = Query(100, ge=1, le=10_000),
) -> list[DeadLetterEntry]:
    """Dead-lettered and held events, oldest first."""
    p = ctx.pipeline(name)
    if status not in STATUSES:
        raise ApiError(422, f"status: expected one of {', '.join(STATUSES)}, not {status!r}")
    statuses = {"open": OPEN_STATUSES, "all": (*OPEN_STATUSES, REPLAYED)}.get(status, (status,))
    with _store(p) as store:
        if store is None:
            return []
        rows = store.entries(statuses=statuses, table=_table(p, table), limit=limit)
    return [DeadLetterEntry(**_entry(e)) for e in rows]


@router.get("/pipelines/{name}/dlq/{entry_id}", response_model=DeadLetterDetail)
@requires("viewer", "dlq.show")
def show_entry(name: str, entry_id: int, ctx: Ctx) -> DeadLetterDetail:
    """One entry with its original event."""
    p = ctx.pipeline(name)
    with _store(p) as store:
        e = _get(store, p, entry_id)
    try:
        event: Any = json.loads(e.value)
    except ValueError:
        event = e.value.decode("utf-8", "replace")  # the undecodable event itself
    return DeadLetterDetail(**_entry(e), event=event)


def _chosen(
    store: DeadLetterStore, p: Pipeline, ids: list[int] | None, all_: bool, table: str | None
) -> list[int]:
    if ids and (all_ or table):
        raise ApiError(422, "give ids, or all / table, not both")
    if ids:
        for i in ids:
            _get(store, p, i)
        return ids
    if not (all_ or table):
        raise ApiError(422, "say which entries: ids, table or all: true")
    return [e.id for e in store.entries(statuses=(DEAD,), table=_table(p, table))]


@router.post("/pipelines/{name}/dlq/replay", response_model=ReplayResult)
@requires("operator", "dlq.replay")
def replay(name: str, body: ReplayRequest, ctx: Ctx, request: Request) -> ReplayResult:
    """Apply dead entries again (with the events held behind them), per key in log order.

    Fix the cause first. A running pipeline applies them between batches; otherwise
    they are applied when it next runs.
    """
    p = ctx.pipeline(name)
    set_audit_detail(request, **body.model_dump(exclude_defaults=True))
    with _store(p) as store:
        if store is None:
            if body.ids:
                raise ApiError(404, f"no dead-letter entry {body.ids[0]} in pipeline {p.name}")
            return ReplayResult(queued=[], worker_running=False, entries=[])
        queued = store.request_replay(_chosen(store, p, body.ids, body.all, body.table))
        running = store.worker_running()
        deadline = time.monotonic() + body.wait
        outcome = [store.get(i) for i in queued]
        while (
            running
            and time.monotonic() < deadline
            and any(e.status in (REPLAY, REPLAYING) for e in outcome)
        ):
            time.sleep(0.1)
            outcome = [store.get(i) for i in queued]
            running = store.worker_running()
    set_audit_detail(request, queued=queued)
    return ReplayResult(
        queued=queued,
        worker_running=running,
        entries=[
            ReplayOutcome(id=e.id, status=e.status, error=e.error if e.status == DEAD else None)
            for e in outcome
        ],
    )


@router.post("/pipelines/{name}/dlq/purge", response_model=PurgeResult)
@requires("operator", "dlq.purge")
def purge(name: str, body: PurgeRequest, ctx: Ctx, request: Request) -> PurgeResult:
    """Drop entries without applying them; events held behind a dropped one are then applied."""
    p = ctx.pipeline(name)
    set_audit_detail(request, **body.model_dump(exclude_defaults=True))
    with _store(p) as store:
        if body.replayed:
            if body.ids or body.all or body.table:
                raise ApiError(422, "replayed takes no ids, all or table")
            return PurgeResult(deleted=store.purge_replayed() if store else 0, released=[])
        if body.ids and (body.all or body.table):
            raise ApiError(422, "give ids, or all / table, not both")
        if not (body.ids or body.all or body.table):
            raise ApiError(422, "say which entries: ids, table or all: true")
        if store is None:
            if body.ids:
                raise ApiError(404, f"no dead-letter entry {body.ids[0]} in pipeline {p.name}")
            return PurgeResult(deleted=0, released=[])
        if body.ids:
            for i in body.ids:
                _get(store, p, i)
        chosen = body.ids or [e.id for e in store.entries(table=_table(p, body.table))]
        deleted, released = store.purge(chosen)
    return PurgeResult(deleted=deleted, released=released)
