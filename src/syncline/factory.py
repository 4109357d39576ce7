"""Config → backend instances. Drivers are imported only when their backend is used."""

from __future__ import annotations

from syncline.config import (
    EmbeddedTransportConfig,
    KafkaTransportConfig,
    NatsTransportConfig,
    PostgresSinkConfig,
    PostgresSourceConfig,
    SinkConfig,
    SourceConfig,
    SqliteSinkConfig,
    SqliteSourceConfig,
    TransportConfig,
)
from syncline.errors import ConfigError
from syncline.sinks.base import Sink
from syncline.sources.base import Source
from syncline.transports.base import Transport


def _missing_driver(kind: str, extra: str, exc: ImportError) -> ConfigError:
    return ConfigError(
        f"{kind} support needs the {extra!r} extra: pip install 'syncline[{extra}]' ({exc})"
    )


def build_source(cfg: SourceConfig, pipeline: str) -> Source:
    if isinstance(cfg, PostgresSourceConfig):
        try:
            from syncline.sources.postgres import PostgresSource
        except ImportError as exc:
            raise _missing_driver("PostgreSQL", "postgres", exc) from exc
        return PostgresSource(cfg, pipeline)
    if isinstance(cfg, SqliteSourceConfig):
        from syncline.sources.sqlite import SqliteSource

        return SqliteSource(cfg, pipeline)
    raise ConfigError(f"unsupported source kind {cfg.kind!r}")  # pragma: no cover


def build_transport(cfg: TransportConfig, pipeline: str) -> Transport:
    if isinstance(cfg, EmbeddedTransportConfig):
        from syncline.transports.embedded import EmbeddedTransport

        return EmbeddedTransport(cfg, pipeline)
    if isinstance(cfg, KafkaTransportConfig):
        try:
            from syncline.transports.kafka import KafkaTransport
        except ImportError as exc:
            raise _missing_driver("Kafka", "kafka", exc) from exc
        return KafkaTransport(cfg, pipeline)
    if isinstance(cfg, NatsTransportConfig):
        try:
            from syncline.transports.nats import NatsTransport
        except ImportError as exc:
            raise _missing_driver("NATS", "nats", exc) from exc
        return NatsTransport(cfg, pipeline)
    raise ConfigError(f"unsupported transport kind {cfg.kind!r}")  # pragma: no cover


def build_sink(cfg: SinkConfig, pipeline: str) -> Sink:
    if isinstance(cfg, PostgresSinkConfig):
        try:
            from syncline.sinks.postgres import PostgresSink
        except ImportError as exc:
            raise _missing_driver("PostgreSQL", "postgres", exc) from exc
        return PostgresSink(cfg, pipeline)
    if isinstance(cfg, SqliteSinkConfig):
        from syncline.sinks.sqlite import SqliteSink

        return SqliteSink(cfg, pipeline)
    raise ConfigError(f"unsupported sink kind {cfg.kind!r}")  # pragma: no cover
