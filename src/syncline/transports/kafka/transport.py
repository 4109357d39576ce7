"""Apache Kafka as the log: one topic per table, transactional capture, read_committed apply.

A stream (what ``Delivered.partition`` numbers and the sink keeps a position
for) is one Kafka partition of one table topic. Its id is
``table index × partitions + kafka partition``, where the table index comes
from the registry in the meta topic, written in the same transaction as the
table's first records: ids never change and never collide. See docs/transports.md.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from syncline.config import KafkaTransportConfig
from syncline.errors import ConfigError, SynclineError, TransportError
from syncline.transports.base import Transport
from syncline.transports.kafka import settings as s
from syncline.transports.kafka.consumer import KafkaConsumer
from syncline.transports.kafka.errors import kafka_error, translate
from syncline.transports.kafka.producer import KafkaProducer
from syncline.transports.kafka.state import (
    PARTITIONS_KEY,
    USER_KEY,
    MetaLog,
    TableEntry,
    last_records,
    watermarks,
)

log = logging.getLogger(__name__)


class KafkaTransport(Transport):
    """Topics ``<prefix>.<schema>.<table>`` plus ``<prefix>.syncline.{meta,checkpoints}``."""

    def __init__(self, config: KafkaTransportConfig, pipeline: str) -> None:
        self.config = config
        self.pipeline = pipeline
        self.partitions = config.partitions
        self.prefix = config.prefix(pipeline)
        self.where = config.bootstrap_servers
        self.timeout = config.timeout
        self.meta_topic = s.meta_topic(self.prefix)
        self.checkpoint_topic = s.checkpoint_topic(self.prefix)
        self.txn_id = s.transactional_id(self.prefix)
        self._lock = threading.RLock()
        self._admin: AdminClient | None = None
        self._meta: MetaLog | None = None
        self._scanner: Consumer | None = None
        self._meta_producer: Producer | None = None
        self._prepared = False
        self._children: list[Any] = []
        # end_offsets cache: (topic, partition) → (low, high, end); the scan runs on change
        self._ends: dict[tuple[str, int], tuple[int, int, int]] = {}
        for tp in (self.meta_topic, self.checkpoint_topic):
            if len(tp) > s.MAX_TOPIC:
                raise ConfigError(f"transport.topic_prefix {self.prefix!r} is too long")

    # ---- clients ---------------------------------------------------------------------

    def client(self, kind: str, make: Any, conf: dict[str, Any]) -> Any:
        """Build a driver client; a setting it rejects is a config error naming the block."""
        try:
            return make(conf)
        except KafkaException as exc:
            err = kafka_error(exc)
            text = err.str() if err is not None else str(exc)
            raise ConfigError(f"transport.{kind}: {text}") from exc
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"transport.{kind}: {exc}") from exc

    def admin(self) -> AdminClient:
        if self._admin is None:
            self._admin = self.client(
                "producer", AdminClient, s.admin_settings(self.config, self.pipeline)
            )
        return self._admin

    def reader(self, purpose: str) -> Consumer:
        """A read_committed consumer that never commits (state reads, end offsets)."""
        group = s.group_id(self.prefix, f"syncline-{purpose}")
        conf = s.consumer_settings(self.config, self.pipeline, group, eof=True)
        consumer: Consumer = self.client("consumer", Consumer, conf)
        return consumer

    def meta(self) -> MetaLog:
        """The meta topic's reader, caught up with what is committed now."""
        with self._lock:
            self._prepare()
            assert self._meta is not None
            self._meta.refresh()
            return self._meta

    # ---- setup -----------------------------------------------------------------------

    def ensure_topics(self, topics: dict[str, tuple[int, dict[str, str]]]) -> None:
        """Create missing topics (partitions, config); refuse existing ones of another size."""
        admin = self.admin()
        rf = self.config.replication_factor
        try:
            existing = admin.list_topics(timeout=self.timeout).topics
            missing = [
                NewTopic(name, parts, rf, config=conf)
                for name, (parts, conf) in topics.items()
                if name not in existing
            ]
            if missing:
                futures = admin.create_topics(
                    missing, operation_timeout=self.timeout, request_timeout=self.timeout
                )
                for name, fut in futures.items():
                    try:
                        fut.result()
                        log.info("kafka at %s: created topic %s", self.where, name)
                    except KafkaException as exc:
                        err = kafka_error(exc)
                        if err is None or err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                            raise translate(exc, self.where, f"creating topic {name}") from exc
                existing = admin.list_topics(timeout=self.timeout).topics
        except KafkaException as exc:
            raise translate(exc, self.where, "listing topics") from exc
        for name, (parts, _) in topics.items():
            meta = existing.get(name)
            have = len(meta.partitions) if meta is not None else 0
            if meta is not None and have and have != parts:
                raise ConfigError(
                    f"kafka topic {name} has {have} partitions but transport.partitions is "
                    f"{parts}; keys would move between partitions, so use the topic's count "
                    "or another topic_prefix"
                )

    def _prepare(self) -> None:
        """Once: the state topics exist and the partition count matches the log's."""
        if self._prepared:
            return
        state = s.state_topic_config(self.config)
        self.ensure_topics({self.meta_topic: (1, state), self.checkpoint_topic: (1, state)})
        if self._meta is None:
            self._meta = MetaLog(self.reader("meta"), self.meta_topic, self.where, self.timeout)
        self._meta.refresh()
        stored = self._meta.values.get(PARTITIONS_KEY)
        if stored is None:
            self._put(PARTITIONS_KEY, str(self.partitions).encode())
        elif int(stored) != self.partitions:
            raise ConfigError(
                f"kafka log {self.prefix} has {int(stored)} partitions but transport.partitions "
                f"is {self.partitions}; keys would move between partitions, so keep "
                f"{int(stored)} or use another topic_prefix"
            )
        self._prepared = True

    def _put(self, key: str, value: bytes) -> None:
        """Write one meta value (not transactional) and wait until the reader has it."""
        if self._meta_producer is None:
            conf = s.producer_settings(self.config, self.pipeline, None)
            self._meta_producer = self.client("producer", Producer, conf)
        prod = self._meta_producer
        result: list[tuple[KafkaError | None, int]] = []

        def done(err: KafkaError | None, msg: Any) -> None:
            result.append((err, msg.offset() if err is None else -1))

        doing = f"storing {key} in {self.meta_topic}"
        try:
            prod.produce(self.meta_topic, value, key.encode(), 0, on_delivery=done)
            prod.flush(self.timeout)
        except KafkaException as exc:
            raise translate(exc, self.where, doing) from exc
        except BufferError as exc:
            raise TransportError(f"kafka at {self.where}: {doing}: {exc}") from exc
        if not result:
            raise TransportError(f"kafka at {self.where}: timed out {doing}")
        err, offset = result[0]
        if err is not None:
            raise translate(err, self.where, doing)
        assert self._meta is not None
        self._meta.refresh(wait_for=offset + 1)

    # ---- Transport -------------------------------------------------------------------

    def check(self) -> list[str]:
        try:
            md = self.admin().list_topics(timeout=min(self.timeout, 10.0))
        except KafkaException as exc:
            raise translate(exc, self.where, "connecting") from exc
        with self._lock:
            self._prepare()
            assert self._meta is not None
            tables = len(self._meta.registry.by_table)
        return [
            f"kafka at {self.where}: {len(md.brokers)} broker(s), topics {self.prefix}.*, "
            f"{self.partitions} partitions, {tables} table topic(s)"
        ]

    def producer(self) -> KafkaProducer:
        with self._lock:
            self._prepare()
        prod = KafkaProducer(self)
        self._children.append(prod)
        return prod

    def consumer(self, group: str, partitions: Sequence[int] | None = None) -> KafkaConsumer:
        parts = list(range(self.partitions)) if partitions is None else list(partitions)
        bad = [p for p in parts if not 0 <= p < self.partitions]
        if bad or not parts:
            raise ConfigError(
                f"consumer {group!r}: partitions {parts} are not a non-empty subset of "
                f"0..{self.partitions - 1} of kafka log {self.prefix}"
            )
        with self._lock:
            self._prepare()
        cons = KafkaConsumer(self, group, parts)
        self._children.append(cons)
        return cons

    def forget(self, child: object) -> None:
        """A closed producer or consumer: drop it, so its driver client can be freed."""
        with self._lock:
            if child in self._children:
                self._children.remove(child)

    def stream_id(self, entry: TableEntry, kafka_partition: int) -> int:
        return entry.index * self.partitions + kafka_partition

    def streams(self) -> dict[int, tuple[str, int]]:
        """Every stream id of every registered table → (topic, kafka partition)."""
        reg = self.meta().registry
        return {
            self.stream_id(e, kp): (e.topic, kp)
            for e in reg.by_index.values()
            for kp in range(self.partitions)
        }

    def end_offsets(self) -> dict[int, int]:
        """Per stream, the offset after its last committed record (what a sink stores).

        Kafka's high watermark counts transaction markers too, so it is not what a
        consumer that applied everything has as its position; this is.
        """
        with self._lock:
            streams = self.streams()
            if self._scanner is None:
                self._scanner = self.reader("ends")
            tps = list(streams.values())
            marks = watermarks(self._scanner, tps, self.where, self.timeout)
            stale = {tp: m for tp, m in marks.items() if self._ends.get(tp, (-1, -1, 0))[:2] != m}
            if stale:
                found = last_records(self._scanner, stale, self.where, self.timeout)
                for tp, rec in found.items():
                    self._ends[tp] = (*stale[tp], 0 if rec is None else rec[0] + 1)
            return {sid: self._ends[tp][2] for sid, tp in streams.items()}

    def last_checkpoint(self) -> bytes | None:
        """The value of the last committed checkpoint record."""
        with self._lock:
            if self._scanner is None:
                self._scanner = self.reader("ends")
            tp = (self.checkpoint_topic, 0)
            marks = watermarks(self._scanner, [tp], self.where, self.timeout)
            rec = last_records(self._scanner, marks, self.where, self.timeout)[tp]
        return None if rec is None else rec[1]

    def put_meta(self, name: str, value: str) -> None:
        with self._lock:
            self._prepare()
            self._put(USER_KEY + name, value.encode())

    def get_meta(self, name: str) -> str | None:
        raw = self.meta().values.get(USER_KEY + name)
        return None if raw is None else raw.decode()

    def close(self) -> None:
        for child in list(self._children):
            try:
                child.close()
            except SynclineError as exc:
                log.warning("%s", exc)
        self._children.clear()
        with self._lock:
            if self._meta is not None:
                self._meta.close()
                self._meta = None
            if self._scanner is not None:
                self._scanner.close()
                self._scanner = None
            if self._meta_producer is not None:
                self._meta_producer.flush(self.timeout)
                self._meta_producer = None
            self._admin = None
            self._prepared = False
