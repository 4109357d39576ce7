"""Configuration: one YAML file, ``${ENV}`` interpolation, validated value objects.

Every error names the field path and what is wrong, in one line, e.g.
``config.yaml: pipelines[0].source.dsn: field required``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from syncline.errors import ConfigError

_NAME = r"^[a-z][a-z0-9_-]{0,62}$"
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _qualify(table: str) -> str:
    """``orders`` → ``public.orders``; ``a.b`` stays; anything else is an error."""
    parts = table.split(".")
    if len(parts) == 1:
        parts = ["public", parts[0]]
    if len(parts) != 2 or not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", p) for p in parts):
        raise ValueError(f"{table!r} is not a table name (use schema.table or table)")
    return ".".join(parts)


class PostgresSourceConfig(_Model):
    kind: Literal["postgres"]
    dsn: str
    tables: list[str] = Field(min_length=1)
    snapshot: Literal["initial", "never"] = "initial"
    slot: str | None = Field(default=None, pattern=r"^[a-z0-9_]{1,63}$")
    publication: str | None = Field(default=None, pattern=r"^[a-z0-9_]{1,63}$")
    heartbeat_interval: float = Field(default=10.0, gt=0)
    heartbeat_query: str | None = None
    status_interval: float = Field(default=1.0, gt=0)
    # transactions written under these replication origins are not captured (loop prevention)
    skip_origins: list[str] = Field(default_factory=list)
    # source safety: warn when the slot retains more WAL than this (see docs/operations.md)
    wal_warn_mb: float = Field(default=1024.0, gt=0)
    wal_check_interval: float = Field(default=30.0, gt=0)

    _tables = field_validator("tables")(lambda v: [_qualify(t) for t in v])


class SqliteSourceConfig(_Model):
    kind: Literal["sqlite"]
    path: str
    tables: list[str] = Field(min_length=1)
    snapshot: Literal["initial", "never"] = "initial"
    poll_interval: float = Field(default=0.02, gt=0)

    @field_validator("tables")
    @classmethod
    def _plain(cls, v: list[str]) -> list[str]:
        out = []
        for t in v:
            name = t.removeprefix("main.")
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"{t!r} is not a SQLite table name")
            out.append(name)
        return out


SourceConfig = Annotated[PostgresSourceConfig | SqliteSourceConfig, Field(discriminator="kind")]


class EmbeddedTransportConfig(_Model):
    kind: Literal["embedded"] = "embedded"
    path: str = "./.syncline"
    partitions: int = Field(default=4, ge=1, le=256)
    retention_hours: float = Field(default=168.0, gt=0)
    fsync: bool = True


def redact_url(url: str) -> str:
    """``nats://user:secret@host:4222`` → ``nats://host:4222``: for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    host = rest.rpartition("@")[2]
    return f"{scheme}://{host}"


class NatsTransportConfig(_Model):
    """NATS JetStream as the log: one stream per pipeline, see docs/transports.md."""

    kind: Literal["nats"]
    servers: list[str] = Field(default_factory=lambda: ["nats://127.0.0.1:4222"], min_length=1)
    stream: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$"
    )  # syncline_<pipeline>
    partitions: int = Field(default=4, ge=1, le=256)
    replicas: int = Field(default=1, ge=1, le=5)
    max_ack_pending: int = Field(default=10_000, ge=1, le=10_000_000)
    publish_in_flight: int = Field(default=1000, ge=1, le=100_000)
    retention_hours: float = Field(default=168.0, gt=0)
    credentials: str | None = None  # path of a .creds file (JWT + NKey)
    token: SecretStr | None = None
    user: str | None = None
    password: SecretStr | None = None
    connect_timeout: float = Field(default=5.0, gt=0, le=300)

    @field_validator("servers")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        for url in v:
            parts = urlsplit(url)
            try:
                port = parts.port
            except ValueError:
                port = -1
            if (
                parts.scheme not in ("nats", "tls", "ws", "wss")
                or not parts.hostname
                or port == -1
                or parts.path not in ("", "/")
            ):
                raise ValueError(
                    f"{redact_url(url)!r} is not a NATS server URL "
                    "(expected nats://host:port, tls://, ws:// or wss://)"
                )
        return v

    @model_validator(mode="after")
    def _auth(self) -> NatsTransportConfig:
        if (self.user is None) != (self.password is None):
            raise ValueError("user and password go together")
        if self.token is not None and self.user is not None:
            raise ValueError("use either token or user/password, not both")
        return self


