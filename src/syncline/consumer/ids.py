"""A stable id for one change event, the same whichever form the event arrives in.

The id is built from the event's ``source`` block and ``op``, never from delivery
metadata (log offsets, arrival time), so every redelivery of one change maps to
the same id. Fields, in order, ``:``-separated (text fields percent-encoded so a
``:`` in a name cannot make two ids collide)::

    connector : name : db : schema : table : lsn : seq : op : ts_us [: row]

Why that is unique (docs/consumer.md has the long form):

* ``name`` is the pipeline: two pipelines never share an id space, even when
  their source databases have the same name and overlapping positions.
* Streamed changes are told apart by their position in the source. PostgreSQL:
  ``lsn`` is the commit LSN of the transaction and ``seq`` numbers every change
  inside it (across tables), so ``(lsn, seq)`` is unique per server. SQLite:
  ``seq`` is the changelog row (AUTOINCREMENT, never reused); a key-changing
  update becomes a ``d`` and a ``c`` event with one ``seq``, which ``op`` separates.
* ``ts_us`` (the source commit time, ``ts_ms`` x 1000 when absent) guards against
  positions coming round again: a rebuilt PostgreSQL cluster or a recreated
  SQLite changelog counts from low numbers again, and only the same position
  *and* the same commit microsecond would collide.
* Snapshot reads (``op`` ``r``) share one position per snapshot, so the row is
  part of the id: the first 128 bits of the SHA-256 of ``after`` as canonical
  JSON (keys sorted). A table has no two identical rows unless it lacks a key.

``txId`` is left out: ``lsn`` already names the transaction, and xids wrap.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import msgspec

from syncline.errors import DataError
from syncline.events import Change, ChangeEvent, Op

EventLike = ChangeEvent | Change | Mapping[str, Any]
IdOf = Callable[[Any], str]

_HINT = "not a syncline change event? pass id_of= to say how to identify it"
_TEXT = ("connector", "name", "db", "schema", "table")


def event_id(event: EventLike) -> str:
    """The id of ``event``: a ``ChangeEvent``, a ``Change``, or its value decoded from JSON.

    Raises ``DataError`` (one line) when the event lacks a field the id needs.
    """
    if isinstance(event, Change):
        event = event.event
    if isinstance(event, ChangeEvent):
        s = event.source
        src: Mapping[str, Any] = {
            "connector": s.connector,
            "name": s.name,
            "db": s.db,
            "schema": s.schema,
            "table": s.table,
            "ts_us": s.ts_us,
            "ts_ms": s.ts_ms,
            "lsn": s.lsn,
            "seq": s.seq,
            "snapshot": s.snapshot,
        }
        return _build(src, event.op, event.after)
    if isinstance(event, Mapping):
        block = event.get("source")
        if not isinstance(block, Mapping):
            raise DataError(f"cannot derive an event id: the event has no source block ({_HINT})")
        return _build(block, event.get("op"), event.get("after"))
    raise DataError(
        f"cannot derive an event id from a {type(event).__name__}: expected a ChangeEvent, "
        f"a Change or a decoded event dict ({_HINT})"
    )


def call_id_of(id_of: IdOf, event: Any) -> str:
    """Run a user's ``id_of`` and check it gave a usable id."""
    eid = id_of(event)
    if not isinstance(eid, str) or not eid:
        raise DataError(f"id_of returned {eid!r}; it must return a non-empty string")
    return eid


def _build(src: Mapping[str, Any], op: Any, after: Any) -> str:
    parts = []
    for name in _TEXT:
        value = src.get(name)
        if not isinstance(value, str):
            raise DataError(f"cannot derive an event id: source.{name} is {_what(value)} ({_HINT})")
        parts.append(quote(value, safe=""))
    lsn, seq = _int_or_none(src, "lsn"), _int_or_none(src, "seq")
    if not isinstance(op, str) or op not in Op.ALL:
        raise DataError(f"cannot derive an event id: op is {_what(op)} ({_HINT})")
    ts = _int_or_none(src, "ts_us")
    if ts is None:
        ts_ms = _int_or_none(src, "ts_ms")
        if ts_ms is None:
            raise DataError(f"cannot derive an event id: source.ts_ms is missing ({_HINT})")
        ts = ts_ms * 1000
    read = op == Op.READ or src.get("snapshot", "false") in ("true", "last")
    if read and lsn is None and seq is None:
        raise DataError(
            f"cannot derive an event id: snapshot event without source.lsn or source.seq ({_HINT})"
        )
    if not read and seq is None:
        raise DataError(f"cannot derive an event id: source.seq is missing ({_HINT})")
    parts += ["" if lsn is None else str(lsn), "" if seq is None else str(seq), op, str(ts)]
    if read:
        parts.append(_row_digest(after))
    return ":".join(parts)


def _row_digest(after: Any) -> str:
    if not isinstance(after, Mapping):
        raise DataError(f"cannot derive an event id: snapshot event without an after row ({_HINT})")
    try:
        canonical = msgspec.json.encode(after, order="sorted")
    except (TypeError, msgspec.EncodeError) as exc:
        raise DataError(f"cannot derive an event id: the after row is not JSON ({exc})") from exc
    return hashlib.sha256(canonical).hexdigest()[:32]


def _int_or_none(src: Mapping[str, Any], name: str) -> int | None:
    value = src.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"cannot derive an event id: source.{name} is {_what(value)} ({_HINT})")
    return value


def _what(value: Any) -> str:
    return "missing" if value is None else f"{type(value).__name__} {str(value)[:40]!r}"
