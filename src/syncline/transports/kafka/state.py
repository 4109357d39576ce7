"""Reading syncline's state back from Kafka: the meta topic and the last committed records.

Everything here reads with ``isolation.level=read_committed``: a table
registration or checkpoint from an aborted (or still open) transaction is never
seen. Reading "to the end" relies on partition-EOF events rather than on
offsets, because transaction markers occupy offsets no record has.
"""

from __future__ import annotations

import time

import msgspec
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from syncline.errors import StorageError, TransportError
from syncline.transports.kafka.errors import translate

TABLE_KEY = "table:"  # table registry: table → (topic, index)
USER_KEY = "user:"  # Transport.put_meta values
PARTITIONS_KEY = "syncline:partitions"

_POLL_S = 0.2


class TableEntry(msgspec.Struct, frozen=True):
    """A table's topic and its index, from which its stream ids derive."""

    table: str
    topic: str
    index: int


encode_entry = msgspec.json.Encoder().encode
_decode_entry = msgspec.json.Decoder(TableEntry).decode


class Registry:
    """Table topics in order of registration; indices never change once committed."""

    def __init__(self) -> None:
        self.by_table: dict[str, TableEntry] = {}
        self.by_topic: dict[str, TableEntry] = {}
        self.by_index: dict[int, TableEntry] = {}

    def add(self, raw: bytes) -> TableEntry | None:
        """Record an entry from the meta topic; the entry if it is new."""
        try:
            entry = _decode_entry(raw)
        except msgspec.DecodeError as exc:
            raise StorageError(f"unreadable table registration in the meta topic ({exc})") from exc
        known = self.by_table.get(entry.table)
        if known is not None:
            if known != entry:
                raise StorageError(
                    f"table {entry.table} is registered twice ({known.topic} #{known.index} and "
                    f"{entry.topic} #{entry.index}); the meta topic was changed by hand"
                )
            return None
        self.put(entry)
        return entry

    def put(self, entry: TableEntry) -> None:
        clash = self.by_index.get(entry.index) or self.by_topic.get(entry.topic)
        if clash is not None and clash != entry:
            raise StorageError(
                f"tables {clash.table} and {entry.table} share topic {entry.topic} or index "
                f"{entry.index}; the meta topic was changed by hand"
            )
        self.by_table[entry.table] = self.by_topic[entry.topic] = self.by_index[entry.index] = entry

    def next_index(self) -> int:
        return max(self.by_index, default=-1) + 1


def _eof(msg_err: KafkaError) -> bool:
    return msg_err.code() == KafkaError._PARTITION_EOF


class MetaLog:
    """The latest value of every key of the meta topic, read incrementally."""

    def __init__(self, consumer: Consumer, topic: str, where: str, timeout: float) -> None:
        self._c = consumer
        self._topic = topic
        self._where = where
        self._timeout = timeout
        self.values: dict[str, bytes] = {}
        self.registry = Registry()
        self.pos = 0  # next offset to read
        try:
            consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        except KafkaException as exc:
            raise translate(exc, where, f"reading {topic}") from exc

    def refresh(self, wait_for: int | None = None) -> None:
        """Read what is committed now; with ``wait_for``, wait until that offset was read.

        Without it, reading stops at the end of what is committed: an open
        transaction's records are picked up by a later refresh.
        """
        c = self._c
        doing = f"reading {self._topic}"
        try:
            until = wait_for
            if until is None:
                until = c.get_watermark_offsets(
                    TopicPartition(self._topic, 0), timeout=self._timeout, cached=False
                )[1]
            deadline = time.monotonic() + self._timeout
            while self.pos < until:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TransportError(
                        f"kafka at {self._where}: timed out {doing} (at offset {self.pos} of {until})"
                    )
                msg = c.poll(min(_POLL_S, left))
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if not _eof(err):
                        raise translate(err, self._where, doing)
                    self.pos = max(self.pos, msg.offset() or 0)
                    if wait_for is None:
                        break  # the end of what is committed
                    continue
                self.pos = (msg.offset() or 0) + 1
                self.apply(msg.key(), msg.value())
        except KafkaException as exc:
            raise translate(exc, self._where, doing) from exc

    def apply(self, raw_key: bytes | str | None, raw_value: bytes | str | None) -> None:
        key = raw_key.decode("utf-8", "replace") if isinstance(raw_key, bytes) else raw_key or ""
        value = raw_value.encode() if isinstance(raw_value, str) else raw_value or b""
        self.values[key] = value
        if key.startswith(TABLE_KEY):
            self.registry.add(value)

    def close(self) -> None:
        self._c.close()


def watermarks(
    c: Consumer, tps: list[tuple[str, int]], where: str, timeout: float
) -> dict[tuple[str, int], tuple[int, int]]:
    """Low and high watermark of each partition (the high one counts markers too)."""
    try:
        return {
            tp: c.get_watermark_offsets(TopicPartition(*tp), timeout=timeout, cached=False)
            for tp in tps
        }
    except KafkaException as exc:
        raise translate(exc, where, "reading offsets") from exc


def last_records(
    c: Consumer, marks: dict[tuple[str, int], tuple[int, int]], where: str, timeout: float
) -> dict[tuple[str, int], tuple[int, bytes] | None]:
    """The last committed record below each high watermark: ``(offset, value)``, or ``None``.

    Reads backwards in growing windows from the high watermark: the tail of a
    partition holds transaction markers and maybe aborted records, which have
    offsets but are never delivered.
    """
    out: dict[tuple[str, int], tuple[int, bytes] | None] = {}
    todo: dict[tuple[str, int], tuple[int, int]] = {}  # tp → (low, exclusive limit)
    doing = "reading the end of the log"
    deadline = time.monotonic() + timeout
    for tp, (lo, hi) in marks.items():
        if hi <= lo:
            out[tp] = None
        else:
            todo[tp] = (lo, hi)
    try:
        window = 16
        while todo:
            starts = {tp: max(lo, hi - window) for tp, (lo, hi) in todo.items()}
            c.assign([TopicPartition(t, p, starts[(t, p)]) for t, p in todo])
            found: dict[tuple[str, int], tuple[int, bytes]] = {}
            done: set[tuple[str, int]] = set()
            while len(done) < len(todo):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TransportError(f"kafka at {where}: timed out {doing}")
                msg = c.poll(min(_POLL_S, left))
                if msg is None:
                    continue
                err = msg.error()
                if err is not None and not _eof(err):
                    raise translate(err, where, doing)
                tp = (msg.topic() or "", msg.partition() or 0)
                if tp not in todo or tp in done:
                    continue
                if err is not None:
                    done.add(tp)  # the end of what is committed
                    continue
                off = msg.offset() or 0
                limit = todo[tp][1]
                if off < limit:
                    found[tp] = (off, msg.value() or b"")
                if off >= limit - 1:
                    done.add(tp)
            nxt: dict[tuple[str, int], tuple[int, int]] = {}
            for tp, (lo, _) in todo.items():
                if tp in found:
                    out[tp] = found[tp]
                elif starts[tp] <= lo:
                    out[tp] = None
                else:
                    nxt[tp] = (lo, starts[tp])
            todo = nxt
            window *= 8
        c.assign([])
    except KafkaException as exc:
        raise translate(exc, where, doing) from exc
    return out
