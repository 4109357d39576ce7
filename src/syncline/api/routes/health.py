"""Liveness and readiness, for supervisors and load balancers (no token needed).

Readiness says which pipeline component failed for anyone; the reasons (host
names, error text) only to a caller with a valid token, so an open health port
does not describe the databases behind it.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse

from syncline import __version__
from syncline.api.context import Ctx
from syncline.api.health import readiness
from syncline.api.models import Health

router = APIRouter(tags=["health"])


@router.get("/", include_in_schema=False, response_model=None)
def root(request: Request) -> dict[str, str] | RedirectResponse:
    if "text/html" in request.headers.get("accept", ""):  # a browser: show the dashboard
        return RedirectResponse("/dashboard/", status_code=307)
    return {
        "name": "syncline",
        "version": __version__,
        "api": "/api/v1",
        "docs": "/docs",
        "dashboard": "/dashboard/",
    }


@router.get("/health/live", response_model=Health)
def live() -> Health:
    """The process is up and answering."""
    return Health(status="ok")


@router.get(
    "/health/ready",
    response_model=Health,
    responses={503: {"model": Health, "description": "Not ready: see checks"}},
)
def ready(ctx: Ctx, request: Request) -> JSONResponse:
    """Every pipeline reaches its source, log and sink now, and none has failed."""
    checks = readiness(list(ctx.runtime.pipelines))
    if ctx.auth.identify(request.headers.get("authorization")) is None:
        for c in checks:
            c.detail = None
    ok = all(c.ok for c in checks)
    body = Health(status="ok" if ok else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ok else 503)
