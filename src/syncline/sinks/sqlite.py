"""SQLite sink: each batch is one ``BEGIN IMMEDIATE`` transaction of ``executemany`` calls.

SQLite runs in-process, so a statement costs no round trip; what matters is one
prepared statement per kind of operation and one fsync per batch (WAL mode,
``synchronous=FULL``). Log positions are upserted in the same transaction.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from syncline.config import SqliteSinkConfig
from syncline.errors import (
    DataError,
    SchemaError,
    StorageError,
    SynclineError,
    TransientError,
)
from syncline.events import Change, Row
from syncline.schema import TableSchema
from syncline.sinks.base import ApplyResult, Sink
from syncline.sinks.sql import (
    TableOps,
    TargetTable,
    Truncate,
    b64decode,
    check_target,
    create_table_sql,
    fence_check,
    fold,
    missing_table,
    options_for,
    qi,
    row_columns,
    source_without_key,
    to_json,
)
from syncline.sources.sqlite import SUPPRESS

OFFSETS = "_syncline_offsets"
# A row here switches off this database's syncline capture triggers (sources/sqlite.py),
# so a SQLite source on the target does not send syncline's own writes back.
_SUPPRESS_ON = f"INSERT INTO {SUPPRESS} (origin) VALUES (?)"
_SUPPRESS_OFF = f"DELETE FROM {SUPPRESS} WHERE origin = ?"
Adapter = Callable[[Any], Any]
_INFINITIES = {"Infinity": float("inf"), "-Infinity": float("-inf")}


def _plain(v: Any) -> Any:
    """Containers become JSON text; everything else binds as it is (bool as 0/1)."""
    t = type(v)
    return to_json(v) if t is dict or t is list else v


def _real(v: Any) -> Any:
    if type(v) is str:
        return _INFINITIES.get(v, v)  # "NaN" stays text: SQLite would store a NaN as NULL
    return _plain(v)


def _blob(v: Any) -> Any:
    if type(v) is str:
        return b64decode(v)  # events carry bytea as base64
    return _plain(v)


def adapter_for(declared: str) -> Adapter:
    """Value conversion for a target column by its declared type (SQLite affinity)."""
    u = declared.upper()
    if "INT" in u or any(s in u for s in ("CHAR", "CLOB", "TEXT")):
        return _plain
    if "BLOB" in u:
        return _blob
    if any(s in u for s in ("REAL", "FLOA", "DOUB")):
        return _real
    return _plain


@dataclass(slots=True)
class _Plan:
    target: str
    columns: tuple[str, ...]
    pairs: tuple[tuple[str, Adapter], ...]
    key_pairs: tuple[tuple[str, Adapter], ...]
    upsert_sql: str
    delete_sql: str
    truncate_sql: str
    lazy: bool
    partial_sql: dict[tuple[str, ...], tuple[str, tuple[tuple[str, Adapter], ...]]] = field(
        default_factory=dict
    )

    def partial(self, unsent: set[str]) -> tuple[str, tuple[tuple[str, Adapter], ...]]:
        """``UPDATE`` of just the sent columns (cached per set of unsent columns)."""
        sent = tuple(c for c in self.columns if c not in unsent)
        hit = self.partial_sql.get(sent)
        if hit is None:
            keys = {k for k, _ in self.key_pairs}
            sets = [(c, a) for c, a in self.pairs if c in sent and c not in keys]
            where = " AND ".join(f"{qi(k)} = ?" for k, _ in self.key_pairs)
            if sets:
                assign = ", ".join(f"{qi(c)} = ?" for c, _ in sets)
                sql = f"UPDATE {qi(self.target)} SET {assign} WHERE {where}"
            else:
                sql = ""
            hit = self.partial_sql[sent] = (sql, (*sets, *self.key_pairs))
        return hit


def _build_plan(target: TargetTable, columns: Sequence[str], lazy: bool) -> _Plan:
    name = qi(target.name)
    key = target.key
    pairs = tuple((c, adapter_for(target.columns[c])) for c in columns)
    non_key = [c for c in columns if c not in key]
    conflict = ", ".join(qi(k) for k in key)
    if non_key:
        do = "DO UPDATE SET " + ", ".join(f"{qi(c)} = excluded.{qi(c)}" for c in non_key)
    else:
        do = "DO NOTHING"
    return _Plan(
        target=target.name,
        columns=tuple(columns),
        pairs=pairs,
        key_pairs=tuple((k, adapter_for(target.columns[k])) for k in key),
        upsert_sql=(
            f"INSERT INTO {name} ({', '.join(qi(c) for c in columns)}) "
            f"VALUES ({', '.join('?' * len(columns))}) ON CONFLICT ({conflict}) {do}"
        ),
        delete_sql=f"DELETE FROM {name} WHERE " + " AND ".join(f"{qi(k)} = ?" for k in key),
        truncate_sql=f"DELETE FROM {name}",
        lazy=lazy,
    )


def _translate(exc: sqlite3.Error, what: str) -> SynclineError:
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    low = msg.lower()
    if "locked" in low or "busy" in low:
        return TransientError(f"{what}: {msg}; retrying")
    if any(s in low for s in ("no such table", "no such column", "has no column", "on conflict")):
        return SchemaError(f"{what}: {msg}")
    if any(s in low for s in ("disk", "readonly", "malformed", "not a database", "unable to open")):
        return StorageError(f"{what}: {msg}; check the file, its permissions and free space")
    return DataError(f"{what}: {msg}")


class SqliteSink(Sink):
    """Applies folded batches to a SQLite database file, exactly once."""

    def __init__(self, config: SqliteSinkConfig, pipeline: str, busy_timeout: float = 30.0) -> None:
        self._cfg = config
        self._pipeline = pipeline
        self._expected: dict[int, int] | None = None  # positions this sink last saw
        self._busy_timeout = busy_timeout  # how long to wait for another writer's lock
        self._conn: sqlite3.Connection | None = None
        self._plans: dict[str, _Plan] = {}
        self._suppressing: sqlite3.Connection | None = None  # connection that saw SUPPRESS

    @property
    def where(self) -> str:
        return f"SQLite database {self._cfg.path} (sink of pipeline {self._pipeline})"

    def _connect(self) -> sqlite3.Connection:
        path = self._cfg.path
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise StorageError(
                f"cannot open {self.where}: directory {parent} does not exist; create it or fix the path"
            )
        try:
            conn = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=self._busy_timeout
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            raise StorageError(
                f"cannot open {self.where}: {exc}; check the path and its permissions"
            ) from exc
        return conn

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def _rollback(self) -> None:
        conn = self._conn
        if conn is not None and conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                conn.close()
                self._conn = None

    def open(self, pipeline: str) -> None:
        self._pipeline = pipeline
        conn = self._connection()
        try:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {OFFSETS} (pipeline TEXT NOT NULL, "
                "partition INTEGER NOT NULL, next_offset INTEGER NOT NULL, "
                "updated_at TEXT NOT NULL, PRIMARY KEY (pipeline, partition))"
            )
        except sqlite3.Error as exc:
            raise _translate(exc, f"creating {OFFSETS} in {self.where}") from exc

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def positions(self) -> dict[int, int]:
        try:
            rows = (
                self._connection()
                .execute(
                    f"SELECT partition, next_offset FROM {OFFSETS} WHERE pipeline = ?",
                    (self._pipeline,),
                )
                .fetchall()
            )
        except sqlite3.Error as exc:
            raise _translate(exc, f"reading {OFFSETS} in {self.where}") from exc
        self._expected = {int(p): int(o) for p, o in rows}
        return dict(self._expected)

    # ---- targets ---------------------------------------------------------------------

    def target_of(self, table_id: str) -> str:
        """The table that changes of source ``table_id`` go to (SQLite has no schemas)."""
        opts = options_for(self._cfg.tables, table_id)
        name = opts.target if opts is not None and opts.target else table_id
        return name.rpartition(".")[2]

    def _lookup(self, conn: sqlite3.Connection, table: str) -> TargetTable | None:
        rows = conn.execute(f"PRAGMA main.table_info({qi(table)})").fetchall()
        if not rows:
            return None
        key = tuple(r[1] for r in sorted((r for r in rows if r[5]), key=lambda r: r[5]))
        return TargetTable(table, {r[1]: r[2] or "" for r in rows}, key)

    def prepare(self, schemas: Mapping[str, TableSchema]) -> None:
        conn = self._connection()
        try:
            for table_id, source in schemas.items():
                if not source.key:
                    raise source_without_key(source, self.where)
                table = self.target_of(table_id)
                target = self._lookup(conn, table)
                if target is None:
                    if not self._cfg.create_tables:
                        raise missing_table(table, self.where)
                    conn.execute(create_table_sql(qi(table), source, "sqlite"))
                    target = self._lookup(conn, table)
                    assert target is not None
                check_target(source, target, self.where)
                self._plans[table_id] = _build_plan(
                    target, [c.name for c in source.columns], lazy=False
                )
        except sqlite3.Error as exc:
            raise _translate(exc, f"preparing target tables in {self.where}") from exc

    def _plan(self, table_id: str, ops: TableOps | None) -> _Plan:
        """The prepared plan, or one built from the target and the columns the rows carry."""
        plan = self._plans.get(table_id)
        if plan is not None and (not plan.lazy or ops is None):
            return plan
        wanted = set(plan.columns) if plan is not None else set()
        if ops is not None:
            wanted |= row_columns(ops)
        if plan is not None and len(wanted) == len(plan.columns):
            return plan
        target = self._lookup(self._connection(), self.target_of(table_id))
        if target is None:
            raise missing_table(self.target_of(table_id), self.where)
        if not target.key:
            raise SchemaError(f"target table {target.name} in {self.where} has no primary key")
        unknown = sorted(wanted - set(target.columns))
        if unknown:
            raise SchemaError(
                f"target table {target.name} in {self.where} lacks column(s) {', '.join(unknown)}"
            )
        wanted.update(target.key)
        plan = _build_plan(target, [c for c in target.columns if c in wanted], lazy=True)
        self._plans[table_id] = plan
        return plan

    def check(self, schemas: Mapping[str, TableSchema] | None = None) -> list[str]:
        """Check the database file and target tables without creating anything."""
        notes: list[str] = []
        exists = os.path.exists(self._cfg.path)
        if not exists and not self._cfg.create_tables:
            raise StorageError(f"{self.where} does not exist; create it or set create_tables: true")
        conn = self._connect() if exists else None
        try:
            notes.append(f"sink: {self.where} " + ("opened" if exists else "will be created"))
            for table_id in sorted(set(schemas or {}) | set(self._cfg.tables)):
                table = self.target_of(table_id)
                target = self._lookup(conn, table) if conn is not None else None
                if target is None:
                    if not self._cfg.create_tables:
                        raise missing_table(table, self.where)
                    notes.append(f"sink: table {table} will be created")
                    continue
                source = (schemas or {}).get(table_id)
                if source is not None:
                    check_target(source, target, self.where)
                elif not target.key:
                    raise SchemaError(f"target table {table} in {self.where} has no primary key")
                notes.append(f"sink: {table_id} → {table} ok")
        except sqlite3.Error as exc:
            raise _translate(exc, f"checking {self.where}") from exc
        finally:
            if conn is not None:
                conn.close()
        return notes

    # ---- apply -----------------------------------------------------------------------

    def apply(self, changes: Sequence[Change], positions: Mapping[int, int]) -> ApplyResult:
        steps, result = fold(changes)
        conn = self._connection()
        what = f"applying changes in {self.where}"
        try:
            conn.execute("BEGIN IMMEDIATE")
            suppress = self._suppress(conn)
            if suppress:
                conn.execute(_SUPPRESS_ON, (suppress,))
            fence_check(
                self._pipeline,
                self._expected,
                conn.execute(
                    f"SELECT partition, next_offset FROM {OFFSETS} WHERE pipeline = ?",
                    (self._pipeline,),
                ).fetchall(),
            )
            for step in steps:
                plan = self._plan(step.table_id, step if isinstance(step, TableOps) else None)
                what = f"applying changes to {plan.target} in {self.where}"
                if isinstance(step, Truncate):
                    conn.execute(plan.truncate_sql)
                else:
                    self._apply_ops(conn, plan, step)
            if positions:
                what = f"storing positions in {self.where}"
                conn.executemany(
                    f"INSERT INTO {OFFSETS} (pipeline, partition, next_offset, updated_at) "
                    "VALUES (?, ?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')) "
                    "ON CONFLICT (pipeline, partition) DO UPDATE SET "
                    "next_offset = excluded.next_offset, updated_at = excluded.updated_at",
                    [(self._pipeline, int(p), int(o)) for p, o in positions.items()],
                )
            if suppress:
                conn.execute(_SUPPRESS_OFF, (suppress,))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise _translate(exc, what) from exc
        except TransientError:
            self._rollback()
            raise
        except (TypeError, ValueError) as exc:  # binascii.Error is a ValueError
            self._rollback()
            raise DataError(f"{what}: {self._bad_value(steps, exc)}") from exc
        except BaseException:
            self._rollback()
            raise
        if self._expected is not None:
            self._expected.update(positions)
        return result

    def _suppress(self, conn: sqlite3.Connection) -> str | None:
        """The suppress row to hold during this transaction, if capture is to be hidden.

        Looked up inside the write transaction until found, then cached for the
        connection: a source that installs its triggers later is still honoured.
        """
        if not self._cfg.suppress_capture:
            return None
        if self._suppressing is not conn:
            found = conn.execute(
                "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?", (SUPPRESS,)
            ).fetchone()
            if found is None:
                return None
            self._suppressing = conn
        return f"sink:{self._pipeline}"

    def _bad_value(self, steps: Sequence[TableOps | Truncate], exc: Exception) -> str:
        """Name the column whose value could not be converted (error path only)."""
        for step in steps:
            plan = self._plans.get(step.table_id)
            if plan is None or not isinstance(step, TableOps):
                continue
            for row in [*step.upserts, *(r for r, _ in step.partials)]:
                for col, adapt in plan.pairs:
                    try:
                        adapt(row.get(col))
                    except (TypeError, ValueError) as err:
                        return f"cannot write {col}={row.get(col)!r:.40} to {plan.target}: {err}"
        return f"a value does not fit its column: {exc}"

    def _apply_ops(self, conn: sqlite3.Connection, plan: _Plan, ops: TableOps) -> None:
        if ops.deletes:
            kp = plan.key_pairs
            conn.executemany(plan.delete_sql, [[a(k.get(c)) for c, a in kp] for k in ops.deletes])
        if ops.upserts:
            pairs = plan.pairs
            conn.executemany(plan.upsert_sql, [_values(r, pairs) for r in ops.upserts])
        if ops.partials:
            groups: dict[str, tuple[tuple[tuple[str, Adapter], ...], list[list[Any]]]] = {}
            for row, unchanged in ops.partials:
                unsent = {c for c in plan.columns if c in unchanged or c not in row}
                sql, pairs_ = plan.partial(unsent)
                if sql:
                    groups.setdefault(sql, (pairs_, []))[1].append(_values(row, pairs_))
            for sql, (_, rows) in groups.items():
                conn.executemany(sql, rows)


def _values(row: Row, pairs: tuple[tuple[str, Adapter], ...]) -> list[Any]:
    g = row.get
    return [a(g(c)) for c, a in pairs]
