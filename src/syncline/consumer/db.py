"""The processed-events table and transaction control on a service's own connection.

Two DB-API drivers are supported, recognised by the connection's class (the
drivers are not imported here, so ``syncline.consumer`` works with just one of
them installed): psycopg2 and the standard library's sqlite3. Everything that
differs between them (SQL dialect, how a transaction starts and ends, which
errors are worth a retry) lives in a ``Dialect``.

A ``Scope`` is one unit of work on a connection. When the connection is idle
the scope owns a transaction and commits it; when the caller already has a
transaction open the scope is a savepoint inside it and the caller commits.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import re
import sqlite3
from datetime import timedelta
from typing import Any, Final

from syncline.errors import ConfigError, PermanentError, SynclineError, TransientError

DEFAULT_TABLE: Final = "syncline_processed_events"
_SAVEPOINT: Final = "syncline_idempotent"
_NAME = re.compile(r"(?:([A-Za-z_][A-Za-z0-9_]*)\.)?([A-Za-z_][A-Za-z0-9_]*)")
# SQLSTATE classes a retry can fix: connection, transaction rollback (serialization
# failure, deadlock), resources, operator intervention (shutdown, statement timeout),
# system; and lock_not_available (lock_timeout).
_PG_TRANSIENT = ("08", "40", "53", "57", "58", "55P03")
_PG_REFUSED = ("authentication failed", "does not exist", "no pg_hba.conf entry")
_PG_RACED = ("23505", "42P07", "42710")  # a concurrent CREATE ... IF NOT EXISTS won


def check_table(table: str) -> tuple[str | None, str]:
    """``[schema.]name`` → parts; anything else is refused (it is pasted into SQL)."""
    m = _NAME.fullmatch(table) if isinstance(table, str) else None
    if m is None:
        raise ConfigError(
            f"processed-events table {table!r} is not a plain [schema.]name (letters, digits and _)"
        )
    return m.group(1), m.group(2)


def first_line(exc: BaseException) -> str:
    for line in str(exc).strip().splitlines():
        if line.strip():
            return re.sub(r"^(ERROR|FATAL):\s+", "", line.strip())
    return type(exc).__name__


class Dialect(abc.ABC):
    """What differs between the supported drivers."""

    label: str
    errors: tuple[type[BaseException], ...]

    @abc.abstractmethod
    def in_transaction(self, conn: Any) -> bool:
        """Whether the caller has a transaction open (raises if it cannot go on)."""

    @abc.abstractmethod
    def begin(self, conn: Any) -> None: ...

    @abc.abstractmethod
    def commit(self, conn: Any) -> None: ...

    @abc.abstractmethod
    def rollback(self, conn: Any) -> None: ...

    @abc.abstractmethod
    def create_sql(self, table: str) -> list[str]: ...

    @abc.abstractmethod
    def insert_sql(self, table: str) -> str: ...

    @abc.abstractmethod
    def purge_sql(self, table: str, by_consumer: bool) -> str: ...

    @abc.abstractmethod
    def purge_arg(self, older_than: timedelta) -> Any: ...

    @abc.abstractmethod
    def is_missing_table(self, exc: BaseException) -> bool: ...

    @abc.abstractmethod
    def is_create_race(self, exc: BaseException) -> bool: ...

    @abc.abstractmethod
    def is_transient(self, exc: BaseException) -> bool: ...

    def translate(self, exc: BaseException, what: str) -> SynclineError:
        msg = f"{what} failed in {self.label}: {first_line(exc)}"
        if self.is_transient(exc):
            return TransientError(f"{msg} (transient: retry the delivery)")
        return PermanentError(msg)


class SqliteDialect(Dialect):
    label = "SQLite"
    errors = (sqlite3.Error,)

    def in_transaction(self, conn: Any) -> bool:
        # Python 3.12's autocommit=False keeps a transaction open at all times: it is
        # ours to commit, since the caller cannot have meant to leave it pending.
        return bool(conn.in_transaction) and getattr(conn, "autocommit", None) is not False

    def begin(self, conn: Any) -> None:
        if getattr(conn, "autocommit", None) is not False:
            conn.execute("BEGIN IMMEDIATE")  # take the write lock now, not on upgrade

    def commit(self, conn: Any) -> None:
        if getattr(conn, "autocommit", None) is False:
            conn.commit()
        else:
            conn.execute("COMMIT")  # commit() is a no-op under autocommit=True

    def rollback(self, conn: Any) -> None:
        if getattr(conn, "autocommit", None) is False:
            conn.rollback()
        elif conn.in_transaction:
            conn.execute("ROLLBACK")

    def create_sql(self, table: str) -> list[str]:
        schema, name = check_table(table)
        prefix = f"{schema}." if schema else ""
        return [
            f"CREATE TABLE IF NOT EXISTS {table} (consumer TEXT NOT NULL, event_id TEXT NOT NULL,"
            " processed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),"
            " PRIMARY KEY (consumer, event_id)) WITHOUT ROWID",
            f"CREATE INDEX IF NOT EXISTS {prefix}{name}_processed_at ON {name} (processed_at)",
        ]

    def insert_sql(self, table: str) -> str:
        return f"INSERT OR IGNORE INTO {table} (consumer, event_id) VALUES (?, ?)"

    def purge_sql(self, table: str, by_consumer: bool) -> str:
        cut = "processed_at < strftime('%Y-%m-%d %H:%M:%f', 'now', ?)"
        return f"DELETE FROM {table} WHERE {cut}" + (" AND consumer = ?" if by_consumer else "")

    def purge_arg(self, older_than: timedelta) -> Any:
        return f"-{older_than.total_seconds():.6f} seconds"

    def is_missing_table(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.OperationalError) and "no such table" in str(exc)

    def is_create_race(self, exc: BaseException) -> bool:
        return False  # SQLite serialises writers; IF NOT EXISTS is enough

    def is_transient(self, exc: BaseException) -> bool:
        low = str(exc).lower()
        return isinstance(exc, sqlite3.OperationalError) and ("locked" in low or "busy" in low)


class PostgresDialect(Dialect):
    label = "PostgreSQL"

    def __init__(self) -> None:
        import psycopg2  # only reached with a psycopg2 connection in hand

        self.errors = (psycopg2.Error,)
        self._lost = (psycopg2.OperationalError, psycopg2.InterfaceError)

    def in_transaction(self, conn: Any) -> bool:
        if conn.closed:
            raise TransientError("the PostgreSQL connection is closed (transient: reconnect)")
        status = conn.info.transaction_status  # libpq: 0 idle, 1 active, 2 in txn, 3 failed
        if status == 3:
            raise PermanentError(
                "the PostgreSQL connection's transaction has failed; roll it back before "
                "calling an idempotent handler"
            )
        if status not in (0, 2):
            raise TransientError(
                f"the PostgreSQL connection is not usable (transaction status {status}); reconnect"
            )
        return bool(status == 2)

    def begin(self, conn: Any) -> None:
        if conn.autocommit:
            with conn.cursor() as cur:
                cur.execute("BEGIN")
        # otherwise psycopg2 opens the transaction with the first statement

    def commit(self, conn: Any) -> None:
        if conn.autocommit:
            with conn.cursor() as cur:
                cur.execute("COMMIT")
        else:
            conn.commit()

    def rollback(self, conn: Any) -> None:
        if conn.closed:
            return  # the server rolled it back when the connection went
        if conn.autocommit:
            if conn.info.transaction_status != 0:
                with conn.cursor() as cur:
                    cur.execute("ROLLBACK")
        else:
            conn.rollback()

    def create_sql(self, table: str) -> list[str]:
        _, name = check_table(table)
        return [
            f"CREATE TABLE IF NOT EXISTS {table} (consumer text NOT NULL, event_id text NOT NULL,"
            " processed_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (consumer, event_id))",
            f"CREATE INDEX IF NOT EXISTS {name}_processed_at ON {table} (processed_at)",
        ]

    def insert_sql(self, table: str) -> str:
        return f"INSERT INTO {table} (consumer, event_id) VALUES (%s, %s) ON CONFLICT DO NOTHING"

    def purge_sql(self, table: str, by_consumer: bool) -> str:
        cut = "processed_at < now() - %s"
        return f"DELETE FROM {table} WHERE {cut}" + (" AND consumer = %s" if by_consumer else "")

    def purge_arg(self, older_than: timedelta) -> Any:
        return older_than  # psycopg2 sends a timedelta as an interval

    def is_missing_table(self, exc: BaseException) -> bool:
        return getattr(exc, "pgcode", None) == "42P01"

    def is_create_race(self, exc: BaseException) -> bool:
        return getattr(exc, "pgcode", None) in _PG_RACED

    def is_transient(self, exc: BaseException) -> bool:
        code = getattr(exc, "pgcode", None) or ""
        if code:
            return code[:2] in _PG_TRANSIENT or code in _PG_TRANSIENT
        # no SQLSTATE: libpq could not connect or lost the connection, or it was closed
        low = str(exc).lower()
        return isinstance(exc, self._lost) and not any(s in low for s in _PG_REFUSED)


_SQLITE = SqliteDialect()


@functools.cache
def _postgres() -> PostgresDialect:
    return PostgresDialect()


def dialect_of(conn: Any) -> Dialect | None:
    """The dialect for ``conn``, or ``None`` when it is not a supported connection."""
    if isinstance(conn, sqlite3.Connection):
        return _SQLITE
    for cls in type(conn).__mro__:
        if cls.__module__.startswith("psycopg2") and cls.__name__ == "connection":
            return _postgres()
    return None


def dialect_of_error(exc: BaseException) -> Dialect | None:
    """The dialect whose driver raised ``exc`` (e.g. from a user's connect callable)."""
    if isinstance(exc, sqlite3.Error):
        return _SQLITE
    if type(exc).__module__.startswith("psycopg2"):
        return _postgres()
    return None


def require_dialect(conn: Any) -> Dialect:
    dialect = dialect_of(conn)
    if dialect is None:
        raise ConfigError(
            f"unsupported connection {type(conn).__module__}.{type(conn).__name__}: "
            "pass a psycopg2 or sqlite3 connection (or a callable returning one)"
        )
    return dialect


class Scope:
    """One unit of work: a transaction of our own, or a savepoint in the caller's."""

    def __init__(self, dialect: Dialect, conn: Any) -> None:
        self.dialect, self.conn = dialect, conn
        self.nested = False
        self.active = False  # started and not yet committed or undone

    def start(self, what: str) -> None:
        try:
            self.nested = self.dialect.in_transaction(self.conn)
            if self.nested:
                self.execute(f"SAVEPOINT {_SAVEPOINT}")
            else:
                self.dialect.begin(self.conn)
        except self.dialect.errors as exc:
            raise self.dialect.translate(exc, what) from exc
        self.active = True

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        """Run one statement; returns its rowcount. Driver errors are not translated."""
        cur = self.conn.cursor()
        try:
            cur.execute(sql, params)
            return int(cur.rowcount)
        finally:
            cur.close()

    def problem(self, who: str) -> SynclineError | None:
        """Why the transaction cannot be committed after ``who`` (a handler) ran, if so.

        A handler must neither end the transaction itself nor swallow a PostgreSQL
        error: COMMIT of a failed transaction silently rolls back, which would
        report success for work (and an id) that was thrown away.
        """
        if self.dialect is _SQLITE:
            ended = not self.conn.in_transaction
        elif self.conn.closed:
            return TransientError(f"{who} lost its PostgreSQL connection (transient: retry)")
        elif self.conn.info.transaction_status == 3:
            return PermanentError(
                f"{who} swallowed a database error that aborted the transaction; "
                "let it propagate (nothing was recorded)"
            )
        else:
            ended = self.conn.info.transaction_status != 2
        if ended:
            return PermanentError(
                f"{who} committed or rolled back the transaction itself; leave that to @idempotent"
            )
        return None

    def commit(self, what: str) -> None:
        self.active = False
        try:
            if self.nested:
                self.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}")
            else:
                self.dialect.commit(self.conn)
        except self.dialect.errors as exc:
            self.active = True
            self.abort()
            raise self.dialect.translate(exc, what) from exc

    def abort(self) -> None:
        """Undo the scope's work; errors are dropped (the caller is already failing)."""
        if not self.active:
            return
        self.active = False
        with contextlib.suppress(*self.dialect.errors):
            if self.nested:
                self.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
                self.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}")
            else:
                self.dialect.rollback(self.conn)


