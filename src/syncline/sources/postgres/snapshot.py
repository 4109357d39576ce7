"""The initial snapshot: every captured row as an op "r" event, read in bounded chunks.

It runs inside the snapshot the replication slot exported when it was created,
so the rows it reads plus the changes the slot streams from its consistent
point are every row exactly once. A server-side cursor per table stays open
across ``read()`` calls; memory holds one chunk at a time.

Values are fetched in their text output form (psycopg2 typecasters registered
per result column OID hand us the raw string) and run through the same
converters as the stream, so a snapshot row and a streamed row look alike.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from syncline.events import Change, ChangeEvent, SourceInfo
from syncline.sources.base import BATCH_BYTES, ProgressFn
from syncline.sources.postgres.catalog import TableInfo
from syncline.sources.postgres.pgoutput import Decoder
from syncline.sources.postgres.values import StrConv, TypeRegistry

CHUNK = 5000
FIRST_CHUNK = 16  # rows of a table fetched first, to size the next fetches


def _row_bytes(rows: list[tuple[Any, ...]]) -> int:
    """Average size of a few of ``rows`` (their values as converted: text, base64, lists)."""
    sample = rows[:8]
    if not sample:
        return 0
    total = 0
    for row in sample:
        for v in row:
            t = type(v)
            total += len(v) if t is str or t is bytes else (16 * len(v) if t is list else 8)
    return total // len(sample)


def _caster(conv: StrConv) -> Callable[[Any, Any], Any]:
    def cast(value: Any, _cur: Any) -> Any:
        return None if value is None else conv(value)

    return cast


class SnapshotReader:
    """Reads ``tables`` in order inside an exported snapshot; see ``read``."""

    def __init__(
        self,
        conn: Any,
        snapshot_name: str,
        tables: list[TableInfo],
        registry: TypeRegistry,
        pipeline: str,
        db: str,
        lsn: int,
        on_progress: ProgressFn | None = None,
    ) -> None:
        self._conn = conn
        self._tables = list(tables)
        self._registry = registry
        self._pipeline = pipeline
        self._db = db
        self._lsn = lsn
        self._on_progress = on_progress
        self._index = 0
        self._cursor: Any = None
        self._rows_done = 0
        self._chunk = FIRST_CHUNK
        self._held: list[Change] = []
        self.done = False  # every table has been read to the end
        self.finished = False  # ... and every row has been handed out
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True, autocommit=False)
        with conn.cursor() as cur:
            cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot_name,))
        self._register_casters()
        if not self._tables:
            self._finish()

    def _register_casters(self) -> None:
        """Map each result column's wire type OID to its converter (domains arrive as their base)."""
        seen: set[int] = set()
        with self._conn.cursor() as cur:
            for t in self._tables:
                cur.execute(
                    sql.SQL("SELECT {} FROM {} LIMIT 0").format(self._columns(t), self._ident(t))
                )
                for col, desc in zip(t.columns, cur.description, strict=True):
                    wire = int(desc.type_code)
                    if wire in seen:
                        continue
                    seen.add(wire)
                    conv = self._registry.converter(col.type_oid).from_str
                    caster = psycopg2.extensions.new_type(
                        (wire,), f"SYNCLINE_{wire}", _caster(conv)
                    )
                    psycopg2.extensions.register_type(caster, self._conn)

    @staticmethod
    def _columns(t: TableInfo) -> sql.Composable:
        return sql.SQL(", ").join(sql.Identifier(c.name) for c in t.columns)

    @staticmethod
    def _ident(t: TableInfo) -> sql.Composable:
        return sql.Identifier(t.schema, t.name)

    def read(self, max_rows: int) -> list[Change]:
        """Up to ``max_rows`` snapshot events; the very last one is marked ``snapshot="last"``.

        One event is held back between calls so the final row can be marked
        even when the last table turns out to be empty.
        """
        max_rows = max(1, max_rows)
        out = self._held
        self._held = []
        size = 0
        while len(out) <= max_rows and not self.done and (size < BATCH_BYTES or len(out) < 2):
            size += self._fetch_into(out, max_rows + 1 - len(out))
        if self.done and len(out) <= max_rows:
            if out:
                out[-1].event.source.snapshot = "last"
            self.finished = True
            return out
        cut = min(max_rows, len(out) - 1)  # one row always held back (see above)
        self._held = out[cut:]
        return out[:cut]

    def _fetch_into(self, out: list[Change], n: int) -> int:
        """Fetch up to ``n`` rows of the current table into ``out``; their estimated bytes.

        Rows are fetched in chunks sized from the rows seen so far, so a table of
        big rows is read a few rows at a time instead of CHUNK at a time.
        """
        t = self._tables[self._index]
        if self._cursor is None:
            self._cursor = self._conn.cursor(name=f"syncline_snapshot_{self._index}")
            self._cursor.itersize = CHUNK
            self._cursor.execute(
                sql.SQL("SELECT {} FROM {}").format(self._columns(t), self._ident(t))
            )
            self._rows_done = 0
            self._chunk = FIRST_CHUNK
        n = min(n, self._chunk)
        rows = self._cursor.fetchmany(n)
        row_bytes = _row_bytes(rows)
        self._chunk = max(FIRST_CHUNK, min(CHUNK, BATCH_BYTES // 2 // max(row_bytes, 1)))
        names = tuple(c.name for c in t.columns)
        key = t.key
        now = time.time_ns() // 1000
        now_ms = now // 1000
        pipeline, db, lsn, schema, table = self._pipeline, self._db, self._lsn, t.schema, t.name
        append = out.append
        for values in rows:
            after = dict(zip(names, values, strict=True))
            source = SourceInfo(
                connector="postgresql",
                name=pipeline,
                ts_ms=now_ms,
                ts_us=now,
                snapshot="true",
                db=db,
                schema=schema,
                table=table,
                lsn=lsn,
            )
            append(
                Change(
                    {k: after[k] for k in key},
                    ChangeEvent(after=after, source=source, op="r", ts_ms=now_ms, ts_us=now),
                )
            )
        self._rows_done += len(rows)
        if self._on_progress is not None:
            self._on_progress(t.table_id, self._rows_done, t.estimate)
        if len(rows) < n:
            self._cursor.close()
            self._cursor = None
            self._index += 1
            if self._index >= len(self._tables):
                self._finish()
        return row_bytes * len(rows)

    def _finish(self) -> None:
        self.done = True
        self._conn.rollback()  # read-only: nothing to commit, and it releases the snapshot

    def close(self) -> None:
        try:
            if self._cursor is not None and not self._conn.closed:
                self._cursor.close()
        except psycopg2.Error:
            pass
        self._cursor = None
        if not self._conn.closed:
            self._conn.close()


class DeleteReplay:
    """Deletes and truncates committed since an interrupted snapshot began, to replay first.

    A snapshot cut short by a crash leaves part of its rows in the log, and the
    retake reads the tables as they are now. A row of the first part deleted in
    between is in neither the retake nor the stream after it, so the target would
    keep it for ever. The slot of the first attempt is kept (nothing was confirmed
    on it) and still holds every change since that attempt's consistent point;
    this reads its deletes and truncates up to the retake's consistent point,
    without consuming them, so they go to the log before the retake's rows. A
    deleted row that came back before the retake is restored by the retake.
    """

    def __init__(
        self,
        conn: Any,
        slot: str,
        upto_lsn: str,
        options: dict[str, str],
        decoder: Decoder,
    ) -> None:
        self._conn = conn
        self._decoder = decoder
        self._held: list[Change] = []
        self._exhausted = False
        self.finished = False  # every event has been handed out
        self.replayed = 0
        flat = [x for kv in options.items() for x in kv]
        self._cursor = conn.cursor(name="syncline_delete_replay")
        self._cursor.itersize = 1000
        self._cursor.execute(
            "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, %s::pg_lsn, NULL, "
            "VARIADIC %s::text[])",
            (slot, upto_lsn, flat),
        )

    def read(self, max_changes: int) -> list[Change]:
        """Up to ``max_changes`` delete/truncate events, in commit order."""
        max_changes = max(1, max_changes)
        out, self._held = self._held, []
        decoded: list[Change] = []
        feed = self._decoder.feed
        while len(out) < max_changes and not self._exhausted:
            rows = self._cursor.fetchmany(1000)
            if not rows:
                self._exhausted = True
                self.close()
                break
            now = time.time_ns() // 1000
            for (data,) in rows:
                feed(bytes(data), decoded, now)
            out += [c for c in decoded if c.event.op in ("d", "t")]
            decoded.clear()
        self._held = out[max_changes:]
        del out[max_changes:]
        self.finished = self._exhausted and not self._held
        self.replayed += len(out)
        return out

    def close(self) -> None:
        if not self._conn.closed:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()
