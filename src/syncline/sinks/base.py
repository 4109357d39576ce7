"""What every sink provides.

``apply`` takes a batch of changes plus the log positions they bring the
pipeline to, and makes both durable in one target transaction. That is the
exactly-once contract: after any crash, ``positions()`` says exactly which
changes the target already holds, and the dispatcher resumes the log there, so
a redelivered change is never applied twice.

Within a batch, changes of one key arrive in log order; a sink may fold them
(last image wins) but must keep that order's outcome.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from syncline.events import Change
from syncline.schema import TableSchema


@dataclass(slots=True)
class ApplyResult:
    applied: int = 0  # changes whose effect reached the target
    skipped: int = 0  # changes folded into a later one of the same key
    # changes that met a conflict (lost to the target's row, parked, or rewritten by a resolver)
    conflicts: int = 0


class Sink(abc.ABC):
    @abc.abstractmethod
    def check(self, schemas: Mapping[str, TableSchema] | None = None) -> list[str]:
        """Verify connectivity and target tables; raise a ``SynclineError`` if wrong.

        ``schemas`` (source shapes after the transforms, keyed by table id) are
        checked as ``prepare`` would, without creating anything.
        """

    @abc.abstractmethod
    def open(self, pipeline: str) -> None:
        """Connect and create the offsets table if needed."""

    @abc.abstractmethod
    def prepare(self, schemas: Mapping[str, TableSchema]) -> None:
        """Check (or, if configured, create) the target table of each source table.

        ``schemas`` is keyed by source ``schema.table``. A missing target table
        without ``create_tables``, or a target missing a source column or key,
        raises ``SchemaError`` naming the table and columns.
        """

    @abc.abstractmethod
    def positions(self) -> dict[int, int]:
        """Next log offset per partition, as committed with the rows."""

    @abc.abstractmethod
    def apply(self, changes: Sequence[Change], positions: Mapping[int, int]) -> ApplyResult:
        """Apply ``changes`` and store ``positions`` in one transaction."""

    @abc.abstractmethod
    def rebalance(
        self, worker: str, partitions: int, lease_s: float, *, leaving: bool = False
    ) -> set[int]:
        """Register ``worker``, renew its partition leases and settle its fair share.

        Returns the partitions it holds now. From then on ``apply`` checks, in its
        own transaction, that the worker still holds every partition it writes
        (see ``sinks/leases.py``). ``leaving`` gives everything back.
        """

    @abc.abstractmethod
    def close(self) -> None: ...
