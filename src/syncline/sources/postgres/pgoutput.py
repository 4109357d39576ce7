"""Decoder for the pgoutput logical replication protocol (version 1) into ``Change``s.

Pure Python, tuned for the hot path: ``struct.unpack_from`` on the message
bytes, relation metadata (names, converters, key positions) cached per relation
OID and rebuilt only when the server resends a Relation message, one dict per
row image. Row images go through a function generated per relation (see
``_compile``); the generic ``Decoder._tuple`` handles what it does not.
Message layouts: PostgreSQL docs, "Logical Replication Message Formats".

The decoder also keeps the position bookkeeping the source's checkpoints need:
the commit LSN and per-transaction sequence number of every change, and the
end LSN of the last complete transaction. Transactions written under a
replication origin in ``skip_origins`` are dropped whole (loop prevention, see
origins.py); their end LSN still counts, so the slot moves past them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from struct import Struct
from typing import Any

import msgspec

from syncline.errors import DataError, SchemaError
from syncline.events import Change, ChangeEvent, Row, SourceInfo
from syncline.sources.postgres.values import TEXT, BytesConv, Converter

PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in Unix microseconds
DELETE_MESSAGE = "syncline.delete"  # logical message prefix of sinks/postgres.py


class _DeleteMessage(msgspec.Struct):
    """The body of a ``syncline.delete`` message: table, and (column, type OID, text) triples."""

    s: str
    t: str
    b: list[tuple[str, int, str | None]]


_message_decoder = msgspec.json.Decoder(_DeleteMessage)

_U32 = Struct(">I")
_I32 = Struct(">i")
_U16 = Struct(">H")
_BEGIN = Struct(">QqI")  # final (commit) LSN, commit time, xid
_COMMIT = Struct(">BQQq")  # flags, commit LSN, end LSN, commit time
_TRUNC = Struct(">IB")  # relation count, options
_COLTAIL = Struct(">Ii")  # type OID, typmod
_FIRST = Struct(">HBi")  # TupleData column count, then the first column's kind and length

_N, _U, _T, _K, _O = 110, 117, 116, 75, 79  # 'n' 'u' 't' 'K' 'O'

ConverterLookup = Callable[[int], Converter]
RowImage = Callable[[bytes, int], Row | None]
RowImageEnd = Callable[[bytes, int], tuple[Row, int] | None]
Pick = Callable[[Row], Row]


@dataclass(slots=True)
class Relation:
    """One table as the last Relation message described it, ready for row decoding."""

    oid: int
    schema: str
    name: str
    names: tuple[str, ...]
    type_oids: tuple[int, ...]
    convs: tuple[BytesConv, ...]
    ident: tuple[str, ...]  # replica identity columns (what a 'K' old tuple carries)
    key: tuple[str, ...]  # the event key: primary key, else replica identity
    captured: bool
    image: RowImage  # generated TupleData decoder (_compile); None: use _tuple instead
    image_end: RowImageEnd  # the same, also returning where the tuple ends
    key_of: Pick  # row → {key column: row[column]}
    key_get: Pick  # row → {key column: row.get(column)}
    ident_of: Pick  # row → {replica identity column: row[column]}


def _cstr(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(0, pos)
    return data[pos:end].decode(), end + 1


def _no_fast_path(data: bytes, pos: int) -> None:
    return None


@lru_cache(maxsize=256)
def _compile(names: tuple[str, ...], convs: tuple[BytesConv, ...]) -> tuple[RowImage, RowImageEnd]:
    """Generate TupleData decoders for one column layout, the column loop unrolled.

    They do what ``Decoder._tuple`` does for rows of 't' and 'n' columns, with
    text converters inlined, and give up (None) on anything else: an unchanged
    TOAST column, a wrong column count, any exception. The caller then runs
    the generic decoder, which yields the same row or raises the same error, so
    the two paths cannot disagree. Names enter the source only through
    ``repr()`` and converters only as closure cells: no name can inject code.
    ``image`` returns the row; ``image_end`` also where the tuple ends.
    """
    n = len(names)
    if n == 0:
        return _no_fast_path, _no_fast_path
    body = ["    try:"]
    for i, conv in enumerate(convs):
        text = conv is TEXT.from_bytes
        value = "data[pos - ln:pos].decode()" if text else f"c{i}(data[pos - ln:pos])"
        if i == 0:
            # One unpack reads the column count and column 0's kind and length; a short
            # row of NULLs makes it fail, and the generic decoder takes that row.
            body += [
                "      count, kind, ln = first(data, pos)",
                f"      if count != {n}: return None",
            ]
            read_len, header = [], 3  # bytes before column 0's length: count, kind
        else:
            body.append("      kind = data[pos]")
            read_len, header = ["        ln = unpack(data, pos + 1)[0]"], 1
        body += [
            "      if kind == 116:",
            *read_len,
            f"        pos += {header + 4} + ln",
            f"        v{i} = {value}",
            "      elif kind == 110:",
            f"        v{i} = None",
            f"        pos += {header}",
            "      else: return None",
        ]
    body.append("    except Exception: return None")
    row = "{" + ", ".join(f"{name!r}: v{i}" for i, name in enumerate(names)) + "}"
    source = "\n".join(
        [
            f"def make(unpack, first, {', '.join(f'c{i}' for i in range(n))}):",
            "  def image(data, pos):",
            *body,
            f"    return {row}",
            "  def image_end(data, pos):",
            *body,
            f"    return {row}, pos",
            "  return image, image_end",
        ]
    )
    namespace: dict[str, Any] = {}
    exec(source, namespace)  # a fixed template; names only through repr()
    made: tuple[RowImage, RowImageEnd] = namespace["make"](
        _I32.unpack_from, _FIRST.unpack_from, *convs
    )
    return made


@lru_cache(maxsize=256)
def _compile_pick(cols: tuple[str, ...], get: bool) -> Pick:
    """``row → {c: row[c] for c in cols}`` (``row.get(c)`` if ``get``), minus the comprehension's setup."""
    items = ", ".join(f"{c!r}: row.get({c!r})" if get else f"{c!r}: row[{c!r}]" for c in cols)
    pick: Pick = eval(f"lambda row: {{{items}}}", {"__builtins__": {}})  # names only through repr()
    return pick


