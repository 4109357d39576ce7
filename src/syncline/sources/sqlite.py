"""SQLite change source: triggers write every change into a changelog table.

The triggers run inside the service's own write transaction, so a change is
captured exactly when it commits and vanishes with it on rollback; nothing can
be missed between a commit and a poll. Row images are stored as JSON built by
SQLite itself (see ``_value_sql`` for the encoding), so reading needs one
range scan and one JSON decode per image. See docs/sqlite-source.md.
"""

from __future__ import annotations

import base64
import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.request import pathname2url

import msgspec

from syncline.config import SqliteSourceConfig
from syncline.errors import (
    DataError,
    PermanentError,
    SchemaError,
    StorageError,
    SynclineError,
    TransientError,
)
from syncline.events import Change, ChangeEvent, Op, Poison, Row, SourceInfo, now_us
from syncline.schema import Column, TableSchema
from syncline.sources.base import BATCH_BYTES, CaptureBatch, Checkpoint, Source

LOG: Final = "_syncline_changelog"
META: Final = "_syncline_meta"
SUPPRESS: Final = "_syncline_suppress"
_TRIM_BATCH: Final = 5000  # rows per trim transaction, so service writers never wait long
_FETCH: Final = 64  # rows per fetchmany: small enough that big rows never pile up
_BUSY_MS: Final = 5000
_TRIM_BUSY_MS: Final = 200
_NOW_US: Final = "CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)"
_DDL: Final = (
    f"CREATE TABLE IF NOT EXISTS {LOG} (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " tbl TEXT NOT NULL, op TEXT NOT NULL, old TEXT, new TEXT, ts_us INTEGER NOT NULL)",
    f"CREATE TABLE IF NOT EXISTS {META} (key TEXT PRIMARY KEY, value TEXT)",
    f"CREATE TABLE IF NOT EXISTS {SUPPRESS} (origin TEXT)",
)
_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


def to_json_text(value: Any) -> str:
    return _encode(value).decode()


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _value_sql(x: str) -> str:
    """JSON for one column value, lossless where SQLite's own rendering is not.

    ``json_object`` prints reals with 15 digits and infinities as bare ``Inf``;
    ``printf('%!.18g')`` round-trips every finite double (checked on 1.7M random
    bit patterns). Infinities become the strings the event model uses. A blob is
    a one-element JSON array holding its hex: arrays never occur otherwise, so
    the marker is unambiguous, and Python turns it into base64.
    """
    return (
        f"CASE typeof({x}) WHEN 'real' THEN CASE {x} WHEN 1e999 THEN 'Infinity'"
        f" WHEN -1e999 THEN '-Infinity' ELSE json(printf('%!.18g', {x})) END"
        f" WHEN 'blob' THEN json_array(hex({x})) ELSE {x} END"
    )


def _unblob(row: Row) -> Row:
    for k, v in row.items():
        if v.__class__ is list:
            row[k] = base64.b64encode(bytes.fromhex(v[0])).decode("ascii")
    return row


def _image(raw: bytes | None) -> Row | None:
    """A stored image (UTF-8 JSON bytes) as a row; ValueError if the bytes are not that."""
    if raw is None:
        return None
    row: Row = _decode(raw)  # msgspec checks UTF-8 too (UnicodeDecodeError)
    return _unblob(row) if b"[" in raw else row


def _image_text(text: str | None) -> Row | None:
    """The same for a database stored as UTF-16 (its text arrives already decoded)."""
    if text is None:
        return None
    row: Row = _decode(text)
    return _unblob(row) if "[" in text else row


_REPLACED = "\ufffd"  # what lenient decoding puts where bytes were not UTF-8


def _lenient(raw: bytes | str | None) -> Row | None:
    """An image read with invalid UTF-8 replaced by U+FFFD; None if it is not JSON at all."""
    if raw is None:
        return None
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    try:
        row: Row = _decode(text)
        return _unblob(row)
    except (ValueError, TypeError, IndexError):
        return None


def _replaced(row: Row | None) -> list[str]:
    """Columns whose text had bytes that are not UTF-8 (after a lenient read)."""
    return [k for k, v in (row or {}).items() if isinstance(v, str) and _REPLACED in v]