TransportConfig = Annotated[
    EmbeddedTransportConfig | NatsTransportConfig, Field(discriminator="kind")
]


_PY_REF = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$"


class ConflictConfig(_Model):
    """How the sink settles an incoming change that collides with the target's row.

    lww: the higher ``column`` value wins (timestamp or integer; without ``column`` the
    source commit timestamp), ties broken deterministically; deletes leave tombstones.
    source_wins: always apply (the default without a conflict block).
    target_wins: a row changed locally in the target since syncline last wrote it is kept.
    custom: ``resolver`` (``module:function``) decides: apply, skip or a merged row.
    manual: conflicting changes are parked in the conflicts table for ``syncline conflicts``.
    """

    strategy: Literal["lww", "source_wins", "target_wins", "custom", "manual"]
    column: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    resolver: str | None = Field(default=None, pattern=_PY_REF)

    @model_validator(mode="after")
    def _fits_strategy(self) -> ConflictConfig:
        if self.strategy == "custom" and not self.resolver:
            raise ValueError("strategy custom needs resolver: module:function")
        if self.strategy != "custom" and self.resolver:
            raise ValueError(f"resolver only applies to strategy custom, not {self.strategy}")
        if self.column and self.strategy not in ("lww",):
            raise ValueError(f"column only applies to strategy lww, not {self.strategy}")
        return self


class TableOptions(_Model):
    target: str | None = None  # another name (and schema) in the target database
    conflict: ConflictConfig | None = None
    missing_columns: Literal["error", "ignore"] = "error"  # source columns the target lacks


class _SinkBase(_Model):
    tables: dict[str, TableOptions] = Field(default_factory=dict)
    create_tables: bool = False

    @field_validator("tables", mode="before")
    @classmethod
    def _none_is_default(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: ({} if opts is None else opts) for k, opts in v.items()}
        return v


class PostgresSinkConfig(_SinkBase):
    kind: Literal["postgres"]
    dsn: str
    # tag syncline's writes with this replication origin, so a source with
    # skip_origins: [<it>] on this database does not send them back
    origin: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_]{1,63}$")

    @field_validator("tables")
    @classmethod
    def _qualified(cls, v: dict[str, TableOptions]) -> dict[str, TableOptions]:
        return {_qualify(k): o for k, o in v.items()}


class SqliteSinkConfig(_SinkBase):
    kind: Literal["sqlite"]
    path: str
    create_tables: bool = True
    # suppress this database's syncline capture triggers for syncline's own writes
    suppress_capture: bool = True


SinkConfig = Annotated[PostgresSinkConfig | SqliteSinkConfig, Field(discriminator="kind")]


class BatchConfig(_Model):
    max_events: int = Field(default=5000, ge=1, le=1_000_000)
    max_wait_ms: int = Field(default=20, ge=0, le=60_000)


class RetryConfig(_Model):
    """Backoff for transient failures (connection lost, deadlock, target down).

    ``max_attempts: null`` retries forever: an outage must never drop data, the
    pipeline only reports itself degraded meanwhile.
    """

    initial_delay_ms: int = Field(default=100, ge=1, le=600_000)
    max_delay_ms: int = Field(default=30_000, ge=1, le=3_600_000)
    max_attempts: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> RetryConfig:
        if self.max_delay_ms < self.initial_delay_ms:
            raise ValueError("max_delay_ms must not be below initial_delay_ms")
        return self


