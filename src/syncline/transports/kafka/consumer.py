"""The apply side: read_committed, explicit positions, new table topics picked up live.

A consumer serves hash partitions (``0..partitions-1``, which workers split
between them): for each it reads that Kafka partition of every table topic. It
also reads the meta topic, so a table registered by the producer (in the same
transaction as its first records) is assigned the moment it commits.
Positions handed to ``seek`` and ``commit`` are stream ids (see transport.py).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from confluent_kafka import (
    OFFSET_STORED,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from syncline.transports.base import Consumer as BaseConsumer
from syncline.transports.base import Delivered
from syncline.transports.kafka import settings as s
from syncline.transports.kafka.errors import translate
from syncline.transports.kafka.state import TABLE_KEY, Registry, TableEntry

_TABLE_KEY = TABLE_KEY.encode()
_GATHER_S = 0.002

if TYPE_CHECKING:
    from syncline.transports.kafka.transport import KafkaTransport


class KafkaConsumer(BaseConsumer):
    def __init__(self, transport: KafkaTransport, group: str, partitions: list[int]) -> None:
        self.group = group
        self.partitions = tuple(partitions)
        self._t = transport
        self._where = transport.where
        self._meta_topic = transport.meta_topic
        self._lock = threading.Lock()
        self._seek: dict[int, int] = {}
        self._tables: dict[str, str] = {}  # topic → table
        self._streams: dict[tuple[str, int], int] = {}  # (topic, kafka partition) → stream id
        self._by_sid: dict[int, tuple[str, int]] = {}
        conf = s.consumer_settings(
            transport.config, transport.pipeline, s.group_id(transport.prefix, group)
        )
        self._c: Consumer = transport.client("consumer", Consumer, conf)
        # The registry as committed now; later registrations arrive through poll.
        meta = transport.meta()
        self._registry = Registry()  # fed by this consumer's own reads of the meta topic
        for entry in meta.registry.by_index.values():
            self._registry.put(entry)
            self._add(entry)
        self._meta_pos = meta.pos
        self._assign()

    def _add(self, entry: TableEntry) -> list[TopicPartition]:
        self._tables[entry.topic] = entry.table
        out = []
        for kp in self.partitions:
            sid = self._t.stream_id(entry, kp)
            self._streams[(entry.topic, kp)] = sid
            self._by_sid[sid] = (entry.topic, kp)
            out.append(TopicPartition(entry.topic, kp, self._seek.get(sid, OFFSET_STORED)))
        return out

    def _assign(self) -> None:
        tps = [TopicPartition(self._meta_topic, 0, self._meta_pos)]
        tps += [
            TopicPartition(topic, kp, self._seek.get(sid, OFFSET_STORED))
            for (topic, kp), sid in self._streams.items()
        ]
        try:
            self._c.assign(tps)
        except KafkaException as exc:
            raise translate(exc, self._where, f"assigning partitions to {self.group!r}") from exc

    def seek(self, positions: Mapping[int, int]) -> None:
        with self._lock:
            self._seek = dict(positions)
            self._assign()

    def poll(self, max_records: int, timeout: float) -> list[Delivered]:
        if max_records <= 0:
            return []
        deadline = time.monotonic() + max(timeout, 0.0)
        out: list[Delivered] = []
        with self._lock:
            c = self._c
            try:
                while True:
                    first = c.poll(max(0.0, deadline - time.monotonic()))
                    if first is not None:
                        self._take([first], out)
                        # Partitions' fetches land one by one: gather what comes within a
                        # moment, so a poll returns a full batch when the log has one.
                        while len(out) < max_records:
                            more = c.consume(max_records - len(out), _GATHER_S)
                            if not more:
                                break
                            self._take(more, out)
                    if out or time.monotonic() >= deadline:
                        return out
            except KafkaException as exc:
                raise translate(exc, self._where, f"reading as {self.group!r}") from exc

    def _take(self, msgs: list[Message], out: list[Delivered]) -> None:
        streams = self._streams
        tables = self._tables
        meta = self._meta_topic
        grow: list[TopicPartition] = []
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise translate(err, self._where, f"reading as {self.group!r}")
            topic = m.topic()
            kp = m.partition()
            if topic == meta:
                self._meta_pos = (m.offset() or 0) + 1
                key = m.key() or b""
                if isinstance(key, bytes) and key.startswith(_TABLE_KEY):
                    entry = self._registry.add(m.value() or b"")
                    if entry is not None:
                        grow += self._add(entry)
                continue
            sid = streams.get((topic or "", kp or 0))
            if sid is None:
                continue  # a partition this consumer no longer reads (after a reassign)
            out.append(
                Delivered(
                    sid, m.offset() or 0, tables[topic or ""], m.key() or b"", m.value() or b""
                )
            )
        if grow:
            try:
                self._c.incremental_assign(grow)
            except KafkaException as exc:
                raise translate(exc, self._where, "assigning a new table's topic") from exc

    def commit(self, positions: Mapping[int, int]) -> None:
        by_sid = self._by_sid
        tps = [TopicPartition(*by_sid[sid], off) for sid, off in positions.items() if sid in by_sid]
        if not tps:
            return
        with self._lock:
            try:
                self._c.commit(offsets=tps, asynchronous=False)
            except KafkaException as exc:
                raise translate(exc, self._where, f"committing offsets of {self.group!r}") from exc

    def close(self) -> None:
        with self._lock, contextlib.suppress(KafkaException, RuntimeError):
            self._c.close()
        self._t.forget(self)