def _raw(raw: bytes | str | None) -> str | None:
    if raw is None:
        return None
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True, slots=True)
class _Table:
    name: str  # as sqlite_schema spells it
    columns: tuple[Column, ...]
    key: tuple[str, ...]

    def key_of(self, row: Row) -> Row:
        if len(self.key) == 1:  # the common case, without a comprehension's frame
            k = self.key[0]
            return {k: row[k]}
        return {k: row[k] for k in self.key}

    def json_sql(self, prefix: str) -> str:
        pairs = (f"{_literal(c.name)}, {_value_sql(prefix + _ident(c.name))}" for c in self.columns)
        return "json_object(" + ", ".join(pairs) + ")"

    def trigger_sql(self) -> dict[str, str]:
        """CREATE TRIGGER text per trigger name; compared verbatim with sqlite_schema."""
        t, out = self.name, {}
        for suffix, event, op, old, new in (
            ("ins", "INSERT", "c", "NULL", self.json_sql("NEW.")),
            ("upd", "UPDATE", "u", self.json_sql("OLD."), self.json_sql("NEW.")),
            ("del", "DELETE", "d", self.json_sql("OLD."), "NULL"),
        ):
            name = f"_syncline_{t}_{suffix}"
            out[name] = (
                f"CREATE TRIGGER {_ident(name)} AFTER {event} ON {_ident(t)}"
                f" WHEN NOT EXISTS (SELECT 1 FROM {SUPPRESS}) BEGIN"
                f" INSERT INTO {LOG} (tbl, op, old, new, ts_us)"
                f" VALUES ({_literal(t)}, '{op}', {old}, {new}, {_NOW_US}); END"
            )
        return out

    def schema(self) -> TableSchema:
        return TableSchema("main", self.name, self.columns, self.key, dialect="sqlite")


class _Snapshot:
    """All captured tables read in one read transaction on a dedicated connection.

    WAL lets the service keep writing meanwhile; the cursor is paged with
    ``fetchmany``, so memory stays bounded however large the tables are.
    """

    def __init__(
        self, conn: sqlite3.Connection, tables: list[_Table], start: int, as_blob: bool
    ) -> None:
        self.conn, self.start, self.ts_us = conn, start, now_us()
        self.table, self.done_rows = "", 0
        self._rows = self._iter(tables, as_blob)
        self._next = next(self._rows, None)

    def _iter(self, tables: list[_Table], as_blob: bool) -> Iterator[tuple[_Table, Any]]:
        for t in tables:
            image = f"CAST({t.json_sql('')} AS BLOB)" if as_blob else t.json_sql("")
            cur = self.conn.execute(f"SELECT {image} FROM {_ident(t.name)}")
            while chunk := cur.fetchmany(_FETCH):
                for (text,) in chunk:
                    yield t, text

    def take(self, n: int) -> tuple[list[tuple[_Table, Any]], bool]:
        """Up to ``n`` rows (fewer once they add up to ``BATCH_BYTES``), and whether that is all."""
        out: list[tuple[_Table, Any]] = []
        size = 0
        while self._next is not None and len(out) < n and size < BATCH_BYTES:
            out.append(self._next)
            size += len(self._next[1])
            self._next = next(self._rows, None)
        return out, self._next is None


