"""The Kafka transport against a real broker: the contract plus what only Kafka needs.

Skipped without a broker; `make test-kafka` starts one (see tests/servers.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from contract.transport_contract import TransportContract, by_partition, drain, rec
from servers import KafkaBroker
from syncline.config import KafkaTransportConfig
from syncline.errors import ConfigError, TransportError
from syncline.transports.base import Transport, partition_for
from syncline.transports.kafka import KafkaTransport

pytestmark = pytest.mark.kafka


def config(
    broker: KafkaBroker, prefix: str, partitions: int = 4, **kw: object
) -> KafkaTransportConfig:
    return KafkaTransportConfig.model_validate(
        {
            "kind": "kafka",
            "bootstrap_servers": broker.bootstrap,
            "topic_prefix": prefix,
            "partitions": partitions,
            "timeout": 20,
            **kw,
        }
    )


def unique() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


class TestKafkaContract(TransportContract):
    @pytest.fixture(autouse=True)
    def _broker(self, kafka_broker: KafkaBroker) -> None:
        self.broker = kafka_broker
        self.prefixes: dict[Path, str] = {}

    def make_transport(self, tmp_path: Path, partitions: int) -> Transport:
        prefix = self.prefixes.setdefault(tmp_path, unique())  # same tmp_path → same log
        return KafkaTransport(config(self.broker, prefix, partitions), "orders")
