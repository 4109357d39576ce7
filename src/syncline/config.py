"""Configuration: one YAML file, ``${ENV}`` interpolation, validated value objects.

Every error names the field path and what is wrong, in one line, e.g.
``config.yaml: pipelines[0].source.dsn: field required``.
"""

from __future__ import annotations

import difflib
import os
import re
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
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


# librdkafka settings syncline sets itself: its guarantees depend on them (see docs/transports.md).
KAFKA_OWNED_SETTINGS = frozenset(
    {
        "bootstrap.servers",
        "transactional.id",
        "enable.idempotence",
        "acks",
        "isolation.level",
        "group.id",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "enable.partition.eof",
        "message.max.bytes",
        "logger",
    }
)
_KAFKA_SETTING = re.compile(r"^[a-z][a-z0-9]*(\.[a-z0-9]+)*$")


class KafkaSecurityConfig(_Model):
    """How to reach a secured cluster; ``password`` and ``ssl_key_password`` are never printed."""

    protocol: Literal["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"] = "plaintext"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    username: str | None = None
    password: SecretStr | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: SecretStr | None = None

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSecurityConfig:
        sasl = self.protocol.startswith("sasl")
        if sasl and not (self.sasl_mechanism and self.username and self.password):
            raise ValueError(
                f"protocol {self.protocol} needs sasl_mechanism, username and password"
            )
        if not sasl and (self.sasl_mechanism or self.username or self.password):
            raise ValueError(
                f"sasl_mechanism/username/password need a sasl_* protocol, not {self.protocol}"
            )
        return self


class KafkaTransportConfig(_Model):
    """An Apache Kafka cluster as the log: one topic per table, transactional capture."""

    kind: Literal["kafka"]
    bootstrap_servers: str = Field(min_length=1)
    # topics are <topic_prefix>.<schema>.<table>; default: the pipeline's name
    topic_prefix: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,150}$")
    partitions: int = Field(default=4, ge=1, le=1024)
    replication_factor: int = Field(default=1, ge=1, le=32)
    retention_hours: float | None = Field(default=168.0, gt=0)  # None: the broker's default
    max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024)
    timeout: float = Field(default=30.0, gt=0, le=600)  # seconds for one broker operation
    producer: dict[str, str | int | float | bool] = Field(default_factory=dict)
    consumer: dict[str, str | int | float | bool] = Field(default_factory=dict)
    security: KafkaSecurityConfig | None = None

    @field_validator("producer", "consumer")
    @classmethod
    def _settings(
        cls, v: dict[str, str | int | float | bool]
    ) -> dict[str, str | int | float | bool]:
        for key in v:
            if not _KAFKA_SETTING.match(key):
                raise ValueError(f"{key!r} is not a librdkafka setting name (like linger.ms)")
            if key in KAFKA_OWNED_SETTINGS:
                raise ValueError(f"{key} is set by syncline and cannot be overridden")
            if key.startswith(("sasl.", "ssl.", "security.")):
                raise ValueError(f"{key}: put connection security under transport.security")
        return v

    def prefix(self, pipeline: str) -> str:
        return self.topic_prefix or pipeline


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
    EmbeddedTransportConfig | NatsTransportConfig | KafkaTransportConfig,
    Field(discriminator="kind"),
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


class ApiTokenConfig(_Model):
    """One management API token: literal (``token``) or read from a variable (``token_env``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")
    role: Literal["viewer", "operator", "admin"]
    token: str | None = None
    token_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @model_validator(mode="after")
    def _one_source(self) -> ApiTokenConfig:
        if (self.token is None) == (self.token_env is None):
            raise ValueError("give exactly one of token or token_env")
        return self


class ApiConfig(_Model):
    """The management REST API served by ``syncline run`` (see docs/api.md)."""

    listen: str = "127.0.0.1:8083"
    tokens: list[ApiTokenConfig] = Field(default_factory=list)
    audit_log: str = "./.syncline/audit.log"

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        from syncline.api.settings import parse_listen

        parse_listen(v)  # raises ValueError saying what is wrong
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
    api: ApiConfig | None = None
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
        elif part in ("postgres", "sqlite", "embedded", "kafka", "nats") and out.endswith(
            ("source", "sink", "transport", "store")
        ):
            continue  # pydantic's discriminator tag adds noise to the path
        else:
            out += f".{part}" if out else str(part)
    return out


def _members(tp: Any) -> list[Any]:
    """The models a field's annotation can hold (through Annotated, unions, lists, dicts)."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _members(get_args(tp)[0])
    if origin is Union or origin is types.UnionType:
        return [m for a in get_args(tp) for m in _members(a)]
    if origin in (list, dict):
        return _members(get_args(tp)[-1])
    return [tp] if isinstance(tp, type) and issubclass(tp, BaseModel) else []


