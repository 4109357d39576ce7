"""Where monitoring records live: SQLite (default) or PostgreSQL.

One row per change, keyed by ``(tbl, key, position, pipeline)`` (so "this table and
key" is a prefix seek). Each stage upserts its own columns (``COALESCE(new, old)``),
so the capture process and the apply process can write in any order and the row
ends up complete. ``recorded_us`` (first write, never updated) drives retention
through an index that only ever grows at its end. The correlation id is stored but
not indexed: a random-valued index cost more than half of the store's write time,
so ``--id`` lookups scan (seconds on millions of rows; a debugging aid).
"""

from __future__ import annotations

import abc
import contextlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from syncline.config import MonitoringConfig, PostgresMonitoringStore
from syncline.errors import ConnectError, PermanentError, StorageError
from syncline.monitoring.records import COLUMNS, Row

_KEY = ("tbl", "key", "position", "pipeline")
_TYPES = {
    "pipeline": "TEXT NOT NULL",
    "tbl": "TEXT NOT NULL",
    "key": "TEXT NOT NULL",
    "position": "TEXT NOT NULL",
    "cid": "TEXT",
    "op": "TEXT",
    "target": "TEXT",
    "failure": "TEXT",
    "error": "TEXT",
    "recorded_us": "BIGINT NOT NULL",
}


def _ddl(table: str, suffix: str) -> list[str]:
    cols = ", ".join(f"{c} {_TYPES.get(c, 'BIGINT')}" for c in COLUMNS)
    return [
        f"CREATE TABLE IF NOT EXISTS {table} ({cols}, PRIMARY KEY ({', '.join(_KEY)})){suffix}",
        f"CREATE INDEX IF NOT EXISTS {table}_recorded ON {table} (recorded_us)",
    ]


def _upsert(table: str, placeholder: str) -> str:
    values = ", ".join([placeholder] * len(COLUMNS))
    keep = ", ".join(
        f"{c} = COALESCE(excluded.{c}, {table}.{c})"
        for c in COLUMNS
        if c not in _KEY and c != "recorded_us"
    )
    return (
        f"INSERT INTO {table} ({', '.join(COLUMNS)}) VALUES ({values}) "
        f"ON CONFLICT ({', '.join(_KEY)}) DO UPDATE SET {keep}"
    )


def table_candidates(table: str) -> list[str]:
    """A bare name means the table in ``public`` (PostgreSQL) or ``main`` (SQLite), as in
    the config; ``schema.table`` means itself. Exact names keep lookups on the key."""
    if "." in table:
        return [table]
    return [f"public.{table}", f"main.{table}", table]


class MonitoringStore(abc.ABC):
    table = "syncline_trace"

    @abc.abstractmethod
    def write(self, rows: Sequence[Row]) -> None:
        """Upsert ``rows`` in one transaction."""

    @abc.abstractmethod
    def purge(self, before_us: int) -> int:
        """Delete rows first recorded before ``before_us``; how many went."""

    @abc.abstractmethod
    def _select(self, where: str, args: list[Any], limit: int) -> list[tuple[Any, ...]]: ...

    @property
    @abc.abstractmethod
    def placeholder(self) -> str: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def query(
        self,
        *,
        table: str | None = None,
        keys: Sequence[str] = (),
        cid: str | None = None,
        pipeline: str | None = None,
        limit: int = 20,
    ) -> list[dict[str, Any]]:
        """Rows for ``table`` (``schema.table`` or a bare name) and any of ``keys``, or one
        ``cid``; most recent change first."""
        ph = self.placeholder
        clauses: list[str] = []
        args: list[Any] = []
        if table is not None:
            names = table_candidates(table)
            clauses.append(f"tbl IN ({', '.join([ph] * len(names))})")
            args += names
        if keys:
            clauses.append(f"key IN ({', '.join([ph] * len(keys))})")
            args += list(keys)
        if cid is not None:
            clauses.append(f"cid = {ph}")
            args.append(cid)
        if pipeline is not None:
            clauses.append(f"pipeline = {ph}")
            args.append(pipeline)
        where = " AND ".join(clauses) or "TRUE"
        return [dict(zip(COLUMNS, r, strict=True)) for r in self._select(where, args, limit)]

    def _order(self) -> str:
        return "COALESCE(committed_us, captured_us, applied_us, failed_us, recorded_us) DESC"