class SqliteSource(Source):
    """Trigger-based capture from one SQLite file for one pipeline."""

    def __init__(self, config: SqliteSourceConfig, pipeline: str) -> None:
        self.config, self.pipeline = config, pipeline
        self.path = str(Path(config.path).expanduser().absolute())
        self._db = os.path.basename(self.path)
        self._conn: sqlite3.Connection | None = None
        self._tables: dict[str, _Table] = {}
        self._snap: _Snapshot | None = None
        self._seq = 0  # last changelog seq handed out
        self._trimmed = 0
        self._lock = threading.Lock()
        self._read_sql = self._trim_sql = ""
        # Images are read as bytes (CAST AS BLOB) and decoded by us, so a row holding
        # bytes that are not UTF-8 (SQLite stores TEXT unchecked) becomes a poison
        # record instead of failing the whole read. UTF-16 databases hand out text.
        self._utf8 = True
        self._img: Callable[[Any], Row | None] = _image

    # -- connections and errors -------------------------------------------

    def _where(self) -> str:
        return f"(source of pipeline {self.pipeline})"

    def _connect(self, mode: str) -> sqlite3.Connection:
        if not os.path.isfile(self.path):
            what = (
                "is a directory, not a database file"
                if os.path.isdir(self.path)
                else "does not exist"
            )
            raise PermanentError(f"SQLite database {self.path} {what} {self._where()}")
        uri = f"file:{pathname2url(self.path)}?mode={mode}"
        try:
            conn = sqlite3.connect(
                uri,
                uri=True,
                isolation_level=None,
                check_same_thread=False,
                timeout=_BUSY_MS / 1000,
            )
            conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()
        except sqlite3.Error as exc:
            raise self._error(exc, "cannot open") from exc
        return conn

    def _error(self, exc: sqlite3.Error, doing: str) -> SynclineError:
        """Translate a driver error into our tree, naming the file."""
        msg = str(exc)
        where = f"SQLite {self.path} {self._where()}: {doing}: {msg}"
        if "locked" in msg or "busy" in msg:
            return TransientError(where)
        if "decode to UTF-8" in msg:
            return DataError(
                f"SQLite {self.path} {self._where()}: {doing}: a captured text value is not valid"
                " UTF-8; fix that row in the service database (SQLite stores such bytes unchecked)"
            )
        if isinstance(exc, sqlite3.OperationalError) and "unable to open" in msg:
            return PermanentError(where + " (check the file's permissions and its directory)")
        if isinstance(exc, sqlite3.DatabaseError) and (
            "not a database" in msg or "malformed" in msg or "readonly" in msg or "full" in msg
        ):
            return StorageError(where)
        return (
            TransientError(where)
            if isinstance(exc, sqlite3.OperationalError)
            else PermanentError(where)
        )

    def _inspect(self, conn: sqlite3.Connection) -> dict[str, _Table]:
        out: dict[str, _Table] = {}
        for wanted in self.config.tables:
            row = conn.execute(
                "SELECT name, type FROM sqlite_schema WHERE name = ? COLLATE NOCASE AND type IN ('table', 'view')",
                (wanted,),
            ).fetchone()
            if row is None:
                raise SchemaError(f"table {wanted} does not exist in {self.path} {self._where()}")
            if row[1] != "table":
                raise SchemaError(
                    f"{wanted} in {self.path} is a view; capture needs a table {self._where()}"
                )
            name = row[0]
            info = conn.execute(f"PRAGMA table_info({_ident(name)})").fetchall()
            pk = sorted((r[5], r[1]) for r in info if r[5])
            if not pk:
                raise SchemaError(
                    f"table {name} in {self.path} has no primary key: add one (syncline applies"
                    f" changes by key) {self._where()}"
                )
            cols = tuple(Column(r[1], r[2], nullable=not r[3] and not r[5]) for r in info)
            out[name] = _Table(name, cols, tuple(c for _, c in pk))
        return out

    # -- Source ---------------------------------------------------------------

    def check(self) -> list[str]:
        conn = self._connect("ro")
        try:
            tables = self._inspect(conn)
        except sqlite3.Error as exc:
            raise self._error(exc, "cannot read the schema") from exc
        finally:
            conn.close()
        return [f"sqlite {self.path}: {len(tables)} tables ok"]

    def describe(self) -> dict[str, TableSchema]:
        if not self._tables:
            conn = self._connect("ro")
            try:
                self._tables = self._inspect(conn)
            except sqlite3.Error as exc:
                raise self._error(exc, "cannot read the schema") from exc
            finally:
                conn.close()
        return {f"main.{t.name}": t.schema() for t in self._tables.values()}

    def open(self, checkpoint: Checkpoint | None) -> None:
        self.close()
        conn = self._conn = self._connect("rw")
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StorageError(
                    f"SQLite {self.path} {self._where()}: cannot switch to WAL mode (got {mode});"
                    " trigger capture needs WAL so readers never block the service"
                )
            # our only writes after install are trims: losing one to a power cut is harmless
            conn.execute("PRAGMA synchronous=NORMAL")
            encoding = str(conn.execute("PRAGMA encoding").fetchone()[0])
            self._utf8 = encoding.upper() == "UTF-8"
            self._img = _image if self._utf8 else _image_text
            acked, high = self._install(conn)
            # and a trim that meets a busy service just waits for the next ack
            conn.execute(f"PRAGMA busy_timeout={_TRIM_BUSY_MS}")
            start = self._start(conn, checkpoint, acked, high)
        except sqlite3.Error as exc:
            self.close()
            raise self._error(exc, "cannot install capture triggers") from exc
        except BaseException:
            self.close()
            raise
        marks = ", ".join("?" * len(self._tables))
        images = "CAST(old AS BLOB), CAST(new AS BLOB)" if self._utf8 else "old, new"
        self._read_sql = (
            f"SELECT seq, tbl, op, {images}, ts_us FROM {LOG}"
            f" WHERE seq > ? AND tbl IN ({marks}) ORDER BY seq LIMIT ?"
        )
        self._trim_sql = (
            f"DELETE FROM {LOG} WHERE seq IN (SELECT seq FROM {LOG}"
            f" WHERE seq <= ? AND tbl IN ({marks}) ORDER BY seq LIMIT {_TRIM_BATCH})"
        )
        self._seq, self._trimmed = start, acked

    def _install(self, conn: sqlite3.Connection) -> tuple[int, int]:
        """Create the changelog and (re)create stale triggers in one transaction.

        Returns this pipeline's last acked seq and the changelog's seq high-water.
        """
        conn.execute("BEGIN IMMEDIATE")
        try:
            for ddl in _DDL:
                conn.execute(ddl)
            self._tables = self._inspect(conn)
            for t in self._tables.values():
                have = dict(
                    conn.execute(
                        "SELECT name, sql FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = ?",
                        (t.name,),
                    ).fetchall()
                )
                for name, sql in t.trigger_sql().items():
                    if have.get(name) != sql:
                        conn.execute(f"DROP TRIGGER IF EXISTS {_ident(name)}")
                        conn.execute(sql)
            acked = conn.execute(
                f"SELECT value FROM {META} WHERE key = ?", (f"acked:{self.pipeline}",)
            ).fetchone()
            high = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (LOG,)).fetchone()
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return (int(acked[0]) if acked else 0), (int(high[0]) if high else 0)

    def _start(self, conn: sqlite3.Connection, cp: Checkpoint | None, acked: int, high: int) -> int:
        """Where streaming resumes; starts the snapshot when one is due."""
        if cp is not None:
            seq = cp.get("seq")
            if not isinstance(seq, int) or cp.get("snapshot") not in ("running", "done"):
                raise PermanentError(
                    f"checkpoint {cp!r} is not a SQLite source checkpoint {self._where()}"
                )
            if seq > high or seq < acked:
                why = (
                    "ahead of the changelog (was the database replaced?)"
                    if seq > high
                    else (
                        f"behind seq {acked}, which was already acked and trimmed (was the transport restored?)"
                    )
                )
                raise PermanentError(
                    f"checkpoint seq {seq} for {self.path} is {why}; changes would be lost:"
                    f" reset pipeline {self.pipeline}'s transport data to take a fresh snapshot"
                )
            if cp["snapshot"] == "running" and self.config.snapshot == "initial":
                self._begin_snapshot(seq)  # an interrupted snapshot is redone from scratch
            return seq
        if self.config.snapshot == "initial":
            return self._begin_snapshot(None)
        return self._cut(conn)

    @staticmethod
    def _cut(conn: sqlite3.Connection) -> int:
        row = conn.execute(f"SELECT max(seq) FROM {LOG}").fetchone()
        return int(row[0] or 0)

    def _begin_snapshot(self, resume: int | None) -> int:
        conn = self._connect("ro")
        try:
            conn.execute("BEGIN")
            cut = self._cut(conn)  # the first read pins the transaction's view
            start = cut if resume is None else resume
            self._snap = _Snapshot(conn, list(self._tables.values()), start, self._utf8)
        except BaseException:
            conn.close()
            raise
        return start

    def read(self, max_changes: int, timeout: float) -> CaptureBatch | None:
        conn = self._conn
        if conn is None:
            raise PermanentError(f"SQLite source of pipeline {self.pipeline} is not open")
        if self._snap is not None:
            return self._read_snapshot(self._snap, max(1, max_changes))
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                try:
                    version = conn.execute("PRAGMA data_version").fetchone()[0]
                    rows = self._fetch(conn, max(1, max_changes))
                except sqlite3.Error as exc:
                    raise self._error(exc, "cannot read the changelog") from exc
            if rows:
                return self._batch(rows, max_changes)
            if not self._wait(conn, version, deadline):
                return None

    def _fetch(self, conn: sqlite3.Connection, limit: int) -> list[Any]:
        """Up to ``limit`` changelog rows, stopping early after about ``BATCH_BYTES``."""
        cur = conn.execute(self._read_sql, (self._seq, *self._tables, limit))
        try:
            rows = cur.fetchmany(_FETCH)
            if len(rows) < _FETCH:
                return rows
            size = sum(len(r[3] or b"") + len(r[4] or b"") for r in rows)
            while size < BATCH_BYTES and (more := cur.fetchmany(_FETCH)):
                rows += more
                size += sum(len(r[3] or b"") + len(r[4] or b"") for r in more)
            return rows
        finally:
            cur.close()

    def _wait(self, conn: sqlite3.Connection, version: int, deadline: float) -> bool:
        """Sleep until another connection commits (PRAGMA data_version moves) or time is up."""
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(self.config.poll_interval, left))
            with self._lock:
                try:
                    if conn.execute("PRAGMA data_version").fetchone()[0] != version:
                        return True
                except sqlite3.Error as exc:
                    raise self._error(exc, "cannot poll for changes") from exc
        return False

    def _read_snapshot(self, snap: _Snapshot, max_changes: int) -> CaptureBatch:
        try:
            rows, last = snap.take(max_changes)
        except sqlite3.Error as exc:
            raise self._error(exc, f"snapshot of table {snap.table or '?'} failed") from exc
        now, ts = now_us(), snap.ts_us
        changes: list[Change] = []
        img = self._img
        for i, (t, text) in enumerate(rows):
            flag = "last" if last and i == len(rows) - 1 else "true"
            src = SourceInfo(
                connector="sqlite", name=self.pipeline, ts_ms=ts // 1000, ts_us=ts,
                snapshot=flag, db=self._db, schema="main", table=t.name, seq=snap.start,
            )  # fmt: skip
            try:
                after = img(text)
            except ValueError:
                changes += self._salvage(t, Op.READ, None, text, src, now)
            else:
                assert after is not None
                ev = ChangeEvent(after=after, source=src, op=Op.READ, ts_ms=now // 1000, ts_us=now)
                changes.append(Change(t.key_of(after), ev))
            if t.name != snap.table:
                snap.table, snap.done_rows = t.name, 0
            snap.done_rows += 1
        if self.on_progress is not None and snap.table:
            self.on_progress(snap.table, snap.done_rows, None)
        if last:
            self._seq = snap.start
            snap.conn.close()
            self._snap = None
        return CaptureBatch(changes, {"seq": snap.start, "snapshot": "done" if last else "running"})

    def _batch(self, rows: list[Any], max_changes: int) -> CaptureBatch:
        now = now_us()
        out: list[Change] = []
        seq = self._seq
        image = self._img
        for seq_, tbl, op, old, new, ts in rows:
            if len(out) >= max_changes:
                break
            t = self._tables[tbl]
            src = SourceInfo(
                connector="sqlite", name=self.pipeline, ts_ms=ts // 1000, ts_us=ts,
                db=self._db, schema="main", table=tbl, seq=seq_,
            )  # fmt: skip
            try:
                before, after = image(old), image(new)
            except ValueError:
                salvaged = self._salvage(t, op, old, new, src, now)
                if out and len(out) + len(salvaged) > max_changes:
                    break
                out += salvaged
                seq = seq_
                continue
            img = after if after is not None else before
            assert img is not None
            key = t.key_of(img)
            if op == Op.UPDATE and before is not None:
                old_key = t.key_of(before)
                if old_key != key:  # a key change is a delete of the old row and a create
                    if out and len(out) + 2 > max_changes:
                        break
                    out.append(Change(old_key, self._event(before, None, Op.DELETE, src, now)))
                    out.append(Change(key, self._event(None, after, Op.CREATE, src, now)))
                    seq = seq_
                    continue
            out.append(Change(key, self._event(before, after, op, src, now)))
            seq = seq_
        self._seq = seq
        return CaptureBatch(out, {"seq": seq, "snapshot": "done"})

    def _salvage(
        self, t: _Table, op: str, old: Any, new: Any, src: SourceInfo, now: int
    ) -> list[Change]:
        """Changes for a changelog row whose images cannot be read exactly.

        What can be applied exactly still is: an update whose old image alone is
        unreadable loses only its ``before`` (as PostgreSQL sends updates), a
        delete keeps its key (as PostgreSQL sends deletes) when the key columns
        read cleanly. Anything else becomes a poison record in the change's place.
        """
        before = after = None
        with contextlib.suppress(ValueError):
            before = self._img(old)
        with contextlib.suppress(ValueError):
            after = self._img(new)
        lb = before if before is not None or old is None else _lenient(old)
        la = after if after is not None or new is None else _lenient(new)
        key_before = {k: lb.get(k) for k in t.key} if lb is not None else {}
        key_after = {k: la.get(k) for k in t.key} if la is not None else {}
        if op == Op.UPDATE and old is not None and key_before != key_after:
            # a key change: the delete of the old key, then the create of the new one
            return [
                *self._salvage(t, Op.DELETE, old, None, src, now),
                *self._salvage(t, Op.CREATE, None, new, src, now),
            ]
        if op == Op.DELETE:
            if before is not None:
                return [Change(key_before, self._event(before, None, op, src, now))]
            if lb is not None and not _replaced(key_before):
                return [Change(key_before, self._event(key_before, None, op, src, now))]
            return [self._poison(t, op, key_before, old, None, lb, src, now)]
        if after is not None:  # create/read/update with a readable new image
            return [Change(key_after, self._event(None, after, op, src, now))]
        return [self._poison(t, op, key_after, old if op == Op.UPDATE else None, new, la, src, now)]

    def _poison(
        self,
        t: _Table,
        op: str,
        key: Row,
        old: Any,
        new: Any,
        lenient: Row | None,
        src: SourceInfo,
        now: int,
    ) -> Change:
        bad = _replaced(lenient)
        if len(bad) == 1:
            what = f"column {bad[0]} holds bytes that are not valid UTF-8"
        elif bad:
            what = f"columns {', '.join(bad)} hold bytes that are not valid UTF-8"
        else:
            what = "its stored row image is not valid JSON"
        key_text = to_json_text(key) if key else "(unreadable)"
        error = (
            f"SQLite {self.path} {self._where()}: row {key_text} of table {t.name}: {what}; "
            "fix the row in the source database, then syncline dlq purge this entry "
            "(the fix, held behind it, then applies)"
        )
        poison = Poison(error=error, before=_raw(old), after=_raw(new))
        return Change(
            key, ChangeEvent(source=src, op=op, ts_ms=now // 1000, ts_us=now, poison=poison)
        )

    @staticmethod
    def _event(
        before: Row | None, after: Row | None, op: str, src: SourceInfo, now: int
    ) -> ChangeEvent:
        return ChangeEvent(
            before=before, after=after, source=src, op=op, ts_ms=now // 1000, ts_us=now
        )

    def ack(self, checkpoint: Checkpoint) -> None:
        """Trim the changelog up to ``checkpoint`` in short transactions.

        A trim that meets a busy database is skipped: the rows stay until the
        next ack, and reading never looks behind the checkpoint anyway.
        """
        seq = checkpoint.get("seq")
        conn = self._conn
        if conn is None or not isinstance(seq, int) or seq <= self._trimmed:
            return
        with self._lock:
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(
                    f"INSERT INTO {META} (key, value) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (f"acked:{self.pipeline}", str(seq)),
                )
                while True:
                    n = conn.execute(self._trim_sql, (seq, *self._tables)).rowcount
                    conn.execute("COMMIT")
                    if n < _TRIM_BATCH:
                        break
                    conn.execute("BEGIN IMMEDIATE")
                self._trimmed = seq
            except sqlite3.OperationalError as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise self._error(exc, "cannot trim the changelog") from exc

    def close(self) -> None:
        snap, conn = self._snap, self._conn
        self._snap = self._conn = None
        if snap is not None:
            snap.conn.close()
        if conn is not None:
            conn.close()
