"""The management API application (FastAPI), built around a running ``Runtime``."""

from __future__ import annotations

from fastapi import Depends, FastAPI
from fastapi.security import HTTPBearer

from syncline import __version__
from syncline.api.audit import AuditLog
from syncline.api.auth import ApiGuard, Authenticator
from syncline.api.context import ApiContext, secrets_of
from syncline.api.errors import install_handlers
from syncline.api.routes import config, conflicts, dashboard, dlq, health, pipelines, session, trace
from syncline.api.settings import ApiSettings
from syncline.runtime import Runtime

DESCRIPTION = """Manage the pipelines of a running `syncline run`: status, pause, resume,
restart, create, update and delete, the dead-letter queue and parked conflicts, traces.
The web dashboard is at `/dashboard/`.

Send `Authorization: Bearer <token>`. Roles: **viewer** reads, **operator** also pauses,
resumes, restarts, replays, purges and resolves, **admin** also creates, updates and
deletes pipelines. Errors are always `{"error": "..."}`. See docs/api.md."""

# Shows the "Authorize" button in /docs; the guard does the checking.
_bearer = HTTPBearer(auto_error=False, description="An API token (api.tokens).")


def create_app(runtime: Runtime, settings: ApiSettings, audit: AuditLog | None = None) -> FastAPI:
    app = FastAPI(
        title="syncline management API",
        version=__version__,
        description=DESCRIPTION,
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    auth = Authenticator(settings)
    audit = audit or AuditLog(settings.audit_log, lambda: secrets_of(runtime, settings))
    ctx = ApiContext(runtime, settings, audit, auth)
    app.state.ctx = ctx
    install_handlers(app, ctx.secrets)
    secured = [Depends(_bearer)]
    app.include_router(health.router)
    secured_modules = (pipelines, dlq, conflicts, config, trace, session)
    for module in secured_modules:
        app.include_router(module.router, dependencies=secured)
    routes = [r for m in secured_modules for r in m.router.routes]
    dashboard.mount(app)
    app.add_middleware(ApiGuard, routes=routes, auth=auth, audit=ctx.audit)
    return app
