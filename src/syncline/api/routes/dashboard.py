"""Serves the dashboard's static files at ``/dashboard/`` (no token: the page holds none;
every call it makes to ``/api/`` carries the token the user types in)."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from syncline.dashboard import STATIC_DIR

PATH = "/dashboard"

# Only this origin's own files and API; no framing (clickjacking), no inline script.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # a new syncline version's files are picked up at once
}


class _DashboardFiles(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        return response


def mount(app: FastAPI) -> None:
    app.mount(PATH, _DashboardFiles(directory=STATIC_DIR, html=True), name="dashboard")
