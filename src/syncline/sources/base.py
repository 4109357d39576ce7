"""What every change source provides.

A source turns committed changes in a service's database into ``Change``s, in
commit order. It never decides durability: the pipeline publishes each batch to
the transport together with the batch's checkpoint and only then calls
``ack(checkpoint)``, which is when a source may let go of upstream history
(PostgreSQL: confirm the flush LSN so the slot can recycle WAL).

A checkpoint is a small JSON-able dict whose meaning only the source knows. On
restart the pipeline hands back the last checkpoint the transport stored, and
the source resumes after it without re-emitting anything it covers.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from syncline.events import Change
from syncline.schema import TableSchema

Checkpoint = dict[str, Any]

# About this many bytes of row data per batch at most (at least one change): with big
# rows, a batch of max_events changes would otherwise hold gigabytes at once.
BATCH_BYTES = 32 << 20
ProgressFn = Callable[[str, int, int | None], None]
"""Called during a snapshot as ``(table, rows_done, rows_estimated)``."""
RetainedFn = Callable[[int | None], None]
"""Called with the bytes of upstream log the source's position holds back (PostgreSQL: the
slot's retained WAL), from any thread, whenever the source measures it."""


@dataclass(slots=True)
class CaptureBatch:
    """Changes read in one go and the checkpoint that covers them.

    ``changes`` may be empty when only the checkpoint moved (a heartbeat, or a
    transaction on tables nobody captures).
    """

    changes: Sequence[Change]
    checkpoint: Checkpoint
    meta: dict[str, Any] = field(default_factory=dict)


class Source(abc.ABC):
    """A change-data-capture source; one instance serves one pipeline."""

    on_progress: ProgressFn | None = None
    on_retained: RetainedFn | None = None

    @abc.abstractmethod
    def check(self) -> list[str]:
        """Verify connectivity, tables and keys without changing anything.

        Returns human-readable notes; raises a ``SynclineError`` with a one-line
        message when something is wrong.
        """

    @abc.abstractmethod
    def describe(self) -> dict[str, TableSchema]:
        """Shape of every captured table, keyed by ``schema.table`` (needs a connection)."""

    @abc.abstractmethod
    def open(self, checkpoint: Checkpoint | None) -> None:
        """Connect and prepare capture (slot, publication, triggers).

        ``checkpoint`` is the last one the transport durably holds, or ``None``
        on a first start (the source then takes its initial snapshot if
        configured).
        """

    @abc.abstractmethod
    def read(self, max_changes: int, timeout: float) -> CaptureBatch | None:
        """Return up to ``max_changes`` committed changes, waiting at most ``timeout`` s.

        ``None`` means nothing new at all. Changes of one source transaction keep
        their order; a large transaction may span several batches.
        """

    @abc.abstractmethod
    def ack(self, checkpoint: Checkpoint) -> None:
        """Everything up to ``checkpoint`` is durable downstream; release it upstream."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections. Safe to call twice."""
