"""``@idempotent``: run a handler at most once per event, in the service's own transaction.

The event's id is inserted into the processed-events table *first*, in the same
transaction the handler then writes in. Three outcomes:

* the insert adds a row: the handler runs, and its writes and the id commit
  together (or, if it raises, roll back together, so a redelivery retries);
* the insert finds the id: it was committed before, the transaction is rolled
  back and ``Duplicate`` is returned without calling the handler;
* another transaction holds the same id uncommitted (a concurrent redelivery):
  PostgreSQL makes the insert wait for it, then goes on as one of the two above
  (SQLite's write lock serialises the two whole transactions to the same end).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

from syncline.consumer.db import (
    DEFAULT_TABLE,
    Scope,
    check_table,
    dialect_of,
    dialect_of_error,
    ensure_table,
    require_dialect,
)
from syncline.consumer.ids import EventLike, IdOf, call_id_of, event_id
from syncline.errors import ConfigError

C = TypeVar("C")
E = TypeVar("E")
P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Duplicate:
    """Returned instead of the handler's result: ``consumer`` already processed the event."""

    consumer: str
    event_id: str


def idempotent(
    *, consumer: str, table: str = DEFAULT_TABLE, id_of: IdOf | None = None
) -> Callable[
    [Callable[Concatenate[C, E, P], T]],
    Callable[Concatenate[C | Callable[[], C], E, P], T | Duplicate],
]:
    """Make ``handler(conn, event, ...)`` process each event once for ``consumer``.

    ``conn`` is a psycopg2 or sqlite3 connection, or a callable returning a new
    one (then it is closed after the call). If ``conn`` has a transaction open,
    the work happens under a savepoint in it and the caller commits; otherwise
    the wrapper begins and commits a transaction of its own. The handler must not
    commit or roll back itself. Exceptions from the handler roll everything back
    and propagate; driver errors (its SQL's as well as ours) become
    ``TransientError`` when a retry can help (connection lost, deadlock,
    serialization failure, lock timeout) and ``PermanentError`` otherwise, with
    the driver's error as ``__cause__``. ``id_of(event) -> str`` replaces ``event_id``
    for events that are not syncline change events. ``table`` is created on
    first use.
    """
    if not isinstance(consumer, str) or not consumer.strip():
        raise ConfigError(f"consumer must be a non-empty name, not {consumer!r}")
    check_table(table)

    def decorate(
        handler: Callable[Concatenate[C, E, P], T],
    ) -> Callable[Concatenate[C | Callable[[], C], E, P], T | Duplicate]:
        who = f"handler {getattr(handler, '__qualname__', handler)!s} of consumer {consumer}"

        @functools.wraps(handler)
        def wrapper(
            conn: C | Callable[[], C], event: E, /, *args: P.args, **kwargs: P.kwargs
        ) -> T | Duplicate:
            eid = call_id_of(id_of, event) if id_of else event_id(cast(EventLike, event))
            opened, owned = _connection(conn, consumer)
            try:
                return _once(
                    opened, eid, consumer, table, who, lambda c: handler(c, event, *args, **kwargs)
                )
            finally:
                if owned:
                    with contextlib.suppress(Exception):
                        opened.close()

        return wrapper

    return decorate


def _connection(conn: Any, consumer: str) -> tuple[Any, bool]:
    """``(connection, owned)``: ``conn`` itself, or what the callable ``conn`` returns."""
    if dialect_of(conn) is not None or not callable(conn):
        require_dialect(conn)
        return conn, False
    try:
        made = conn()
    except Exception as exc:
        dialect = dialect_of_error(exc)
        if dialect is None:
            raise
        raise dialect.translate(exc, f"connecting for consumer {consumer}") from exc
    if dialect_of(made) is None:
        with contextlib.suppress(Exception):
            made.close()
        require_dialect(made)
    return made, True


def _once(
    conn: Any, eid: str, consumer: str, table: str, who: str, run: Callable[[Any], T]
) -> T | Duplicate:
    dialect = require_dialect(conn)
    scope = Scope(dialect, conn)
    what = f"recording event {eid} for consumer {consumer}"
    insert = dialect.insert_sql(table)
    scope.start(what)
    try:
        try:
            added = scope.execute(insert, (consumer, eid)) == 1
        except dialect.errors as exc:
            if not dialect.is_missing_table(exc):
                raise dialect.translate(exc, what) from exc
            scope.abort()  # first use: create the table, then start over
            ensure_table(conn, table)
            scope.start(what)
            try:
                added = scope.execute(insert, (consumer, eid)) == 1
            except dialect.errors as exc2:
                raise dialect.translate(exc2, what) from exc2
        if not added:
            scope.abort()
            return Duplicate(consumer, eid)
        try:
            result = run(conn)
        except dialect.errors as exc:  # the handler's own SQL: retry or not, like ours
            raise dialect.translate(exc, who) from exc
        problem = scope.problem(who)
        if problem is not None:
            raise problem
    except BaseException:
        scope.abort()
        raise
    scope.commit(f"committing event {eid} for consumer {consumer}")
    return result
