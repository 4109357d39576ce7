"""What every route needs: the runtime it manages, the settings, the audit log."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from syncline.api.audit import AuditLog
from syncline.api.auth import Authenticator
from syncline.api.errors import ApiError
from syncline.api.settings import ApiSettings
from syncline.pipeline import Pipeline
from syncline.redact import dsn_passwords
from syncline.runtime import Runtime


def secrets_of(runtime: Runtime, settings: ApiSettings) -> set[str]:
    """Values never to show: API tokens and the passwords in every pipeline's DSNs."""
    dsns = [
        dsn
        for p in runtime.pipelines
        for dsn in (getattr(p.cfg.source, "dsn", None), getattr(p.cfg.sink, "dsn", None))
        if isinstance(dsn, str)
    ]
    return settings.secrets | dsn_passwords(dsns)


@dataclass
class ApiContext:
    runtime: Runtime
    settings: ApiSettings
    audit: AuditLog
    auth: Authenticator

    def secrets(self) -> set[str]:
        return secrets_of(self.runtime, self.settings)

    def pipeline(self, name: str) -> Pipeline:
        p = self.runtime.find(name)
        if p is None:
            raise ApiError(404, f"no pipeline named {name!r}")
        return p


def _context(request: Request) -> ApiContext:
    ctx = request.app.state.ctx
    assert isinstance(ctx, ApiContext)
    return ctx


Ctx = Annotated[ApiContext, Depends(_context)]
