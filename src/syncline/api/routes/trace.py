"""Where is the change to a key? The monitoring store's stage records (``syncline trace``).

``syncline.monitoring`` is imported when called: the API works without it, and the
endpoint then says how to turn monitoring on instead of failing.
"""

from __future__ import annotations

import importlib
import json
from typing import Any

from fastapi import APIRouter, Query

from syncline.api.auth import requires
from syncline.api.context import ApiContext, Ctx
from syncline.api.errors import ApiError
from syncline.api.models import TraceEntry

router = APIRouter(prefix="/api/v1", tags=["trace"])


def _monitoring(ctx: ApiContext, name: str) -> tuple[Any, Any]:
    """The trace module and the runtime's monitoring config, or a 404/409 saying what to set."""
    message = f"monitoring is not enabled for pipeline {name} (set monitoring.enabled: true)"
    try:
        module = importlib.import_module("syncline.monitoring.trace")
    except ImportError:
        raise ApiError(404, message) from None
    cfg = getattr(getattr(ctx.runtime, "monitor", None), "cfg", None)
    if cfg is None or not getattr(cfg, "enabled", False):
        raise ApiError(409, message)
    return module, cfg


def _key(text: str) -> dict[str, Any]:
    try:
        key = json.loads(text)
    except ValueError:
        key = None
    if not isinstance(key, dict) or not key:
        raise ApiError(422, 'key: expected the primary key as a JSON object, e.g. {"id": 5}')
    return key


@router.get("/pipelines/{name}/trace", response_model=list[TraceEntry])
@requires("viewer", "pipeline.trace")
def trace(
    name: str,
    ctx: Ctx,
    table: str = Query(..., min_length=1, description="Source table: schema.table or its name."),
    key: str = Query(..., min_length=2, description='Primary key as JSON, e.g. {"id": 5}.'),
    limit: int = Query(20, ge=1, le=500),
) -> list[TraceEntry]:
    """The recorded changes of one key, newest first, each with its stages (committed,
    captured, published, applied) or the failure that stopped it."""
    p = ctx.pipeline(name)
    module, cfg = _monitoring(ctx, p.name)
    records = module.find(cfg, table=table, key=_key(key), pipeline=p.name, limit=limit)
    return [TraceEntry(**r.to_dict()) for r in records]
