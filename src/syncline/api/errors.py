"""One error shape for every failure: ``{"error": "one line"}``, secrets redacted.

Routing errors (404, 405), body and query validation (422), refusals (401, 403)
and syncline's own errors all come out the same way, so a client has one thing
to parse.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from syncline.config import format_errors
from syncline.errors import ConfigError, PermanentError, SynclineError, TransientError
from syncline.redact import redact_text

log = logging.getLogger("syncline.api")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=dict(headers or {}))


def status_for(exc: SynclineError) -> int:
    """ConfigError and permanent errors: the request can't succeed as it is (400);
    transient ones: try again later (503)."""
    if isinstance(exc, TransientError):
        return 503
    if isinstance(exc, ConfigError | PermanentError):
        return 400
    return 500


def validation_message(errors: Iterable[Any]) -> str:
    """Request validation errors in the config file's one-line style."""
    cleaned = []
    for err in errors:
        loc = tuple(err.get("loc", ()))
        if err.get("type") == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", "")
            return f"body: invalid JSON{': ' + str(detail) if detail else ''}"
        if len(loc) > 1 and loc[0] == "body":
            loc = loc[1:]
        cleaned.append({**err, "loc": loc})
    return format_errors(cleaned) or "invalid request"


def install_handlers(app: FastAPI, secrets: Callable[[], Iterable[str]]) -> None:
    def clean(message: str) -> str:
        return redact_text(" ".join(message.split()), secrets())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, clean(str(exc.detail)), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, clean(validation_message(exc.errors())))

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, clean(exc.message))

    @app.exception_handler(SynclineError)
    async def syncline_error(request: Request, exc: SynclineError) -> JSONResponse:
        return error_response(status_for(exc), clean(str(exc)))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("API %s %s: internal error", request.method, request.url.path, exc_info=exc)
        return error_response(500, clean(f"internal error: {type(exc).__name__}: {exc}"))
