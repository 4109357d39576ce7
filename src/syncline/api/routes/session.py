"""Who the caller is: the dashboard shows it and tells which actions the token allows."""

from __future__ import annotations

from fastapi import APIRouter, Request

from syncline.api.auth import principal_of, requires
from syncline.api.context import Ctx
from syncline.api.models import Caller

router = APIRouter(prefix="/api/v1", tags=["session"])


@router.get("/whoami", response_model=Caller)
@requires("viewer", "whoami")
def whoami(request: Request, ctx: Ctx) -> Caller:
    """The token's name and role (``open_access``: the API has no tokens, everyone is admin)."""
    p = principal_of(request)
    return Caller(name=p.name, role=p.role, open_access=ctx.auth.open_access)
