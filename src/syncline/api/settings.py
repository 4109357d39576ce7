"""Where the management API listens and who may call it (no web framework imported here).

Tokens come from the config (``api.tokens``: a literal ``token`` or a variable named
by ``token_env``) and from ``SYNCLINE_API_TOKENS`` (``name:role:token,…``). Without
any token the API is open to whoever can reach it, so it may then listen only on a
loopback address.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from syncline.config import ApiConfig
from syncline.errors import ConfigError

ROLES = ("viewer", "operator", "admin")  # each role may do what the ones before it may
ENV_TOKENS = "SYNCLINE_API_TOKENS"
MIN_TOKEN_LENGTH = 16
DEFAULT_LISTEN = "127.0.0.1:8083"


@dataclass(frozen=True, slots=True)
class Token:
    name: str
    role: str
    value: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class ApiSettings:
    host: str
    port: int
    tokens: tuple[Token, ...] = ()
    audit_log: Path = Path("./.syncline/audit.log")

    @property
    def open_access(self) -> bool:
        """No tokens: every caller (on loopback only) acts as admin."""
        return not self.tokens

    @property
    def secrets(self) -> set[str]:
        return {t.value for t in self.tokens}


def role_at_least(role: str, needed: str) -> bool:
    return ROLES.index(role) >= ROLES.index(needed)


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:8083`` for IPv6; port 0 picks a free one) → (host, port)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not host:port (e.g. 127.0.0.1:8083)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"{text!r} has a bad port {port!r}") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"{text!r}: port must be between 0 and 65535")
    return host, number


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_value(name: str, value: str, where: str) -> str:
    if len(value) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"API token {name} ({where}) is shorter than {MIN_TOKEN_LENGTH} characters; "
            "use a long random one, e.g. from: python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'"
        )
    return value


def _env_tokens(text: str) -> list[Token]:
    out = []
    for i, item in enumerate(p.strip() for p in text.split(",")):
        if not item:
            continue
        name, _, rest = item.partition(":")
        role, _, value = rest.partition(":")
        if not name or not value:
            raise ConfigError(f"{ENV_TOKENS}: entry {i + 1} is not name:role:token")
        if role not in ROLES:
            raise ConfigError(
                f"{ENV_TOKENS}: token {name} has role {role!r}; expected one of {', '.join(ROLES)}"
            )
        out.append(Token(name, role, _check_value(name, value, ENV_TOKENS)))
    return out


def resolve_settings(
    cfg: ApiConfig | None, listen: str | None = None, env: Mapping[str, str] | None = None
) -> ApiSettings | None:
    """The API's settings, or None when neither the config nor ``--api`` asks for it."""
    if cfg is None and listen is None:
        return None
    env = os.environ if env is None else env
    cfg = cfg or ApiConfig()
    try:
        host, port = parse_listen(listen or cfg.listen)
    except ValueError as exc:
        raise ConfigError(f"--api: {exc}") from None
    tokens: list[Token] = []
    for t in cfg.tokens:
        if t.token_env is not None:
            if not env.get(t.token_env):
                raise ConfigError(
                    f"api.tokens: token {t.name} reads environment variable {t.token_env}, "
                    "which is not set"
                )
            value = env[t.token_env]
        else:
            value = t.token or ""
        tokens.append(Token(t.name, t.role, _check_value(t.name, value, "api.tokens")))
    tokens += _env_tokens(env.get(ENV_TOKENS, ""))
    names = [t.name for t in tokens]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise ConfigError(f"API token name {dup!r} is used twice (api.tokens, {ENV_TOKENS})")
    values = [t.value for t in tokens]
    if len(set(values)) != len(values):
        raise ConfigError("two API tokens have the same value; give each caller its own token")
    if not tokens and not is_loopback(host):
        raise ConfigError(
            f"the API would listen on {host}:{port} without tokens, open to the network; "
            f"add api.tokens (or {ENV_TOKENS}) or listen on 127.0.0.1"
        )
    return ApiSettings(host, port, tuple(tokens), Path(cfg.audit_log))