class Decoder:
    """Turns pgoutput messages into ``Change``s appended to a caller's list.

    ``keys`` maps ``schema.table`` to its key columns (from the catalog); a
    relation not in it is ignored (a shared publication may carry more).
    ``skip`` is ``(commit_lsn, seq)`` of the last change already published:
    anything at or before it is dropped when the server resends it.
    ``skip_origins`` names replication origins whose transactions are not emitted.
    """

    def __init__(
        self,
        pipeline: str,
        db: str,
        keys: Mapping[str, tuple[str, ...]],
        converter: ConverterLookup,
        skip: tuple[int, int] | None = None,
        skip_origins: frozenset[str] = frozenset(),
    ) -> None:
        self.pipeline = pipeline
        self.db = db
        self.keys = dict(keys)
        self.converter = converter
        self.relations: dict[int, Relation] = {}
        self.skip = skip
        self.in_txn = False
        self.xid = 0
        self.commit_lsn = 0
        self.ts_us = 0
        self.seq = 0
        self.skip_seq = -1  # changes of the current transaction with seq <= this are dropped
        self.skip_origins = skip_origins
        self.origin: str | None = None  # replication origin of the current transaction
        self.skipped_txns = 0  # transactions dropped for their origin
        self.end_lsn = 0  # end of the last complete transaction seen

    # -- dispatch ---------------------------------------------------------------

    def feed(self, data: bytes, out: list[Change], now_us: int) -> None:
        kind = data[0]
        if kind == 73:  # 'I'
            self._insert(data, out, now_us)
        elif kind == 85:  # 'U'
            self._update(data, out, now_us)
        elif kind == 68:  # 'D'
            self._delete(data, out, now_us)
        elif kind == 66:  # 'B'
            self._begin(data)
        elif kind == 67:  # 'C'
            _flags, _commit, self.end_lsn, _ts = _COMMIT.unpack_from(data, 1)
            self.in_txn = False
        elif kind == 82:  # 'R'
            self._relation(data)
        elif kind == 79:  # 'O': sent right after 'B' when the transaction has an origin
            self._origin(data)
        elif kind == 84:  # 'T'
            self._truncate(data, out, now_us)
        elif kind == 77:  # 'M': a logical message; syncline's sinks send unmatched deletes
            self._message(data, out, now_us)
        # 'Y' (type) carries nothing we emit.

    def _begin(self, data: bytes) -> None:
        lsn, ts, self.xid = _BEGIN.unpack_from(data, 1)
        self.commit_lsn = lsn
        self.ts_us = ts + PG_EPOCH_US
        self.seq = 0
        self.in_txn = True
        self.origin = None
        skip = self.skip
        if skip is None or lsn > skip[0]:
            self.skip = None
            self.skip_seq = -1
        elif lsn == skip[0]:
            self.skip_seq = skip[1]
        else:
            self.skip_seq = 1 << 62  # the whole transaction was published before

    def _origin(self, data: bytes) -> None:
        name, _ = _cstr(data, 9)  # after the origin's own commit LSN
        # syncline's sinks qualify origins with the target database: "x@db" (origins.py)
        self.origin = short = name.split("@", 1)[0]
        if short in self.skip_origins or name in self.skip_origins:
            self.skip_seq = 1 << 62  # drop every change; Relation messages are still read
            self.skipped_txns += 1

    def _relation(self, data: bytes) -> None:
        (oid,) = _U32.unpack_from(data, 1)
        schema, pos = _cstr(data, 5)
        name, pos = _cstr(data, pos)
        schema = schema or "pg_catalog"
        pos += 1  # replica identity setting; the flags below say which columns
        (ncols,) = _U16.unpack_from(data, pos)
        pos += 2
        names: list[str] = []
        oids: list[int] = []
        ident: list[str] = []
        for _ in range(ncols):
            flags = data[pos]
            col, pos = _cstr(data, pos + 1)
            typ, _typmod = _COLTAIL.unpack_from(data, pos)
            pos += 8
            names.append(col)
            oids.append(typ)
            if flags & 1:
                ident.append(col)
        table_id = f"{schema}.{name}"
        key = self.keys.get(table_id)
        captured = key is not None
        if key is None:
            key = tuple(ident)
        missing = [k for k in key if k not in names]
        if captured and missing:
            raise SchemaError(
                f"table {table_id} no longer has key column(s) {', '.join(missing)} "
                f"(source of pipeline {self.pipeline})"
            )
        convs = tuple(self.converter(t).from_bytes for t in oids)
        image, image_end = _compile(tuple(names), convs)
        self.relations[oid] = Relation(
            oid=oid,
            schema=schema,
            name=name,
            names=tuple(names),
            type_oids=tuple(oids),
            convs=convs,
            ident=tuple(ident),
            key=key,
            captured=captured,
            image=image,
            image_end=image_end,
            key_of=_compile_pick(key, False),
            key_get=_compile_pick(key, True),
            ident_of=_compile_pick(tuple(ident), False),
        )

    # -- row images -------------------------------------------------------------

    def _tuple(self, data: bytes, pos: int, rel: Relation) -> tuple[Row, list[str] | None, int]:
        """Decode TupleData at ``pos``: (row, columns left out as unchanged TOAST, end)."""
        (n,) = _U16.unpack_from(data, pos)
        pos += 2
        names = rel.names
        convs = rel.convs
        row: Row = {}
        unchanged: list[str] | None = None
        unpack = _I32.unpack_from
        if n != len(names):
            raise DataError(
                f"pgoutput row of {rel.schema}.{rel.name} has {n} columns, its Relation message {len(names)}"
            )
        try:
            for name, conv in zip(names, convs, strict=False):
                kind = data[pos]
                if kind == _T:
                    (ln,) = unpack(data, pos + 1)
                    pos += 5
                    row[name] = conv(data[pos : pos + ln])
                    pos += ln
                elif kind == _N:
                    row[name] = None
                    pos += 1
                elif kind == _U:
                    if unchanged is None:
                        unchanged = []
                    unchanged.append(name)
                    pos += 1
                else:
                    raise DataError(
                        f"unsupported pgoutput column format {chr(kind)!r} in {rel.schema}.{rel.name}"
                    )
        except (ValueError, KeyError, IndexError) as exc:
            raise DataError(
                f"cannot decode a column of {rel.schema}.{rel.name} near byte {pos}: {exc} "
                f"(columns {', '.join(names)})"
            ) from exc
        return row, unchanged, pos

    def _rel(self, data: bytes) -> Relation:
        (oid,) = _U32.unpack_from(data, 1)
        rel = self.relations.get(oid)
        if rel is None:
            raise DataError(f"pgoutput change for relation OID {oid} before its Relation message")
        return rel

    def _source(self, rel: Relation, seq: int) -> SourceInfo:
        return self._source_of(rel.schema, rel.name, seq)

    def _source_of(self, schema: str, table: str, seq: int) -> SourceInfo:
        ts_us = self.ts_us
        return SourceInfo(
            connector="postgresql",
            name=self.pipeline,
            ts_ms=ts_us // 1000,
            ts_us=ts_us,
            db=self.db,
            schema=schema,
            table=table,
            txId=self.xid,
            lsn=self.commit_lsn,
            seq=seq,
            origin=self.origin,
        )

    def _next_seq(self) -> int:
        seq = self.seq
        self.seq = seq + 1
        return seq

    # -- changes ----------------------------------------------------------------

    def _insert(self, data: bytes, out: list[Change], now_us: int) -> None:
        rel = self._rel(data)
        seq = self.seq
        self.seq = seq + 1
        if seq <= self.skip_seq or not rel.captured:
            return
        row = rel.image(data, 6)  # 'N' at 5
        if row is None:
            row = self._tuple(data, 6, rel)[0]
        ev = ChangeEvent(
            after=row, source=self._source(rel, seq), op="c", ts_ms=now_us // 1000, ts_us=now_us
        )
        out.append(Change(rel.key_of(row), ev))

    def _update(self, data: bytes, out: list[Change], now_us: int) -> None:
        rel = self._rel(data)
        pos = 5
        old: Row | None = None
        kind = data[pos]
        if kind in (_K, _O):
            got = rel.image_end(data, 6)
            if got is None:
                old, _old_unchanged, pos = self._tuple(data, 6, rel)
            else:
                old, pos = got
            if kind == _K:
                old = rel.ident_of(old)
        if data[pos] != 78:  # 'N'
            raise DataError(f"malformed pgoutput update for {rel.schema}.{rel.name}")
        unchanged: list[str] | None = None
        row = rel.image(data, pos + 1)
        if row is None:
            row, unchanged, _ = self._tuple(data, pos + 1, rel)
        key = rel.key_get(row)
        old_key = None if old is None else {k: old.get(k, key[k]) for k in rel.key}
        if old_key is not None and old_key != key:
            # The key changed: a delete of the old key and an insert of the new one,
            # so key-partitioned consumers see each key's history in order.
            seq = self._next_seq()
            if seq > self.skip_seq and rel.captured:
                ev = ChangeEvent(
                    before=old,
                    source=self._source(rel, seq),
                    op="d",
                    ts_ms=now_us // 1000,
                    ts_us=now_us,
                )
                out.append(Change(old_key, ev))
            seq = self._next_seq()
            if seq > self.skip_seq and rel.captured:
                if unchanged and old is not None and kind == _O:
                    for c in [c for c in unchanged if c in old]:
                        row[c] = old[c]
                        unchanged.remove(c)
                ev = ChangeEvent(
                    after=row,
                    source=self._source(rel, seq),
                    op="c",
                    ts_ms=now_us // 1000,
                    ts_us=now_us,
                    unchanged=unchanged or None,
                )
                out.append(Change(key, ev))
            return
        seq = self._next_seq()
        if seq <= self.skip_seq or not rel.captured:
            return
        ev = ChangeEvent(
            before=old,
            after=row,
            source=self._source(rel, seq),
            op="u",
            ts_ms=now_us // 1000,
            ts_us=now_us,
            unchanged=unchanged,
        )
        out.append(Change(key, ev))

    def _delete(self, data: bytes, out: list[Change], now_us: int) -> None:
        rel = self._rel(data)
        seq = self._next_seq()
        if seq <= self.skip_seq or not rel.captured:
            return
        kind = data[5]
        old = rel.image(data, 6)
        if old is None:
            old = self._tuple(data, 6, rel)[0]
        if kind == _K:
            old = rel.ident_of(old)
        key = rel.key_get(old)
        ev = ChangeEvent(
            before=old, source=self._source(rel, seq), op="d", ts_ms=now_us // 1000, ts_us=now_us
        )
        out.append(Change(key, ev))

    def _message(self, data: bytes, out: list[Change], now_us: int) -> None:
        """A delete a syncline sink applied here that found no row: forward it as one.

        On a middle node of a ring such a delete changes nothing, so without the
        message (sinks/postgres.py) the next node would never learn of it. It is a
        transactional message inside the sink's transaction, so it is numbered,
        skipped for its origin and checkpointed exactly like a row change.
        """
        if not data[1] & 1 or not self.in_txn:  # flags: 1 = transactional
            return
        prefix, pos = _cstr(data, 10)  # after the flags and the message's LSN
        if prefix != DELETE_MESSAGE:
            return
        seq = self._next_seq()
        if seq <= self.skip_seq:
            return
        (n,) = _I32.unpack_from(data, pos)
        try:
            msg = _message_decoder.decode(data[pos + 4 : pos + 4 + n])
        except msgspec.DecodeError as exc:
            raise DataError(f"malformed {DELETE_MESSAGE} message in {self.db}: {exc}") from exc
        key_cols = self.keys.get(f"{msg.s}.{msg.t}")
        if key_cols is None:
            return  # a table this source does not capture
        before: Row = {
            col: None if text is None else self.converter(oid).from_bytes(text.encode())
            for col, oid, text in msg.b
        }
        ev = ChangeEvent(
            before=before,
            source=self._source_of(msg.s, msg.t, seq),
            op="d",
            ts_ms=now_us // 1000,
            ts_us=now_us,
        )
        out.append(Change({k: before.get(k) for k in key_cols}, ev))

    def _truncate(self, data: bytes, out: list[Change], now_us: int) -> None:
        nrels, _options = _TRUNC.unpack_from(data, 1)
        pos = 6
        for _ in range(nrels):
            (oid,) = _U32.unpack_from(data, pos)
            pos += 4
            seq = self._next_seq()
            rel = self.relations.get(oid)
            if rel is None or not rel.captured or seq <= self.skip_seq:
                continue
            ev = ChangeEvent(
                source=self._source(rel, seq), op="t", ts_ms=now_us // 1000, ts_us=now_us
            )
            out.append(Change({}, ev))


def parse_lsn(text: str) -> int:
    """``"16/B374D848"`` → integer LSN."""
    hi, _, lo = text.partition("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"
