"""Bearer tokens, roles, and the guard in front of every ``/api/`` route.

Each route declares the least role it needs with ``@requires``; the guard (an
ASGI middleware) finds the route, checks the token and the role *before* the
request body is read, answers 401/403 itself, and writes the audit line for
every mutating call and every refusal. A route without a declaration needs
admin (fail closed).

Tokens are compared as SHA-256 digests with ``hmac.compare_digest``, against
every configured token without stopping at a match, so timing tells nothing
about a token's value or length.

Without tokens (loopback only) every caller is admin; the guard then also refuses
requests whose Host is not a loopback name (DNS rebinding) and cross-origin
requests (a web page posting to 127.0.0.1).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from syncline.api.audit import AuditLog
from syncline.api.errors import error_response
from syncline.api.settings import ApiSettings, is_loopback, role_at_least

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: str


@dataclass(frozen=True, slots=True)
class Rule:
    role: str
    action: str
    audited: bool


def requires(role: str, action: str, *, audited: bool | None = None) -> Callable[[F], F]:
    """Declare a route's least role and its action name (audited unless viewer-only)."""
    rule = Rule(role, action, role != "viewer" if audited is None else audited)

    def mark(fn: F) -> F:
        fn.__syncline_rule__ = rule  # type: ignore[attr-defined]
        return fn

    return mark


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8")).digest()


class Authenticator:
    def __init__(self, settings: ApiSettings) -> None:
        self.open_access = settings.open_access
        self._tokens = [(_digest(t.value), Principal(t.name, t.role)) for t in settings.tokens]

    def identify(self, authorization: str | None) -> Principal | None:
        """The caller behind an ``Authorization`` header (None: missing or unknown token)."""
        if self.open_access:
            return Principal("local", "admin")
        scheme, _, credential = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            return None
        presented = _digest(credential.strip())
        found = None
        for digest, principal in self._tokens:
            if hmac.compare_digest(digest, presented):
                found = principal
        return found


def principal_of(request: Request) -> Principal:
    """The caller the guard let in (routes under /api/ only)."""
    principal = request.scope.get("state", {}).get("principal")
    if not isinstance(principal, Principal):  # pragma: no cover - the guard always sets it
        raise RuntimeError("route reached without the API guard")
    return principal


def set_audit_detail(request: Request, **detail: Any) -> None:
    """What the audit line should say beyond the route (ids, choices)."""
    request.scope.setdefault("state", {}).setdefault("audit_detail", {}).update(detail)


_ADMIN = Rule("admin", "unknown", True)


class ApiGuard:
    """ASGI middleware: authentication, authorization and audit for ``/api/`` (and, without
    tokens, the local-only checks for every path)."""

    def __init__(
        self, app: ASGIApp, *, routes: Sequence[BaseRoute], auth: Authenticator, audit: AuditLog
    ) -> None:
        self.app = app
        self.routes = routes  # the API's own routes, each marked by @requires
        self.auth = auth
        self.audit = audit

    def _match(self, scope: Scope) -> tuple[Rule | None, dict[str, Any]]:
        for route in self.routes:
            match, child = route.matches(scope)
            if match == Match.FULL:
                endpoint = getattr(route, "endpoint", None)
                rule = getattr(endpoint, "__syncline_rule__", _ADMIN)
                return rule, dict(child.get("path_params", {}))
        return None, {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if not scope["path"].startswith("/api/"):
            problem = _not_local(request) if self.auth.open_access else None
            if problem:  # health details and docs too stay out of a rebinding page's reach
                await error_response(403, problem)(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        rule, params = self._match(scope)
        action = rule.action if rule else f"{scope['method']} {scope['path']}"
        client = scope.get("client")
        remote = f"{client[0]}:{client[1]}" if client else None
        target = _target(params)

        def refuse(status: int, message: str, principal: Principal | None) -> Any:
            self.audit.record(
                token=principal.name if principal else None,
                role=principal.role if principal else None,
                action=action,
                target=target,
                outcome="refused",
                status=status,
                remote=remote,
                error=message,
            )
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            return error_response(status, message, headers)

        if self.auth.open_access:
            problem = _not_local(request)
            if problem:
                await refuse(403, problem, None)(scope, receive, send)
                return
        principal = self.auth.identify(request.headers.get("authorization"))
        if principal is None:
            message = (
                "invalid API token"
                if request.headers.get("authorization")
                else "missing API token (send Authorization: Bearer <token>)"
            )
            await refuse(401, message, None)(scope, receive, send)
            return
        if rule is not None and not role_at_least(principal.role, rule.role):
            message = (
                f"{action} needs role {rule.role}; token {principal.name} has {principal.role}"
            )
            await refuse(403, message, principal)(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["principal"] = principal
        if rule is None or not rule.audited:
            await self.app(scope, receive, send)
            return

        seen: dict[str, Any] = {"status": 500, "body": b""}

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            elif message["type"] == "http.response.body" and seen["status"] >= 400:
                seen["body"] = (seen["body"] + message.get("body", b""))[:4096]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            status = int(seen["status"])
            detail = {**params, **state.get("audit_detail", {})}
            self.audit.record(
                token=principal.name,
                role=principal.role,
                action=action,
                target=_target(detail),
                outcome="ok" if status < 400 else "failed",
                status=status,
                remote=remote,
                error=_error_of(seen["body"]) if status >= 400 else None,
                detail={k: v for k, v in detail.items() if k != "name"} or None,
            )


def _target(params: dict[str, Any]) -> str | None:
    name = params.get("name")
    return f"pipeline {name}" if name else None


def _error_of(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")[:300] or None
    return str(data.get("error")) if isinstance(data, dict) else None


def _not_local(request: Request) -> str | None:
    host = (request.headers.get("host") or "").strip()
    hostname = urlsplit(f"//{host}").hostname or ""
    if not is_loopback(hostname):
        return f"Host {host!r} refused: without API tokens only loopback names are served"
    origin = request.headers.get("origin")
    if origin and urlsplit(origin).netloc != host:
        return "cross-origin request refused (the API has no tokens configured)"
    return None
