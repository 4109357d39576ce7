"""Config → librdkafka settings and topic names (no driver import: cheap to test).

Topics follow Debezium's naming, ``<prefix>.<schema>.<table>``, so tools written
for Debezium topics find syncline's. Two more topics per prefix hold syncline's
own state: ``<prefix>.syncline.meta`` (table registry, put_meta values, the
partition count) and ``<prefix>.syncline.checkpoints`` (the source checkpoint,
written in each publish's transaction). Both are compacted.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from syncline.config import KafkaTransportConfig

LOG = logging.getLogger("syncline.kafka")

_TOPIC_CHAR = re.compile(r"[^A-Za-z0-9._-]")
MAX_TOPIC = 249


def prefix_of(cfg: KafkaTransportConfig, pipeline: str) -> str:
    return cfg.prefix(pipeline)


def table_topic(prefix: str, table: str) -> str:
    """``public.orders`` → ``<prefix>.public.orders``; other characters become ``_``."""
    return f"{prefix}.{_TOPIC_CHAR.sub('_', table)}"


def meta_topic(prefix: str) -> str:
    return f"{prefix}.syncline.meta"


def checkpoint_topic(prefix: str) -> str:
    return f"{prefix}.syncline.checkpoints"


def transactional_id(prefix: str) -> str:
    """One per log: a second capture process for it fences the first."""
    return f"syncline-{prefix}"


def group_id(prefix: str, group: str) -> str:
    return f"syncline.{prefix}.{group}"


def _common(cfg: KafkaTransportConfig, pipeline: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "bootstrap.servers": cfg.bootstrap_servers,
        "client.id": f"syncline-{pipeline}",
        "logger": LOG,
        "socket.keepalive.enable": True,
        "reconnect.backoff.max.ms": 2000,
        "topic.metadata.refresh.interval.ms": 60_000,
    }
    sec = cfg.security
    if sec is not None:
        out["security.protocol"] = sec.protocol
        optional = {
            "sasl.mechanism": sec.sasl_mechanism,
            "sasl.username": sec.username,
            "sasl.password": sec.password.get_secret_value() if sec.password else None,
            "ssl.ca.location": sec.ssl_ca_location,
            "ssl.certificate.location": sec.ssl_certificate_location,
            "ssl.key.location": sec.ssl_key_location,
            "ssl.key.password": (
                sec.ssl_key_password.get_secret_value() if sec.ssl_key_password else None
            ),
        }
        out.update({k: v for k, v in optional.items() if v is not None})
    return out


def producer_settings(
    cfg: KafkaTransportConfig, pipeline: str, txn_id: str | None
) -> dict[str, Any]:
    """Idempotent, acks=all; transactional when ``txn_id`` is given (capture)."""
    out = _common(cfg, pipeline)
    out.update(
        {
            "enable.idempotence": True,
            "acks": "all",
            "message.max.bytes": cfg.max_message_bytes,
            "linger.ms": 5,
            "compression.type": "lz4",
            "request.timeout.ms": int(cfg.timeout * 1000),
        }
    )
    if txn_id is not None:
        out["transactional.id"] = txn_id
        out["transaction.timeout.ms"] = 60_000
        out["delivery.report.only.error"] = True  # failures only: no callback per record
    out.update(cfg.producer)
    return out


def consumer_settings(
    cfg: KafkaTransportConfig, pipeline: str, group: str, *, eof: bool = False
) -> dict[str, Any]:
    """read_committed, manual offsets: the sink holds the authoritative positions."""
    out = _common(cfg, pipeline)
    out.update(
        {
            "group.id": group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": eof,
            "fetch.wait.max.ms": 100,
        }
    )
    out.update(cfg.consumer)
    return out


def admin_settings(cfg: KafkaTransportConfig, pipeline: str) -> dict[str, Any]:
    return _common(cfg, pipeline)


def data_topic_config(cfg: KafkaTransportConfig) -> dict[str, str]:
    out = {"max.message.bytes": str(cfg.max_message_bytes)}
    if cfg.retention_hours is not None:
        out["retention.ms"] = str(int(cfg.retention_hours * 3_600_000))
    return out


def state_topic_config(cfg: KafkaTransportConfig) -> dict[str, str]:
    return {"cleanup.policy": "compact", "max.message.bytes": str(cfg.max_message_bytes)}
