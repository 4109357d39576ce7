"""What the monitoring store keeps per change, and the ids that tie the stages together.

A change is known in the store by ``(pipeline, table, key, position)``: the source
table (``schema.table``), the encoded primary key as it travels in the log, and its
position in the source (PostgreSQL commit LSN and sequence in the transaction,
SQLite changelog sequence). Every stage can compute those four from what it holds,
so capture and apply write their timestamps into one row without talking to each
other.

The correlation id is a short digest of the same four fields: stable across
redeliveries and restarts (no log offset or arrival time goes in), computed only
where something is recorded or logged about a specific change.
"""

from __future__ import annotations

from hashlib import blake2b

from syncline.events import SourceInfo

# One row per change; a stage fills its own columns and leaves the rest None
# (the store keeps what another stage wrote).
COLUMNS = (
    "pipeline",
    "tbl",
    "key",
    "position",
    "cid",
    "op",
    "committed_us",  # source commit time
    "captured_us",  # read from the source
    "published_us",  # held durably by the log
    "log_partition",
    "log_offset",
    "applied_us",  # committed in the target (or by a dead-letter replay)
    "target",
    "failed_us",
    "failure",  # dead_lettered | held
    "error",
    "recorded_us",  # first written (retention counts from here)
)
Row = tuple[
    str,  # pipeline
    str,  # tbl
    str,  # key
    str,  # position
    str | None,  # cid
    str | None,  # op
    int | None,  # committed_us
    int | None,  # captured_us
    int | None,  # published_us
    int | None,  # log_partition
    int | None,  # log_offset
    int | None,  # applied_us
    str | None,  # target
    int | None,  # failed_us
    str | None,  # failure
    str | None,  # error
    int,  # recorded_us
]

DEAD_LETTERED, HELD = "dead_lettered", "held"


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def position_of(source: SourceInfo) -> str:
    """``LSN#seq`` (PostgreSQL) or ``#seq`` (SQLite): where the change sits in its source."""
    lsn = "" if source.lsn is None else format_lsn(source.lsn)
    return f"{lsn}#{'' if source.seq is None else source.seq}"


def correlation_id(pipeline: str, table: str, key: bytes, position: str) -> str:
    """16 hex digits naming one change from capture to apply (logs and the trace store)."""
    data = b"\x1f".join((pipeline.encode(), table.encode(), key, position.encode()))
    return blake2b(data, digest_size=8).hexdigest()


def commit_us(source: SourceInfo) -> int:
    return source.ts_us if source.ts_us is not None else source.ts_ms * 1000
