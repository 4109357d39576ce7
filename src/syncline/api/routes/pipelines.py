"""Pipelines: list, show, status, create, update, delete, pause, resume, restart.

Changes made here live in the running process only: the config file stays the
source of truth and is never rewritten (it may hold ``${VAR}`` references that
must not be resolved to disk). See docs/api.md.
"""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response

from syncline.api.auth import requires, set_audit_detail
from syncline.api.context import ApiContext, Ctx
from syncline.api.errors import ApiError, status_for
from syncline.api.models import ActionResult, Deleted, PipelineInfo, PipelineStatus, PipelineSummary
from syncline.api.status import pipeline_status
from syncline.config import PipelineConfig
from syncline.errors import SynclineError
from syncline.pipeline import Pipeline
from syncline.redact import dsn_passwords, redact_config, redact_text

router = APIRouter(prefix="/api/v1", tags=["pipelines"])

CheckParam = Query(
    True, description="Connect to the source, log and sink first (as syncline run does)."
)


def _info(ctx: ApiContext, p: Pipeline) -> PipelineInfo:
    config = redact_config(p.cfg.model_dump(mode="json"), ctx.secrets())
    return PipelineInfo(name=p.name, state=p.stats.state, config=config)


def _build(ctx: ApiContext, cfg: PipelineConfig, check: bool) -> Pipeline:
    """A checked pipeline for ``cfg``; errors redacted with the body's own passwords too."""
    try:
        return ctx.runtime.build(cfg, check=check)
    except SynclineError as exc:
        dsns = [getattr(cfg.source, "dsn", ""), getattr(cfg.sink, "dsn", "")]
        secrets = ctx.secrets() | dsn_passwords(d for d in dsns if d)
        raise ApiError(status_for(exc), redact_text(str(exc), secrets)) from None


@router.get("/pipelines", response_model=list[PipelineSummary])
@requires("viewer", "pipeline.list")
def list_pipelines(ctx: Ctx) -> list[PipelineSummary]:
    secrets = ctx.secrets()
    return [
        PipelineSummary(
            name=p.name,
            state=p.stats.state,
            error=redact_text(p.stats.error, secrets) if p.stats.error else None,
            source=p.cfg.source.kind,
            sink=p.cfg.sink.kind,
        )
        for p in ctx.runtime.pipelines
    ]


@router.post("/pipelines", status_code=201, response_model=PipelineInfo)
@requires("admin", "pipeline.create")
def create_pipeline(
    body: PipelineConfig, ctx: Ctx, request: Request, check: bool = CheckParam
) -> PipelineInfo:
    """Validate the pipeline config, check its connections, and start it."""
    set_audit_detail(request, name=body.name)
    with ctx.runtime.lock:
        if ctx.runtime.find(body.name) is not None:
            raise ApiError(
                409,
                f"pipeline {body.name} exists; PUT /api/v1/pipelines/{body.name} replaces it",
            )
        p = _build(ctx, body, check)
        ctx.runtime.add(p)
    return _info(ctx, p)


@router.get("/pipelines/{name}", response_model=PipelineInfo)
@requires("viewer", "pipeline.show")
def get_pipeline(name: str, ctx: Ctx) -> PipelineInfo:
    return _info(ctx, ctx.pipeline(name))


@router.put(
    "/pipelines/{name}",
    response_model=PipelineInfo,
    responses={201: {"model": PipelineInfo, "description": "Created"}},
)
@requires("admin", "pipeline.update")
def put_pipeline(
    name: str, body: PipelineConfig, ctx: Ctx, response: Response, check: bool = CheckParam
) -> PipelineInfo:
    """Replace the pipeline's config: stop it (draining), then start the new one.

    Creates the pipeline if there is none of that name.
    """
    if body.name != name:
        raise ApiError(422, f"name: {body.name!r} in the body differs from {name!r} in the path")
    with ctx.runtime.lock:
        existed = ctx.runtime.find(name) is not None
        p = _build(ctx, body, check)
        ctx.runtime.replace(p)
    response.status_code = 200 if existed else 201
    return _info(ctx, p)


@router.delete("/pipelines/{name}", response_model=Deleted)
@requires("admin", "pipeline.delete")
def delete_pipeline(name: str, ctx: Ctx) -> Deleted:
    """Drain and stop the pipeline and forget it; its log, slot and target positions stay."""
    with ctx.runtime.lock:
        ctx.pipeline(name)
        ctx.runtime.remove(name)
    return Deleted(name=name, deleted=True)


@router.get("/pipelines/{name}/status", response_model=PipelineStatus)
@requires("viewer", "pipeline.status")
def get_status(name: str, ctx: Ctx) -> PipelineStatus:
    return pipeline_status(ctx.pipeline(name), ctx.runtime.role, ctx.secrets())


def _action(ctx: Ctx, name: str, what: str, message: str) -> ActionResult:
    with ctx.runtime.lock:
        ctx.pipeline(name)
        p = getattr(ctx.runtime, what)(name)
    assert isinstance(p, Pipeline)
    return ActionResult(name=name, state=p.stats.state, message=message)


@router.post("/pipelines/{name}/pause", response_model=ActionResult)
@requires("operator", "pipeline.pause")
def pause(name: str, ctx: Ctx) -> ActionResult:
    """Stop capturing and applying; positions are kept, nothing is lost or repeated."""
    return _action(ctx, name, "pause", "paused: capture and apply stopped, positions kept")


@router.post("/pipelines/{name}/resume", response_model=ActionResult)
@requires("operator", "pipeline.resume")
def resume(name: str, ctx: Ctx) -> ActionResult:
    """Go on from the kept positions (also restarts a failed pipeline)."""
    return _action(ctx, name, "resume", "resumed from the stored positions")


@router.post("/pipelines/{name}/restart", response_model=ActionResult)
@requires("operator", "pipeline.restart")
def restart(name: str, ctx: Ctx, request: Request) -> ActionResult:
    """Stop the workers and start them again (fresh connections, same positions)."""
    set_audit_detail(request, previous_state=ctx.pipeline(name).stats.state)
    return _action(ctx, name, "restart", "restarted from the stored positions")