class DeadLetterConfig(_Model):
    """Where events that cannot be applied go, instead of stopping the pipeline.

    A permanent failure (constraint violation, type mismatch, undecodable event,
    transform error) is retried ``max_attempts`` times, then the event is stored
    in the pipeline's dead-letter queue. Later events of its key are held behind it
    (``on_blocked_key: hold``, keeps per-key order) or applied anyway (``skip``).
    ``enabled: false`` stops the pipeline on the first permanent failure instead.
    """

    enabled: bool = True
    # directory of the <pipeline>.dlq.db file; default: the embedded log's directory
    path: str | None = None
    max_attempts: int = Field(default=3, ge=1, le=100)
    on_blocked_key: Literal["hold", "skip"] = "hold"


class PipelineConfig(_Model):
    name: str = Field(pattern=_NAME)
    source: SourceConfig
    transport: TransportConfig = Field(default_factory=EmbeddedTransportConfig)
    transforms: list[dict[str, Any]] = Field(default_factory=list)
    sink: SinkConfig
    batch: BatchConfig = Field(default_factory=BatchConfig)
    apply_in: Literal["process", "thread"] = "process"  # process: capture and apply in parallel
    retry: RetryConfig = Field(default_factory=RetryConfig)
    dlq: DeadLetterConfig = Field(default_factory=DeadLetterConfig)

    @property
    def dlq_dir(self) -> str:
        return self.dlq.path or getattr(self.transport, "path", None) or "./.syncline"

    @field_validator("transport", mode="before")
    @classmethod
    def _embedded_by_default(cls, v: Any) -> Any:
        if isinstance(v, dict) and "kind" not in v:
            return {**v, "kind": "embedded"}
        return v

    @field_validator("transforms")
    @classmethod
    def _valid_transforms(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from syncline.transforms import validate_specs

        validate_specs(v)  # raises ValueError naming the transform and field
        return v


class Config(_Model):
    pipelines: list[PipelineConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> Config:
        seen: set[str] = set()
        for p in self.pipelines:
            if p.name in seen:
                raise ValueError(f"pipeline name {p.name!r} is used twice")
            seen.add(p.name)
        return self

    def pipeline(self, name: str) -> PipelineConfig:
        for p in self.pipelines:
            if p.name == name:
                return p
        raise ConfigError(
            f"no pipeline named {name!r} (have: {', '.join(p.name for p in self.pipelines)})"
        )


def interpolate(text: str, env: dict[str, str] | None = None) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}``; an unset VAR without default is an error."""
    env = dict(os.environ) if env is None else env
    missing: list[str] = []

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        missing.append(name)
        return ""

    out = _ENV.sub(sub, text)
    if missing:
        raise ConfigError(
            f"environment variable {missing[0]} is not set (referenced as ${{{missing[0]}}}; "
            "set it or write ${" + missing[0] + ":-default})"
        )
    return out


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("postgres", "sqlite", "embedded", "nats") and out.endswith(
            ("source", "sink", "transport")
        ):
            continue  # pydantic's discriminator tag adds noise to the path
        else:
            out += f".{part}" if out else str(part)
    return out


def format_validation_error(exc: ValidationError, origin: str) -> str:
    parts = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling)"
        elif err["type"] == "union_tag_invalid":
            msg = (
                f"unknown kind {err['ctx']['tag']!r}; expected one of {err['ctx']['expected_tags']}"
            )
        parts.append(f"{_loc(err['loc'])}: {msg}")
    return f"{origin}: " + "; ".join(parts)


def parse_config(data: Any, origin: str = "config") -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping with a 'pipelines' list at the top")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, origin)) from None


def load_config(path: str | os.PathLike[str], env: dict[str, str] | None = None) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc}") from None
    try:
        text = interpolate(text, env)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{p}: invalid YAML{where}: {problem}") from None
    return parse_config(data, str(p))
