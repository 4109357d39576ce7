"""PostgreSQL replication origins: the tag that keeps changes from going round in circles.

A sink with ``origin: X`` commits its transactions under the replication origin
``X``; pgoutput announces it at the start of each such transaction (an 'O'
message), and a source with ``skip_origins: [X]`` drops the whole transaction
(its checkpoint still moves past it). The source also puts the origin name on
the events of transactions it forwards (``source.origin``), and a sink tags a
change that arrives with an origin under *that* origin rather than its own, so a
change keeps the name of the node it was first written on however many hops it
travels; that is what makes rings work (docs/bidirectional.md).

A replication origin belongs to the whole server, and only one session may use
it at a time, yet several databases of one server may each receive changes that
started on node A. So the origin the sink really uses is qualified with the
target database, ``syncline_from_a@inventory``, and the source compares only
the part before the ``@`` (which the config's origin names cannot contain).

One transaction has one origin, so a batch mixing origins is applied as one
transaction per origin (``split_by_origin`` keeps every key's order); only the
last of them stores the log positions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg2

from syncline.errors import AuthError, PermanentError, SynclineError, TransientError
from syncline.events import Change, now_us

# Origins of PostgreSQL's own subscriptions are named pg_<oid>: they mean nothing on
# another server (and may collide with a subscription there), so changes that came in
# that way are tagged like local writes.
_NATIVE = re.compile(r"pg_\d+")
_FUNCTIONS = (
    "pg_replication_origin_oid(text)",
    "pg_replication_origin_create(text)",
    "pg_replication_origin_session_is_setup()",
    "pg_replication_origin_session_reset()",
    "pg_replication_origin_session_setup(text)",
    "pg_replication_origin_xact_setup(pg_lsn, timestamp with time zone)",
)
_SWITCH = (
    "SELECT pg_replication_origin_session_reset() WHERE pg_replication_origin_session_is_setup();"
    "SELECT pg_replication_origin_session_setup(%s);"
)
# The origin timestamp becomes the transaction's decoded commit time downstream (and its
# commit timestamp here); without it PostgreSQL reuses the first one forever.
_XACT = (
    "SELECT pg_replication_origin_xact_setup('0/0', 'epoch'::timestamptz + %s * '1 us'::interval)"
)


SEPARATOR = "@"


def tag_of(change: Change, default: str) -> str:
    """The origin a change is written under: the one it arrived with, else ``default``."""
    origin = change.event.source.origin
    if origin is None or _NATIVE.fullmatch(origin):
        return default
    return origin


def _key(change: Change) -> Any:
    src = change.event.source
    vals: Any = tuple(change.key.values())
    try:
        hash(vals)
    except TypeError:  # a list or dict in the key
        vals = repr(vals)
    return (src.schema, src.table, vals)


def split_by_origin(changes: Sequence[Change], default: str) -> list[tuple[str, Sequence[Change]]]:
    """Group ``changes`` by the origin each must be written under, keeping per-key order.

    A change joins the earliest group of its origin that does not precede a group
    already holding its key (or, after a truncate, its table), so the groups can be
    committed one after another. Most batches have one origin and stay whole.
    """
    if not changes:
        return []
    seen = {c.event.source.origin for c in changes}
    if len(seen) == 1:  # the usual case: one group, no copying
        only = seen.pop()
        return [(default if only is None or _NATIVE.fullmatch(only) else only, changes)]
    tags: list[str] = []  # origin of each group
    groups: list[list[Change]] = []
    key_at: dict[Any, int] = {}  # key → index of the last group holding it
    table_last: dict[str, int] = {}  # table → index of the last group touching it
    table_floor: dict[str, int] = {}  # table → index of its last truncate's group
    for change in changes:
        origin = tag_of(change, default)
        table = change.event.table_id
        truncate = change.event.op == "t"
        if truncate:
            lo = table_last.get(table, 0)
        else:
            key = _key(change)
            lo = max(key_at.get(key, 0), table_floor.get(table, 0))
        at = next((i for i in range(lo, len(tags)) if tags[i] == origin), None)
        if at is None:
            at = len(tags)
            tags.append(origin)
            groups.append([])
        groups[at].append(change)
        if truncate:
            table_floor[table] = at
        else:
            key_at[key] = at
        table_last[table] = max(table_last.get(table, 0), at)
    return list(zip(tags, groups, strict=True))


def newest_ts_us(changes: Iterable[Change]) -> int:
    """The latest source commit time among ``changes`` (the group's origin timestamp).

    Like PostgreSQL's own subscriptions, a forwarded transaction keeps the commit
    time of where it came from; a batch without changes gets the current time.
    """
    best = max([s.ts_us or s.ts_ms * 1000 for s in (c.event.source for c in changes)], default=0)
    return best or now_us()


def grant_hint(user: str) -> str:
    return f"connect as a superuser or GRANT EXECUTE ON FUNCTION {', '.join(_FUNCTIONS)} TO {user}"


def _denied_function(exc: psycopg2.Error) -> str:
    m = re.search(r"permission denied for function (\w+)", str(exc))
    return m.group(1) if m else "a replication origin function"


class SessionOrigin:
    """The replication origin the apply connection's session writes under.

    Callers name origins by their logical name; the server sees them qualified with
    the target database (see the module notes). The session origin outlives
    transactions (it belongs to the connection), so it is switched only when a
    transaction needs another one; the origin timestamp is set for every
    transaction. Both happen in one round trip.
    """

    def __init__(self, where: str, user: str) -> None:
        self.where = where
        self.user = user
        self._db: str | None = None  # the target's current_database(), learnt in ensure()
        self._conn: Any = None  # the connection whose session origin is ``_current``
        self._current: str | None = None
        self._known: set[str] = set()  # origins (logical names) that exist in the target

    def qualified(self, origin: str) -> str:
        assert self._db is not None, "ensure() runs first"
        return f"{origin}{SEPARATOR}{self._db}"

    def _error(self, exc: psycopg2.Error, origin: str, doing: str) -> SynclineError | None:
        """Our error for the origin-specific failures; None leaves ``exc`` to the caller."""
        logical = origin
        code = getattr(exc, "pgcode", None) or ""
        if self._db is not None:
            origin = self.qualified(origin)
        if code == "42501":
            return AuthError(
                f"user {self.user} may not {doing} replication origin {origin} in {self.where}: "
                f"permission denied for function {_denied_function(exc)}; {grant_hint(self.user)}"
            )
        if code == "55006":
            return TransientError(
                f"replication origin {origin} in {self.where} is in use by another session "
                "(does another pipeline write into this database under the same origin?); retrying"
            )
        if code == "42704":
            self._known.discard(logical)
            return TransientError(
                f"replication origin {origin} vanished from {self.where}; retrying"
            )
        if code == "53400":
            return PermanentError(
                f"no free replication origin slot in {self.where} for {origin}: "
                "raise max_replication_slots on that server"
            )
        return None

    def ensure(self, conn: Any, origins: Iterable[str]) -> None:
        """Create the origins the target lacks, in a transaction of their own.

        Runs between apply transactions; a concurrent create by another pipeline is fine.
        """
        for origin in origins:
            if origin in self._known:
                continue
            try:
                with conn.cursor() as cur:
                    if self._db is None:
                        cur.execute("SELECT current_database()")
                        self._db = str(cur.fetchone()[0])
                    name = self.qualified(origin)
                    cur.execute(
                        "SELECT pg_replication_origin_create(%s) "
                        "WHERE pg_replication_origin_oid(%s) IS NULL",
                        (name, name),
                    )
                conn.commit()
            except psycopg2.errors.UniqueViolation:
                conn.rollback()  # created by someone else a moment ago
            except psycopg2.Error as exc:
                if not conn.closed:
                    conn.rollback()
                err = self._error(exc, origin, "create")
                if err is not None:
                    raise err from exc
                raise
            self._known.add(origin)

    def tag(self, conn: Any, cur: Any, origin: str, ts_us: int) -> None:
        """Make the open transaction commit under ``origin`` with origin time ``ts_us``."""
        switch = conn is not self._conn or self._current != origin
        sql = _SWITCH + _XACT if switch else _XACT
        params = (self.qualified(origin), ts_us) if switch else (ts_us,)
        try:
            cur.execute(sql, params)
        except psycopg2.Error as exc:
            self._conn = None  # unknown state: switch again next time
            err = self._error(exc, origin, "write under")
            if err is not None:
                raise err from exc
            raise
        self._conn, self._current = conn, origin

    def check(self, cur: Any, origin: str) -> str:
        """A note for ``syncline check``; raises ``AuthError`` if the functions are off limits."""
        cur.execute(
            "SELECT f FROM unnest(%s::text[]) AS f WHERE NOT has_function_privilege(f, 'EXECUTE')",
            (list(_FUNCTIONS),),
        )
        denied = [r[0] for r in cur.fetchall()]
        if denied:
            name = denied[0].split("(")[0]
            raise AuthError(
                f"user {self.user} may not use replication origin {origin} in {self.where}: "
                f"no EXECUTE on {name}; {grant_hint(self.user)}"
            )
        return f"sink: {self.where}: writes are tagged with replication origin {origin}"
