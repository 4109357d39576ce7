"""The capture side: one Kafka transaction per publish, records and checkpoint together.

``transactional.id`` is per log (``syncline-<prefix>``): opening a producer
fences any older one (a zombie capture process) and aborts its open
transaction, so the checkpoint read after opening covers exactly the records
consumers can ever see. A first record of a table also registers the table (and
so its stream ids) in the meta topic, inside the same transaction.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from zlib import crc32

import msgspec
from confluent_kafka import KafkaError, KafkaException, Producer

from syncline.errors import ConfigError, SynclineError, TransportError
from syncline.transports.base import Checkpoint, Record
from syncline.transports.base import Producer as BaseProducer
from syncline.transports.kafka import settings as s
from syncline.transports.kafka.errors import translate
from syncline.transports.kafka.state import TABLE_KEY, TableEntry, encode_entry

if TYPE_CHECKING:
    from syncline.transports.kafka.transport import KafkaTransport

_encode_checkpoint = msgspec.json.Encoder().encode
_decode_checkpoint = msgspec.json.Decoder(dict).decode
CHECKPOINT_KEY = b"checkpoint"


class KafkaProducer(BaseProducer):
    """Transactional: a publish is committed whole or aborted whole."""

    def __init__(self, transport: KafkaTransport) -> None:
        self._t = transport
        self._where = transport.where
        self._timeout = transport.timeout
        self._n = transport.partitions
        self._failed: KafkaError | None = None
        self._broken: str | None = None  # set when the transaction state is unknown
        conf = s.producer_settings(transport.config, transport.pipeline, transport.txn_id)
        conf["on_delivery"] = self._on_delivery
        self._p: Producer = transport.client("producer", Producer, conf)
        try:
            self._p.init_transactions(self._timeout)
        except KafkaException as exc:
            raise translate(
                exc, self._where, f"starting transactions as {transport.txn_id}"
            ) from exc
        # Read after init_transactions: a fenced predecessor's transaction is settled by now.
        registry = transport.meta().registry
        self._topics: dict[str, str] = {t: e.topic for t, e in registry.by_table.items()}
        self._taken = {e.topic: e.table for e in registry.by_table.values()}
        self._next_index = registry.next_index()
        raw = transport.last_checkpoint()
        self._checkpoint: Checkpoint | None = None if raw is None else _decode_checkpoint(raw)

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None and self._failed is None:
            self._failed = err

    def _register(self, tables: list[str]) -> list[TableEntry]:
        """Topics for tables seen for the first time; their registry entries to publish."""
        prefix = self._t.prefix
        entries = []
        internal = {self._t.meta_topic, self._t.checkpoint_topic}
        for i, table in enumerate(tables):
            topic = s.table_topic(prefix, table)
            other = self._taken.get(topic)
            if other is not None or topic in internal or len(topic) > s.MAX_TOPIC:
                raise ConfigError(
                    f"table {table} cannot get kafka topic {topic} "
                    f"({'used by ' + other if other else 'reserved or too long'}); "
                    "rename it with a route transform or set transport.topic_prefix"
                )
            entries.append(TableEntry(table, topic, self._next_index + i))
        config = s.data_topic_config(self._t.config)
        self._t.ensure_topics({e.topic: (self._n, config) for e in entries})
        return entries

    def publish(self, records: Sequence[Record], checkpoint: Checkpoint) -> None:
        if self._broken is not None:
            raise TransportError(self._broken)
        topics = self._topics
        new = [t for t in dict.fromkeys(r.table for r in records) if t not in topics]
        entries = self._register(new) if new else []
        p = self._p
        n = self._n
        produce = p.produce
        self._failed = None
        doing = f"publishing {len(records)} records"
        committing = False
        try:
            p.begin_transaction()
            for e in entries:
                produce(self._t.meta_topic, encode_entry(e), (TABLE_KEY + e.table).encode(), 0)
            batch = {**topics, **{e.table: e.topic for e in entries}}
            for r in records:
                key = r.key
                part = crc32(key) % n if n > 1 else 0  # partition_for, inlined: the hot path
                try:
                    produce(batch[r.table], r.value, key, part)
                except BufferError:
                    self._produce_when_room(batch[r.table], r.value, key, part)
            produce(self._t.checkpoint_topic, _encode_checkpoint(checkpoint), CHECKPOINT_KEY, 0)
            committing = True
            p.commit_transaction(self._timeout)
        except KafkaException as exc:
            raise self._settle(exc, doing, committing) from exc
        except BaseException:
            self._settle(None, doing, committing)
            raise
        for e in entries:
            topics[e.table] = e.topic
            self._taken[e.topic] = e.table
        self._next_index += len(entries)
        self._checkpoint = checkpoint

    def _produce_when_room(self, topic: str, value: bytes, key: bytes, part: int) -> None:
        """The local queue is full: serve deliveries until the record fits."""
        deadline = time.monotonic() + self._timeout
        while True:
            self._p.poll(0.05)
            try:
                self._p.produce(topic, value, key, part)
                return
            except BufferError:
                if time.monotonic() > deadline:
                    raise TransportError(
                        f"kafka at {self._where}: the producer queue stayed full for "
                        f"{self._timeout:.0f}s; is the broker accepting writes?"
                    ) from None

    def _settle(self, exc: KafkaException | None, doing: str, committing: bool) -> SynclineError:
        """After a failed publish: abort when that surely stores nothing, else give up.

        Before the commit, or when the commit failed in a way that needs an abort,
        aborting leaves nothing behind and the producer stays usable. When the
        commit's outcome is unknown (a timeout) or the producer was fenced,
        retrying the same records here could store them twice, so it refuses
        further publishes; a new producer reads the checkpoint really committed.
        """
        err: KafkaError | None = self._failed
        if err is None and exc is not None and exc.args and isinstance(exc.args[0], KafkaError):
            err = exc.args[0]
        out = (
            translate(err, self._where, doing)
            if err is not None
            else TransportError(f"kafka at {self._where}: {doing} failed")
        )
        fatal = err is not None and err.fatal()
        if not fatal and (not committing or (err is not None and err.txn_requires_abort())):
            try:
                self._p.abort_transaction(self._timeout)
                return out
            except KafkaException:
                pass
        self._broken = (
            f"kafka at {self._where}: a publish failed and its outcome is unknown ({out}); "
            "open a new producer and continue from its checkpoint()"
        )
        return out

    def checkpoint(self) -> Checkpoint | None:
        return self._checkpoint

    def close(self) -> None:
        self._broken = self._broken or "producer closed"
        with contextlib.suppress(KafkaException):
            self._p.flush(min(self._timeout, 5.0))
        self._t.forget(self)