def _known_keys(loc: tuple[int | str, ...]) -> list[str]:
    """The keys allowed where ``loc`` points (for "did you mean")."""
    models: list[Any] = [Config]
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        holding = [m for m in models if part in m.model_fields]
        if holding:
            models = [x for m in holding for x in _members(m.model_fields[part].annotation)]
            continue
        tagged = [m for m in models if "kind" in m.model_fields and part in _kinds(m)]
        if tagged:  # pydantic puts a discriminated union's tag into the path
            models = tagged
        # otherwise a key of a mapping (sink.tables.<table>): same models
    return sorted({k for m in models for k in m.model_fields})


def _kinds(model: Any) -> tuple[Any, ...]:
    return get_args(model.model_fields["kind"].annotation)


def _unknown_key(loc: tuple[int | str, ...]) -> str:
    key = loc[-1] if loc else ""
    if isinstance(key, str) and ":" in key:
        return f"unknown key (YAML needs a space after the ':' in {key!r})"
    close = difflib.get_close_matches(str(key), _known_keys(loc), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else "check the spelling"
    return f"unknown key ({hint})"


_PATTERNS = {
    _NAME: "lowercase letters, digits, - and _, starting with a letter (at most 63)",
    r"^[a-z0-9_]{1,63}$": "lowercase letters, digits and _ (at most 63)",
    r"^[A-Za-z0-9_]{1,63}$": "letters, digits and _ (at most 63)",
    r"^[A-Za-z_][A-Za-z0-9_]*$": "a column name (letters, digits and _)",
    _PY_REF: "module:function (an importable Python function)",
}
_SECRET = re.compile(r"dsn|password|secret|key", re.I)  # never echo these values
_TYPE_HINTS = {
    "dict_type": "expected a mapping (key: value lines or {key: value})",
    "model_type": "expected a mapping (key: value lines or {key: value})",
    "model_attributes_type": "expected a mapping (key: value lines or {key: value})",
    "list_type": "expected a list ([a, b] or - item lines)",
}


def format_validation_error(exc: ValidationError, origin: str) -> str:
    return f"{origin}: " + format_errors(exc.errors())


def format_errors(errors: Sequence[Any]) -> str:
    """pydantic's error dicts as one line: ``field.path: what is wrong; …``."""
    parts = []
    for err in errors:
        loc = err["loc"]
        msg = err["msg"].removeprefix("Value error, ")
        where = _loc(loc)
        if err["type"] == "extra_forbidden":
            msg = _unknown_key(loc)
        elif err["type"] == "union_tag_invalid":
            msg = (
                f"unknown kind {err['ctx']['tag']!r}; expected one of {err['ctx']['expected_tags']}"
            )
        elif err["type"] == "union_tag_not_found":
            msg = "kind: field required (which backend: e.g. kind: postgres)"
        elif err["type"] in _TYPE_HINTS:
            got = err.get("input")
            msg = f"{_TYPE_HINTS[err['type']]}, got {_shown(got)}"
            if isinstance(got, str) and re.search(r"\w:\S", got):
                msg += " (YAML needs a space after ':')"
        elif err["type"] == "string_pattern_mismatch" and err["ctx"]["pattern"] in _PATTERNS:
            msg = f"use {_PATTERNS[err['ctx']['pattern']]} (got {_shown(err.get('input'))})"
        elif where.endswith(".transforms") and msg.startswith("transforms["):
            where, msg = where + msg[len("transforms") :].split(":", 1)[0], msg.split(":", 1)[1]
            msg = msg.strip()
        elif (
            err["type"] != "missing"
            and isinstance(err.get("input"), str | int | float)
            and not _SECRET.search(where)
        ):
            msg = f"{msg} (got {_shown(err['input'])})"
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def parse_config(data: Any, origin: str = "config") -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping with a 'pipelines' list at the top")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, origin)) from None


class _Loader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice (YAML would silently keep the last one)."""


def _no_duplicates(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, str | int | float | bool):
            continue  # odd keys are for the schema to refuse
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key {key!r} appears twice in the same mapping; keep one",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def _yaml_hint(exc: yaml.YAMLError) -> str:
    """What to do about a YAML syntax error, beyond PyYAML's own words."""
    problem = str(getattr(exc, "problem", None) or "")
    context = str(getattr(exc, "context", None) or "")
    mark = getattr(exc, "context_mark", None)
    opened = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    if "'\\t'" in problem:
        return "a tab character: YAML indents with spaces only"
    if "quoted scalar" in context:
        return f"the quoted string that starts{opened} is never closed"
    if "flow sequence" in context:
        return f"the [ list that starts{opened} is never closed"
    if "flow mapping" in context:
        return f"the {{ mapping that starts{opened} is never closed"
    if "block end" in problem or "mapping values are not allowed" in problem:
        return (
            "check the indentation (keys of one mapping must line up) and a missing space after ':'"
        )
    return ""


def load_config(path: str | os.PathLike[str], env: dict[str, str] | None = None) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a directory; give the path of the YAML config file") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{p}: not UTF-8 text (line {line}); save the config file as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc.strerror or exc}") from None
    try:
        text = interpolate(text, env)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        hint = _yaml_hint(exc)
        raise ConfigError(
            f"{p}: invalid YAML{where}: {problem}" + (f"; {hint}" if hint else "")
        ) from None
    return parse_config(data, str(p))