class SqliteTraceStore(MonitoringStore):
    """A WAL-mode SQLite file shared by the processes of one machine (busy timeout, no fsync
    per write: monitoring records are not the data and may lose the last second on a crash)."""

    placeholder = "?"

    def __init__(self, path: str, *, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.exists():
            raise PermanentError(
                f"no monitoring records at {self.path} yet (is monitoring.enabled true in the "
                "config syncline run uses?)"
            )
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            if create:
                for stmt in _ddl(self.table, " WITHOUT ROWID"):
                    self._db.execute(stmt)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"monitoring store {self.path}: {exc}") from exc
        self._upsert = _upsert(self.table, "?")

    def write(self, rows: Sequence[Row]) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(self._upsert, rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StorageError(f"monitoring store {self.path}: {exc}") from exc

    def purge(self, before_us: int) -> int:
        try:
            cur = self._db.execute(f"DELETE FROM {self.table} WHERE recorded_us < ?", (before_us,))
        except sqlite3.Error as exc:
            raise StorageError(f"monitoring store {self.path}: {exc}") from exc
        return cur.rowcount

    def _select(self, where: str, args: list[Any], limit: int) -> list[tuple[Any, ...]]:
        sql = (
            f"SELECT {', '.join(COLUMNS)} FROM {self.table} WHERE {where} "
            f"ORDER BY {self._order()} LIMIT ?"
        )
        try:
            return list(self._db.execute(sql, [*args, limit]))
        except sqlite3.Error as exc:
            raise StorageError(f"monitoring store {self.path}: {exc}") from exc

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()


class PostgresTraceStore(MonitoringStore):
    """A table in a PostgreSQL database, for several machines or long retention."""

    placeholder = "%s"

    def __init__(self, dsn: str, *, create: bool = True) -> None:
        import psycopg2

        self._errors = psycopg2.Error
        try:
            self._db = psycopg2.connect(dsn, connect_timeout=10)
            self._db.autocommit = True
            if create:
                with self._db.cursor() as cur:
                    for stmt in _ddl(self.table, ""):
                        cur.execute(stmt)
        except psycopg2.OperationalError as exc:
            raise ConnectError(f"monitoring store (postgres): {_first_line(exc)}") from exc
        except psycopg2.Error as exc:
            raise PermanentError(f"monitoring store (postgres): {_first_line(exc)}") from exc
        self._upsert = _upsert(self.table, "%s")

    def _run(self, fn: Any) -> Any:
        try:
            return fn()
        except self._errors as exc:
            raise ConnectError(f"monitoring store (postgres): {_first_line(exc)}") from exc

    def write(self, rows: Sequence[Row]) -> None:
        from psycopg2.extras import execute_values

        sql = self._upsert.replace(f"VALUES ({', '.join(['%s'] * len(COLUMNS))})", "VALUES %s")

        def go() -> None:
            self._db.autocommit = False
            try:
                with self._db.cursor() as cur:
                    execute_values(cur, sql, rows, page_size=1000)
                self._db.commit()
            except BaseException:
                with contextlib.suppress(Exception):
                    self._db.rollback()
                raise
            finally:
                self._db.autocommit = True

        self._run(go)

    def purge(self, before_us: int) -> int:
        def go() -> int:
            with self._db.cursor() as cur:
                cur.execute(f"DELETE FROM {self.table} WHERE recorded_us < %s", (before_us,))
                return int(cur.rowcount)

        result: int = self._run(go)
        return result

    def _select(self, where: str, args: list[Any], limit: int) -> list[tuple[Any, ...]]:
        sql = (
            f"SELECT {', '.join(COLUMNS)} FROM {self.table} WHERE {where} "
            f"ORDER BY {self._order()} LIMIT %s"
        )

        def go() -> list[tuple[Any, ...]]:
            with self._db.cursor() as cur:
                cur.execute(sql, [*args, limit])
                return list(cur.fetchall())

        result: list[tuple[Any, ...]] = self._run(go)
        return result

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._db.close()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def open_store(cfg: MonitoringConfig, *, create: bool = True) -> MonitoringStore:
    """The configured store; ``create=False`` (queries) does not create a missing one."""
    store = cfg.store
    try:
        if isinstance(store, PostgresMonitoringStore):
            return PostgresTraceStore(store.dsn, create=create)
        return SqliteTraceStore(store.path, create=create)
    except ImportError as exc:
        raise PermanentError(
            "monitoring store kind postgres needs psycopg2: pip install 'syncline[postgres]'"
        ) from exc
