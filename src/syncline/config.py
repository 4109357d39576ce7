"""Configuration: one YAML file, ``${ENV}`` interpolation, validated value objects.

Every error names the field path and what is wrong, in one line, e.g.
``config.yaml: pipelines[0].source.dsn: field required``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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


TransportConfig = Annotated[EmbeddedTransportConfig, Field(discriminator="kind")]


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


class ScalingConfig(_Model):
    """Apply workers of one pipeline split its partitions through leases kept in the target.

    A worker renews its leases every ``heartbeat_s``; one that stops (crash, kill,
    network) loses them after ``lease_s`` and the others take its partitions over.
    """

    lease_s: float = Field(default=10.0, ge=0.5, le=3600)
    heartbeat_s: float = Field(default=1.0, gt=0, le=600)

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> ScalingConfig:
        if self.heartbeat_s * 3 > self.lease_s:
            raise ValueError("heartbeat_s must be at most a third of lease_s")
        return self


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
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)

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


class MetricsConfig(_Model):
    """Prometheus ``/metrics`` endpoint of ``syncline run`` (``--metrics`` overrides it)."""

    listen: str | None = None  # HOST:PORT, e.g. 0.0.0.0:9464

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str | None) -> str | None:
        if v is not None:
            parse_listen(v)
        return v


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``PORT`` → (host, port); ValueError names what is wrong."""
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        host = ""
    host = host.strip("[]") or "0.0.0.0"
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT (port 0-65535; 0 picks a free one)")
    return host, int(port)


class SqliteMonitoringStore(_Model):
    kind: Literal["sqlite"] = "sqlite"
    path: str = "./.syncline/monitoring.db"


class PostgresMonitoringStore(_Model):
    kind: Literal["postgres"]
    dsn: str


MonitoringStoreConfig = Annotated[
    SqliteMonitoringStore | PostgresMonitoringStore, Field(discriminator="kind")
]


class MonitoringConfig(_Model):
    """Per-change stage records (captured, published, applied, failed) for ``syncline trace``.

    Recorded off the data path: a bounded queue per process that a writer thread
    drains into the store; when the queue is full, records are dropped and counted,
    never waited for. ``sample`` keeps that fraction of keys (every change of a kept key).
    """

    enabled: bool = False
    store: MonitoringStoreConfig = Field(default_factory=SqliteMonitoringStore)
    retention_hours: float = Field(default=72.0, gt=0)
    sample: float = Field(default=1.0, ge=0.0, le=1.0)
    queue_size: int = Field(default=100_000, ge=1, le=10_000_000)  # records per process

    @field_validator("store", mode="before")
    @classmethod
    def _sqlite_by_default(cls, v: Any) -> Any:
        if isinstance(v, dict) and "kind" not in v:
            return {**v, "kind": "sqlite"}
        return v


class Config(_Model):
    pipelines: list[PipelineConfig] = Field(min_length=1)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)

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
        elif part in ("postgres", "sqlite", "embedded") and out.endswith(
            ("source", "sink", "transport", "store")
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
