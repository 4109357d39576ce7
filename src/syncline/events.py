"""The change event: Debezium's value layout, encoded with msgspec.

A consumer written for Debezium's JSON events (``before``/``after``/``source``/
``op``/``ts_ms``) reads syncline's unchanged. The event's key (primary-key
columns) travels beside the value, as in Kafka, so partitioning never has to
decode the value.

Column values are JSON-natural and lossless (see docs/events.md): integers and
booleans as JSON, floats as JSON numbers (NaN/±Infinity as strings), numeric,
dates, times, timestamps, uuid and json as strings in PostgreSQL's ISO text form,
bytea as base64, arrays as JSON lists.
"""

from __future__ import annotations

import time
from typing import Any, Final

import msgspec

Row = dict[str, Any]


class Op:
    """Debezium operation codes."""

    CREATE: Final = "c"
    UPDATE: Final = "u"
    DELETE: Final = "d"
    READ: Final = "r"  # a row read by the initial snapshot
    TRUNCATE: Final = "t"

    ALL: Final = frozenset({"c", "u", "d", "r", "t"})


class SourceInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Where and when the change happened (Debezium's ``source`` block)."""

    version: str = "0.1.0"
    connector: str
    name: str
    ts_ms: int
    ts_us: int | None = None
    snapshot: str = "false"  # "true" during the initial snapshot, "last" on its final row
    db: str
    schema: str
    table: str
    txId: int | None = None
    lsn: int | None = None
    seq: int | None = None  # order inside the source transaction or changelog
    # replication origin the source transaction was written under (PostgreSQL), if any:
    # the node a forwarded change started from (docs/bidirectional.md)
    origin: str | None = None


class Poison(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A change the source could not read (e.g. text that is not valid UTF-8).

    The source publishes it in the change's place, in log order, so the apply
    side dead-letters it exactly there and holds the later changes of its key;
    the stream goes on. ``before``/``after`` keep the stored row images as they
    were (base64 of the raw bytes), ``error`` says what is wrong and what to do.
    """

    error: str
    before: str | None = None
    after: str | None = None


class ChangeEvent(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One committed row change (the Debezium envelope's value).

    ``unchanged`` names columns the source did not send because they were not
    modified (PostgreSQL's unchanged TOAST values); sinks keep the target's value
    for them instead of blanking it. Debezium marks these with a placeholder
    string; a list is cheaper to check and cannot collide with real data.
    """

    before: Row | None = None
    after: Row | None = None
    source: SourceInfo
    op: str
    ts_ms: int
    ts_us: int | None = None
    unchanged: list[str] | None = None
    poison: Poison | None = None  # set instead of the images when the source could not read them

    @property
    def table_id(self) -> str:
        return f"{self.source.schema}.{self.source.table}"

    @property
    def row(self) -> Row | None:
        """The row image that identifies the key: ``after`` unless deleted."""
        return self.before if self.op == Op.DELETE else self.after


class Change(msgspec.Struct, array_like=True):
    """An event together with its key: what sources emit and sinks apply."""

    key: Row
    event: ChangeEvent


_value_encoder = msgspec.json.Encoder()
_value_decoder = msgspec.json.Decoder(ChangeEvent)
_key_decoder = msgspec.json.Decoder(dict[str, Any])


def encode_value(event: ChangeEvent) -> bytes:
    return _value_encoder.encode(event)


def decode_value(data: bytes | memoryview) -> ChangeEvent:
    return _value_decoder.decode(data)


def encode_key(key: Row) -> bytes:
    return _value_encoder.encode(key)


def decode_key(data: bytes | memoryview) -> Row:
    return _key_decoder.decode(data)


def now_us() -> int:
    return time.time_ns() // 1000
