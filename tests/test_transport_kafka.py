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

from contract.transport_contract import TransportContract, drain, rec
from servers import KafkaBroker
from syncline.config import KafkaTransportConfig
from syncline.errors import ConfigError, DataError, TransportError
from syncline.transports.base import Record, Transport, partition_for
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


@pytest.fixture
def broker(kafka_broker: KafkaBroker) -> KafkaBroker:
    return kafka_broker


def open_transport(
    broker: KafkaBroker, prefix: str, partitions: int = 4, **kw: object
) -> KafkaTransport:
    return KafkaTransport(config(broker, prefix, partitions, **kw), "orders")


def test_topics_are_debezium_style_and_partitioned_by_key(broker: KafkaBroker) -> None:
    from confluent_kafka import Consumer, TopicPartition

    prefix = unique()
    t = open_transport(broker, prefix, 3)
    t.producer().publish([rec(i, f"v{i}") for i in range(60)], {"n": 1})
    topics = set(t.admin().list_topics(timeout=10).topics)
    assert {
        f"{prefix}.public.orders",
        f"{prefix}.syncline.meta",
        f"{prefix}.syncline.checkpoints",
    } <= topics
    c = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": unique(),
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    c.assign([TopicPartition(f"{prefix}.public.orders", p, 0) for p in range(3)])
    seen, eof = [], set()
    while len(eof) < 3:
        m = c.poll(5)
        assert m is not None
        if m.error() is not None:
            eof.add(m.partition())
            continue
        seen.append((m.partition(), m.key(), m.value()))
    c.close()
    assert sorted(v for _, _, v in seen) == sorted(f"v{i}".encode() for i in range(60))
    assert all(p == partition_for(k, 3) for p, k, _ in seen)  # key = our encoded primary key
    t.close()


def test_stream_ids_are_stable_per_table_and_never_collide(broker: KafkaBroker) -> None:
    prefix = unique()
    t = open_transport(broker, prefix, 2)
    prod = t.producer()
    prod.publish([rec(i, "a") for i in range(20)], {"n": 1})
    prod.publish([Record("public.items", rec(i, "").key, b"b") for i in range(20)], {"n": 2})
    got = drain(t.consumer("ids"), 40)
    ids = {(r.table, r.partition) for r in got}
    assert ids == {
        ("public.orders", 0),
        ("public.orders", 1),
        ("public.items", 2),
        ("public.items", 3),
    }
    t.close()
    again = open_transport(broker, prefix, 2)  # another process, later: same ids
    again.producer().publish([Record("public.items", rec(1, "").key, b"c")], {"n": 3})
    assert set(again.end_offsets()) == {0, 1, 2, 3}
    late = drain(again.consumer("ids2"), 41)
    assert {(r.table, r.partition) for r in late} == ids
    again.close()


def test_second_producer_fences_the_first(broker: KafkaBroker) -> None:
    prefix = unique()
    t = open_transport(broker, prefix)
    first = t.producer()
    first.publish([rec(1, "one")], {"n": 1})
    second = open_transport(broker, prefix).producer()  # e.g. a restarted capture process
    assert second.checkpoint() == {"n": 1}
    with pytest.raises(TransportError) as err:
        first.publish([rec(2, "zombie")], {"n": 2})
    assert "fenced" in str(err.value)
    second.publish([rec(3, "three")], {"n": 3})
    values = sorted(r.value for r in drain(t.consumer("g"), 2))
    assert values == [b"one", b"three"]
    t.close()


ZOMBIE = textwrap.dedent(
    """
    import sys
    from syncline.config import KafkaTransportConfig
    from syncline.events import encode_key
    from syncline.transports.base import Record
    from syncline.transports.kafka import KafkaTransport

    cfg = KafkaTransportConfig(kind="kafka", bootstrap_servers=sys.argv[1], topic_prefix=sys.argv[2])
    t = KafkaTransport(cfg, "orders")
    prod = t.producer()
    prod.publish([Record("public.orders", encode_key({"id": 0}), b"committed")], {"n": 1})
    p = prod._p  # begin a transaction and leave it open, as a capture killed mid-publish does
    p.begin_transaction()
    for i in range(500):
        p.produce(t.prefix + ".public.orders", b"uncommitted", encode_key({"id": i}), i % 4)
    p.flush(30)
    print("open", flush=True)
    sys.stdin.read()
    """
)


def test_a_publish_killed_mid_transaction_is_never_delivered(
    request: pytest.FixtureRequest, broker: KafkaBroker
) -> None:
    if not broker.hides_aborted:
        request.applymarker(
            pytest.mark.xfail(
                reason=f"{broker.version} does not hide aborted transactions", strict=True
            )
        )
    prefix = unique()
    child = subprocess.Popen(
        [sys.executable, "-c", ZOMBIE, broker.bootstrap, prefix],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "open"
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    t = open_transport(broker, prefix)
    prod = t.producer()  # fences the dead producer and aborts its open transaction
    assert prod.checkpoint() == {"n": 1}
    prod.publish([rec(1, "after")], {"n": 2})
    values = [r.value for r in drain(t.consumer("g"), 2)]
    assert sorted(values) == [b"after", b"committed"]
    t.close()


def test_changing_the_partition_count_is_refused(broker: KafkaBroker) -> None:
    prefix = unique()
    t = open_transport(broker, prefix, 4)
    t.producer().publish([rec(1, "a")], {"n": 1})
    t.close()
    with pytest.raises(ConfigError) as err:
        open_transport(broker, prefix, 8).producer()
    assert "has 4 partitions but transport.partitions is 8" in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_client_setting_is_a_config_error(broker: KafkaBroker) -> None:
    t = open_transport(broker, unique(), producer={"linger.mss": 5})
    with pytest.raises(
        ConfigError, match=r'^transport\.producer: No such configuration property: "linger.mss"'
    ):
        t.producer()
    t.close()


def test_unreachable_broker_is_a_transient_transport_error() -> None:
    cfg = KafkaTransportConfig(
        kind="kafka", bootstrap_servers="127.0.0.1:1", topic_prefix="nowhere", timeout=2
    )
    t = KafkaTransport(cfg, "orders")
    with pytest.raises(TransportError, match=r"^kafka at 127\.0\.0\.1:1 is not reachable"):
        t.check()
    with pytest.raises(TransportError):
        t.producer()
    t.close()


def test_too_large_record_is_a_data_error_and_stores_nothing(broker: KafkaBroker) -> None:
    t = open_transport(broker, unique(), 2, max_message_bytes=4096)
    prod = t.producer()
    prod.publish([rec(1, "small")], {"n": 1})
    with pytest.raises(DataError, match=r"raise transport\.max_message_bytes"):
        prod.publish([rec(3, "x" * 10_000), rec(2, "ok")], {"n": 2})
    assert prod.checkpoint() == {"n": 1}
    prod.publish([rec(4, "after")], {"n": 3})  # the failed transaction was aborted
    assert sorted(r.value for r in drain(t.consumer("g"), 2)) == [b"after", b"small"]
    t.close()
