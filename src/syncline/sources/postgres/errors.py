"""psycopg2 errors → syncline errors, translated once, in one actionable line.

libpq reports connection failures as ``OperationalError`` with only a message
(no SQLSTATE), so the kind is recognised from the text. Messages name host,
port, user and pipeline but never the password.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from syncline.errors import (
    AuthError,
    ConfigError,
    ConnectError,
    PermanentError,
    SchemaError,
    SynclineError,
    TransientError,
)
from syncline.sources.postgres.values import CANONICAL_OPTIONS

CONNECT_TIMEOUT = 10


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a DSN points, for messages (the password is kept only to scrub it)."""

    dsn: str
    host: str
    port: int
    dbname: str
    user: str
    pipeline: str
    password: str = ""
    label: str = ""  # what the DSN is for, when it is not a pipeline's source (CLI --dsn)

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def role(self) -> str:
        return self.label or f"source of pipeline {self.pipeline}"

    def scrub(self, text: str) -> str:
        first = text.strip().splitlines()[0] if text.strip() else "unknown error"
        return first.replace(self.password, "***") if self.password else first


def endpoint(dsn: str, pipeline: str, label: str = "") -> Endpoint:
    what = f"the {label}" if label else f"the source dsn of pipeline {pipeline}"
    try:
        parts = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.Error:
        raise ConfigError(
            f"{what} is not a valid PostgreSQL connection string "
            "(expected postgresql://user:password@host:port/dbname)"
        ) from None
    host = parts.get("host") or "localhost"
    port = parts.get("port") or "5432"
    try:
        port_no = int(port)
    except ValueError:
        raise ConfigError(f"{what} has a bad port {port!r}") from None
    return Endpoint(
        dsn=dsn,
        host=host,
        port=port_no,
        dbname=parts.get("dbname") or parts.get("user") or "postgres",
        user=parts.get("user") or "postgres",
        pipeline=pipeline,
        password=parts.get("password") or "",
        label=label,
    )


_UNREACHABLE = (
    ("connection refused", "connection refused"),
    ("could not translate host name", "unknown host"),
    ("name or service not known", "unknown host"),
    ("timeout expired", "timed out"),
    ("no route to host", "no route to host"),
    ("network is unreachable", "network unreachable"),
    ("no such file or directory", "no server socket"),
)


def unreachable(message: str) -> str | None:
    """Why libpq could not reach the server (its messages carry no SQLSTATE), or None."""
    low = message.lower()
    for needle, why in _UNREACHABLE:
        if needle in low:
            return why
    return None


def translate(exc: BaseException, ep: Endpoint, doing: str = "") -> SynclineError:
    """Map a driver exception to the syncline error a user can act on."""
    raw = str(exc)
    low = raw.lower()
    where, role = ep.where, ep.role
    if "password authentication failed" in low or "no password supplied" in low:
        return AuthError(
            f"password authentication failed for user {ep.user} at {where} ({role}); "
            "check the user and password in the source dsn"
        )
    if 'role "' in low and "does not exist" in low:
        return AuthError(
            f"user {ep.user} does not exist at {where} ({role}); fix the user in the source dsn"
        )
    if "no pg_hba.conf entry" in low:
        return AuthError(
            f"server at {where} does not allow user {ep.user} to connect to {ep.dbname} "
            f"(no pg_hba.conf entry; {role})"
        )
    if "must be superuser or replication role" in low or "permission denied to start" in low:
        return AuthError(
            f"user {ep.user} may not use replication at {where}: "
            f"ALTER ROLE {ep.user} REPLICATION ({role})"
        )
    if "requires wal_level" in low:
        return SchemaError(
            f"logical decoding is off at {where}: set wal_level=logical and restart PostgreSQL ({role})"
        )
    if 'database "' in low and "does not exist" in low:
        return ConfigError(
            f"database {ep.dbname} does not exist at {where} ({role}); create it or fix the "
            "source dsn"
        )
    why = unreachable(low)
    if why is not None:
        return ConnectError(
            f"cannot connect to PostgreSQL at {where}: {why} ({role}); check the host and "
            "port in the source dsn and that the server is running"
        )
    if "invalid byte sequence for encoding" in low:
        return PermanentError(
            f"{doing or 'reading'} failed at {where}: {ep.scrub(raw)}: database {ep.dbname} holds "
            f"text that is not valid UTF-8 (a SQL_ASCII database?) and syncline reads UTF-8 "
            f"only; see docs/reliability.md, bad input ({role})"
        )
    if "is active for pid" in low:
        return TransientError(
            f"{ep.scrub(raw)} at {where}: another capture process is using the slot ({role})"
        )
    if isinstance(exc, psycopg2.errors.UndefinedTable | psycopg2.errors.UndefinedColumn):
        return SchemaError(f"{ep.scrub(raw)} in {ep.dbname} at {where} ({role})")
    if isinstance(exc, psycopg2.errors.InsufficientPrivilege):
        return AuthError(f"{ep.scrub(raw)} for user {ep.user} at {where} ({role})")
    # A bare DatabaseError without SQLSTATE comes from libpq, not the server: the
    # replication stream ended under us (a server shutdown sends CopyDone, then psycopg2
    # says "no COPY in progress" or "error with status PGRES_COPY_BOTH ...").
    bare = type(exc) is psycopg2.DatabaseError and not getattr(exc, "pgcode", None)
    if bare or isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError):
        what = f" while {doing}" if doing else ""
        return ConnectError(
            f"lost connection to PostgreSQL at {where}{what}: {ep.scrub(raw)} ({role})"
        )
    what = f"{doing} failed" if doing else "PostgreSQL error"
    return PermanentError(f"{what} at {where}: {ep.scrub(raw)} ({role})")


def connect(ep: Endpoint, replication: bool = False, **kwargs: Any) -> Any:
    """Open a connection with the canonical session settings (see values.py)."""
    extra: dict[str, Any] = {
        "connect_timeout": CONNECT_TIMEOUT,
        "options": CANONICAL_OPTIONS,
        **kwargs,
    }
    if replication:
        extra["connection_factory"] = psycopg2.extras.LogicalReplicationConnection
    try:
        return psycopg2.connect(ep.dsn, **extra)
    except psycopg2.Error as exc:
        raise translate(exc, ep, "connecting") from exc


def wal_level_message(level: str, ep: Endpoint) -> str:
    return (
        f"wal_level is {level} on {ep.where}; set wal_level=logical and restart PostgreSQL "
        f"({ep.role})"
    )
