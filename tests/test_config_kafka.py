"""Kafka transport config: validation, librdkafka settings, secrets never shown (no broker)."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncline.config import KafkaTransportConfig, PipelineConfig, load_config
from syncline.errors import ConfigError
from syncline.transports.kafka import settings

BASE = """
pipelines:
  - name: orders
    source: {kind: sqlite, path: x.db, tables: [orders]}
    sink: {kind: sqlite, path: y.db}
    transport: TRANSPORT
"""


def load(tmp_path: Path, transport: str) -> PipelineConfig:
    p = tmp_path / "syncline.yaml"
    p.write_text(BASE.replace("TRANSPORT", transport))
    return load_config(p, env={}).pipelines[0]


def test_defaults_and_names(tmp_path: Path) -> None:
    pipe = load(tmp_path, '{kind: kafka, bootstrap_servers: "k1:9092,k2:9092"}')
    cfg = pipe.transport
    assert isinstance(cfg, KafkaTransportConfig)
    assert (cfg.partitions, cfg.replication_factor, cfg.retention_hours) == (4, 1, 168.0)
    prefix = cfg.prefix(pipe.name)
    assert prefix == "orders"
    assert settings.table_topic(prefix, "public.order$lines") == "orders.public.order_lines"
    assert settings.meta_topic(prefix) == "orders.syncline.meta"
    assert settings.checkpoint_topic(prefix) == "orders.syncline.checkpoints"
    assert settings.transactional_id(prefix) == "syncline-orders"
    prod = settings.producer_settings(cfg, pipe.name, "syncline-orders")
    assert prod["enable.idempotence"] is True
    assert prod["acks"] == "all"
    assert prod["transactional.id"] == "syncline-orders"
    cons = settings.consumer_settings(cfg, pipe.name, "g")
    assert cons["isolation.level"] == "read_committed"
    assert cons["enable.auto.commit"] is False
    assert settings.data_topic_config(cfg)["retention.ms"] == str(168 * 3_600_000)
    assert settings.state_topic_config(cfg)["cleanup.policy"] == "compact"


def test_security_passes_through_and_secrets_stay_hidden(tmp_path: Path) -> None:
    pipe = load(
        tmp_path,
        "{kind: kafka, bootstrap_servers: k:9093, producer: {linger.ms: 20},"
        " security: {protocol: sasl_ssl, sasl_mechanism: SCRAM-SHA-512, username: svc,"
        " password: hunter2-secret, ssl_ca_location: /etc/ca.pem}}",
    )
    cfg = pipe.transport
    assert isinstance(cfg, KafkaTransportConfig)
    conf = settings.producer_settings(cfg, pipe.name, None)
    assert conf["security.protocol"] == "sasl_ssl"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert conf["sasl.password"] == "hunter2-secret"
    assert conf["ssl.ca.location"] == "/etc/ca.pem"
    assert conf["linger.ms"] == 20
    for shown in (str(cfg), repr(cfg), pipe.model_dump_json()):
        assert "hunter2" not in shown
    again = PipelineConfig.model_validate(pipe.model_dump())  # how the apply process gets it
    assert isinstance(again.transport, KafkaTransportConfig)
    assert again.transport.security is not None
    assert again.transport.security.password is not None
    assert again.transport.security.password.get_secret_value() == "hunter2-secret"


@pytest.mark.parametrize(
    ("transport", "expected"),
    [
        ("{kind: kafka}", "pipelines[0].transport.bootstrap_servers: Field required"),
        (
            "{kind: kafka, bootstrap_servers: k, producer: {transactional.id: x}}",
            "pipelines[0].transport.producer: Value error, transactional.id is set by syncline",
        ),
        (
            "{kind: kafka, bootstrap_servers: k, consumer: {sasl.password: x}}",
            "put connection security under transport.security",
        ),
        (
            "{kind: kafka, bootstrap_servers: k, security: {protocol: sasl_plaintext}}",
            "protocol sasl_plaintext needs sasl_mechanism, username and password",
        ),
        ("{kind: kafka, bootstrap_servers: k, partitions: 0}", "transport.partitions:"),
        ("{kind: kafka, bootstrap_servers: k, topic_prefix: 'a b'}", "transport.topic_prefix:"),
        ("{kind: rabbit}", "pipelines[0].transport: unknown kind 'rabbit'"),
    ],
)
def test_bad_kafka_config_is_one_line(tmp_path: Path, transport: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, transport)
    msg = str(err.value).replace("Value error, ", "")
    assert expected.replace("Value error, ", "") in msg
    assert "\n" not in msg