def ensure_table(conn: Any, table: str = DEFAULT_TABLE) -> None:
    """Create the processed-events table (and its ``processed_at`` index) if missing.

    Runs in its own transaction, or inside the caller's open one (then the caller
    commits). A concurrent creator winning the race is fine.
    """
    check_table(table)
    dialect = require_dialect(conn)
    scope = Scope(dialect, conn)
    what = f"creating {table}"
    scope.start(what)
    try:
        for stmt in dialect.create_sql(table):
            scope.execute(stmt)
    except dialect.errors as exc:
        scope.abort()
        if dialect.is_create_race(exc):
            return
        raise dialect.translate(exc, what) from exc
    except BaseException:
        scope.abort()
        raise
    scope.commit(what)


def purge_processed(
    conn: Any,
    older_than: timedelta | float,
    *,
    consumer: str | None = None,
    table: str = DEFAULT_TABLE,
) -> int:
    """Forget ids recorded more than ``older_than`` ago (a timedelta or seconds).

    Returns how many were deleted. An event redelivered after its id is purged is
    processed again, so keep ids longer than any redelivery can come (the log's
    retention). ``consumer`` limits the purge to one consumer.
    """
    check_table(table)
    if not isinstance(older_than, timedelta):
        if isinstance(older_than, bool) or not isinstance(older_than, int | float):
            raise ConfigError(f"older_than must be a timedelta or seconds, not {older_than!r}")
        older_than = timedelta(seconds=older_than)
    if older_than < timedelta(0):
        raise ConfigError(f"older_than must not be negative ({older_than})")
    dialect = require_dialect(conn)
    scope = Scope(dialect, conn)
    what = f"purging {table}"
    scope.start(what)
    params: tuple[Any, ...] = (dialect.purge_arg(older_than),)
    if consumer is not None:
        params += (consumer,)
    try:
        n = scope.execute(dialect.purge_sql(table, consumer is not None), params)
    except dialect.errors as exc:
        scope.abort()
        if dialect.is_missing_table(exc):
            return 0  # nothing was ever recorded
        raise dialect.translate(exc, what) from exc
    except BaseException:
        scope.abort()
        raise
    scope.commit(what)
    return n
