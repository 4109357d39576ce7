"""Changes parked by ``conflict: {strategy: manual}``: list, show, resolve."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter, Query, Request

from syncline.api.auth import requires, set_audit_detail
from syncline.api.context import Ctx
from syncline.api.errors import ApiError
from syncline.api.models import ConflictDetail, ConflictEntry, ResolveRequest, ResolveResult
from syncline.conflicts import Conflict, ConflictStore, open_store
from syncline.pipeline import Pipeline

router = APIRouter(prefix="/api/v1", tags=["conflicts"])


@contextmanager
def _store(p: Pipeline) -> Iterator[ConflictStore]:
    store = open_store(p.cfg)
    try:
        yield store
    finally:
        store.close()


def _entry(c: Conflict) -> dict[str, Any]:
    return {
        "id": c.id,
        "pipeline": c.pipeline,
        "table": c.table,
        "source_table": c.source_table,
        "key": c.key,
        "op": c.op,
        "status": c.status,
        "detected_at": c.detected_at,
        "resolution": c.resolution,
        "resolved_at": c.resolved_at,
    }


def _get(store: ConflictStore, p: Pipeline, conflict_id: int) -> Conflict:
    found = store.get_conflict(conflict_id)
    if found is None or found.pipeline != p.name:
        raise ApiError(404, f"no conflict {conflict_id} in pipeline {p.name}")
    return found


@router.get("/pipelines/{name}/conflicts", response_model=list[ConflictEntry])
@requires("viewer", "conflicts.list")
def list_conflicts(
    name: str,
    ctx: Ctx,
    include_resolved: bool = Query(False, alias="all", description="Include resolved ones."),
) -> list[ConflictEntry]:
    """Parked conflicts of the pipeline (open ones unless all=true)."""
    p = ctx.pipeline(name)
    with _store(p) as store:
        rows = store.list_conflicts(p.name, include_resolved)
    return [ConflictEntry(**_entry(c)) for c in rows]


@router.get("/pipelines/{name}/conflicts/{conflict_id}", response_model=ConflictDetail)
@requires("viewer", "conflicts.show")
def show_conflict(name: str, conflict_id: int, ctx: Ctx) -> ConflictDetail:
    """One conflict: the parked change and the target's row when it was parked."""
    p = ctx.pipeline(name)
    with _store(p) as store:
        c = _get(store, p, conflict_id)
    return ConflictDetail(**_entry(c), incoming=c.incoming, current=c.current)


@router.post("/pipelines/{name}/conflicts/{conflict_id}/resolve", response_model=ResolveResult)
@requires("operator", "conflicts.resolve")
def resolve(
    name: str, conflict_id: int, body: ResolveRequest, ctx: Ctx, request: Request
) -> ResolveResult:
    """Settle with ``incoming`` (apply the parked change, then the key's later parked ones)
    or ``current`` (keep the target's row)."""
    p = ctx.pipeline(name)
    set_audit_detail(request, use=body.use)
    with _store(p) as store:
        _get(store, p, conflict_id)
        ids = store.resolve_conflict(conflict_id, body.use)
    return ResolveResult(id=conflict_id, use=body.use, resolved=ids)
