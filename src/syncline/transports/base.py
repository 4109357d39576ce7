"""What every transport (durable log) provides.

The log is split into partitions; a record's partition is chosen from its key,
so all changes to one row stay in one partition, in order. Consumers read
partitions from explicit offsets ("next offset to read", as in Kafka); the
authoritative offsets for exactly-once live in the sink, committed with the
rows, and are handed to ``Consumer.seek`` on start. ``Consumer.commit`` records
progress in the transport too (for retention and monitoring).

A producer stores the source checkpoint atomically with (or after) the records
it covers, so a restarted capture never re-publishes what the log already has.
"""

from __future__ import annotations

import abc
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

Checkpoint = dict[str, Any]


class Record(msgspec.Struct, frozen=True, array_like=True):
    """One change on its way into the log: table, encoded key and value."""

    table: str
    key: bytes
    value: bytes


class Delivered(msgspec.Struct, frozen=True, array_like=True):
    """A record read back from the log, with where it sits."""

    partition: int
    offset: int
    table: str
    key: bytes
    value: bytes


def partition_for(key: bytes, partitions: int) -> int:
    """Stable key → partition mapping shared by every transport."""
    return zlib.crc32(key) % partitions if partitions > 1 else 0


class Producer(abc.ABC):
    @abc.abstractmethod
    def publish(self, records: Sequence[Record], checkpoint: Checkpoint) -> None:
        """Durably append ``records`` (in order) and remember ``checkpoint``.

        When this returns, the records survive a crash of this process and of
        the machine (fsync'd or replicated). Raises ``TransportError`` (retried;
        ``DiskError`` for a full or read-only disk) or ``StorageError`` (operator must
        act); on error nothing is half-stored in a way that loses or duplicates records
        after a retry.
        """

    @abc.abstractmethod
    def checkpoint(self) -> Checkpoint | None:
        """The last checkpoint stored by ``publish`` (``None`` if never)."""

    @abc.abstractmethod
    def close(self) -> None: ...


class Consumer(abc.ABC):
    partitions: Sequence[int]

    @abc.abstractmethod
    def seek(self, positions: Mapping[int, int]) -> None:
        """Continue each partition from its given next offset (others: from committed)."""

    @abc.abstractmethod
    def poll(self, max_records: int, timeout: float) -> list[Delivered]:
        """Return up to ``max_records`` records, waiting at most ``timeout`` s.

        Per partition, records come in offset order and each is returned once
        per seek.
        """

    @abc.abstractmethod
    def commit(self, positions: Mapping[int, int]) -> None:
        """Record the group's next offsets (after the sink has committed them)."""

    @abc.abstractmethod
    def close(self) -> None: ...


class Transport(abc.ABC):
    partitions: int

    @abc.abstractmethod
    def check(self) -> list[str]:
        """Verify the log is reachable and writable; raise a ``SynclineError`` if not."""

    @abc.abstractmethod
    def producer(self) -> Producer: ...

    @abc.abstractmethod
    def consumer(self, group: str, partitions: Sequence[int] | None = None) -> Consumer:
        """A consumer of ``group`` reading ``partitions`` (default: all)."""

    @abc.abstractmethod
    def end_offsets(self) -> dict[int, int]:
        """Next offset to be written per partition (how far the log reaches now)."""

    @abc.abstractmethod
    def put_meta(self, name: str, value: str) -> None:
        """Store a small named value (the source's table shapes) durably beside the log.

        Capture and apply may run in different processes or machines: what one
        side learned about the source reaches the other through here.
        """

    @abc.abstractmethod
    def get_meta(self, name: str) -> str | None:
        """The value last stored under ``name``, or ``None``."""

    @abc.abstractmethod
    def close(self) -> None: ...
