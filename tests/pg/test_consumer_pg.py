"""The idempotent consumer on psycopg2 against a real PostgreSQL.

Beyond the contract: concurrent redeliveries that really do wait on each other's
uncommitted id (checked in pg_stat_activity, not assumed), errors that callers
should retry, and real events from the PostgreSQL source fed through the log twice.
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from contract.consumer_contract import LEDGER, Boom, ConsumerContract, event
from e2e_helpers import pg_exec, pg_rows, wait_until
from syncline.config import EmbeddedTransportConfig, PostgresSourceConfig
from syncline.consumer import Duplicate, ensure_table, event_id, idempotent
from syncline.errors import PermanentError, TransientError
from syncline.events import Change, decode_value, encode_key, encode_value
from syncline.sources.postgres import PostgresSource
from syncline.transports.base import Delivered, Record
from syncline.transports.embedded import EmbeddedTransport


class TestConsumerPg(ConsumerContract):
    mark = "%s"

    @pytest.fixture
    def dsn(self, new_pg_db: Callable[[], str]) -> str:
        return new_pg_db()

    def connect(self, dsn: str, autocommit: bool = False) -> Any:
        conn = psycopg2.connect(dsn)
        conn.autocommit = autocommit
        return conn

    def is_closed(self, conn: Any) -> bool:
        return bool(conn.closed)

    def table_exists(self, dsn: str, table: str) -> bool:
        return pg_rows(dsn, f"SELECT to_regclass('{table}') IS NOT NULL")[0][0] is True


@pytest.fixture
def db(new_pg_db: Callable[[], str]) -> str:
    dsn = new_pg_db()
    pg_exec(dsn, LEDGER)
    conn = psycopg2.connect(dsn)
    ensure_table(conn)  # so that every waiter below waits on the id, not on the DDL
    conn.close()
    return dsn


def lock_waiters(dsn: str) -> int:
    return int(
        pg_rows(
            dsn,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock'",
        )[0][0]
    )


def race(dsn: str, n: int, handler: Callable[..., Any], ev: Any = None) -> list[Any]:
    """``n`` sessions deliver one event at once; returns each one's result or exception."""
    ev = ev if ev is not None else event(0)
    results: list[Any] = [None] * n
    start = threading.Barrier(n)

    def worker(i: int) -> None:
        conn = psycopg2.connect(dsn)
        try:
            start.wait()
            results[i] = handler(conn, ev)
        except BaseException as exc:
            results[i] = exc
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_redeliveries_wait_for_the_first_and_process_once(db: str) -> None:
    n, calls, waited = 6, [], []

    @idempotent(consumer="billing")
    def book(conn: Any, ev: Any) -> str:
        calls.append(conn.get_backend_pid())
        # hold the uncommitted id until every other delivery is blocked on it
        waited.append(wait_until(lambda: lock_waiters(db) == n - 1, timeout=30, interval=0.02))
        conn.cursor().execute(
            "INSERT INTO ledger (event_id, consumer, amount) VALUES (%s, 'billing', 1)",
            (event_id(ev),),
        )
        return "booked"

    results = race(db, n, book)
    assert waited == [True]
    assert results.count("booked") == 1 and len(calls) == 1
    assert [r for r in results if r != "booked"] == [Duplicate("billing", event_id(event(0)))] * (
        n - 1
    )
    assert pg_rows(db, "SELECT count(*) FROM ledger") == [(1,)]


def test_when_the_first_delivery_fails_a_waiting_one_processes(db: str) -> None:
    n, calls, lock = 5, [], threading.Lock()

    @idempotent(consumer="billing")
    def book(conn: Any, ev: Any) -> str:
        with lock:
            calls.append(conn.get_backend_pid())
            before = len(calls) - 1
        assert wait_until(lambda: lock_waiters(db) == n - 1 - before, timeout=30, interval=0.02)
        conn.cursor().execute(
            "INSERT INTO ledger (event_id, consumer, amount) VALUES (%s, 'billing', 1)",
            (event_id(ev),),
        )
        if before == 0:
            raise Boom("first attempt fails after the others queued up")
        return "booked"

    results = race(db, n, book)
    assert len(calls) == 2
    assert sum(isinstance(r, Boom) for r in results) == 1
    assert results.count("booked") == 1
    assert sum(isinstance(r, Duplicate) for r in results) == n - 2
    assert pg_rows(db, "SELECT count(*) FROM ledger") == [(1,)]


def test_serialization_failure_is_transient_and_the_retry_is_a_duplicate(db: str) -> None:
    first_in = threading.Event()

    @idempotent(consumer="billing")
    def book(conn: Any, ev: Any) -> str:
        first_in.set()
        assert wait_until(lambda: lock_waiters(db) == 1, timeout=30, interval=0.02)
        return "booked"

    strict = psycopg2.connect(db)
    strict.set_session(isolation_level="REPEATABLE READ")
    out: list[Any] = []

    def second() -> None:
        first_in.wait(30)
        try:
            out.append(book(strict, event(0)))
        except BaseException as exc:
            out.append(exc)

    t = threading.Thread(target=second)
    t.start()
    conn = psycopg2.connect(db)
    assert book(conn, event(0)) == "booked"
    t.join()
    (err,) = out
    assert isinstance(err, TransientError), err
    assert "could not serialize access" in str(err) and "retry" in str(err)
    assert "\n" not in str(err)
    assert isinstance(book(strict, event(0)), Duplicate)  # the caller's retry
    strict.close()
    conn.close()


def test_connection_lost_before_commit_is_transient_and_nothing_is_recorded(db: str) -> None:
    @idempotent(consumer="billing")
    def book(conn: Any, ev: Any) -> str:
        conn.cursor().execute(
            "INSERT INTO ledger (event_id, consumer) VALUES (%s, 'billing')", (event_id(ev),)
        )
        pg_exec(db, f"SELECT pg_terminate_backend({conn.get_backend_pid()})")
        return "booked"

    conn = psycopg2.connect(db)
    with pytest.raises(TransientError) as err:
        book(conn, event(0))
    assert "\n" not in str(err.value) and "retry" in str(err.value)
    assert pg_rows(db, "SELECT count(*) FROM ledger") == [(0,)]
    assert pg_rows(db, "SELECT count(*) FROM syncline_processed_events") == [(0,)]

    @idempotent(consumer="billing")
    def fine(conn: Any, ev: Any) -> str:
        return "booked"

    assert fine(lambda: psycopg2.connect(db), event(0)) == "booked"  # the redelivery


def test_a_swallowed_database_error_is_not_reported_as_processed(db: str) -> None:
    @idempotent(consumer="billing")
    def sloppy(conn: Any, ev: Any) -> str:
        with contextlib.suppress(psycopg2.Error):
            conn.cursor().execute("SELECT 1 / 0")
        return "looks fine"

    conn = psycopg2.connect(db)
    with pytest.raises(PermanentError, match="swallowed a database error") as err:
        sloppy(conn, event(0))
    assert "\n" not in str(err.value)
    assert pg_rows(db, "SELECT count(*) FROM syncline_processed_events") == [(0,)]

    with pytest.raises(psycopg2.Error):
        conn.cursor().execute("SELECT 1 / 0")  # the caller's own transaction fails ...
    with pytest.raises(PermanentError, match="roll it back before"):  # ... and is refused
        sloppy(conn, event(0))
    conn.close()


def test_real_postgres_events_from_the_log_fed_twice_are_processed_once(
    new_pg_db: Callable[[], str], tmp_path: Path
) -> None:
    src_dsn, svc_dsn = new_pg_db(), new_pg_db()
    pg_exec(
        src_dsn,
        "CREATE TABLE orders (id int PRIMARY KEY, item text, qty int)",
        "CREATE TABLE notes (id int PRIMARY KEY, body text)",
        "INSERT INTO orders SELECT g, 'item' || g, g FROM generate_series(1, 4) g",
        "INSERT INTO notes VALUES (1, 'n')",
    )
    pipeline = f"p-{uuid.uuid4().hex[:8]}"
    cfg = PostgresSourceConfig(kind="postgres", dsn=src_dsn, tables=["orders", "notes"])
    src = PostgresSource(cfg, pipeline)
    changes: list[Change] = []
    try:
        src.open(None)
        collect(src, changes, 5)  # the snapshot
        pg_exec(
            src_dsn,
            # one transaction, several tables: one lsn, seq tells the changes apart
            "BEGIN; INSERT INTO orders VALUES (5, 'a', 1), (6, 'b', 2);"
            " UPDATE notes SET body = 'm'; UPDATE orders SET id = 7 WHERE id = 6; COMMIT",
            "DELETE FROM orders WHERE id = 1",
            "TRUNCATE notes",
        )
        collect(src, changes, 5 + 7)
    finally:
        src.close()
    ops = [c.event.op for c in changes]
    assert ops == ["r"] * 5 + ["c", "c", "u", "d", "c", "d", "t"]

    log = EmbeddedTransport(
        EmbeddedTransportConfig(path=str(tmp_path / "log"), partitions=2), pipeline
    )
    log.producer().publish(
        [Record(c.event.table_id, encode_key(c.key), encode_value(c.event)) for c in changes],
        {"n": len(changes)},
    )

    def read_all(group: str) -> list[Delivered]:
        cons = log.consumer(group)
        out: list[Delivered] = []
        while batch := cons.poll(4, 0.2):
            out.extend(batch)
        cons.close()
        return out

    pg_exec(svc_dsn, "CREATE TABLE seen (event_id text, op text, tbl text)")

    @idempotent(consumer="inventory")
    def on_change(conn: Any, ev: Any) -> str:
        d = ev if isinstance(ev, dict) else json.loads(encode_value(ev))
        conn.cursor().execute(
            "INSERT INTO seen VALUES (%s, %s, %s)", (event_id(ev), d["op"], d["source"]["table"])
        )
        return str(d["op"])

    svc = psycopg2.connect(svc_dsn)
    first = [on_change(svc, decode_value(r.value)) for r in read_all("inventory-1")]
    again = [on_change(svc, json.loads(r.value)) for r in read_all("inventory-2")]
    svc.close()
    log.close()
    assert sorted(first) == sorted(ops)
    assert len(again) == len(ops) and all(isinstance(r, Duplicate) for r in again)
    seen = pg_rows(svc_dsn, "SELECT event_id, op, tbl FROM seen")
    assert len(seen) == len({e for e, _, _ in seen}) == len(ops)  # distinct ids, once each


def collect(src: PostgresSource, out: list[Change], n: int) -> None:
    assert wait_until(lambda: _read(src, out) >= n, timeout=30, interval=0)


def _read(src: PostgresSource, out: list[Change]) -> int:
    batch = src.read(100, 0.2)
    if batch is not None:
        out.extend(batch.changes)
        src.ack(batch.checkpoint)
    return len(out)


def test_a_deadlock_in_the_handler_is_transient_and_the_retry_processes(db: str) -> None:
    pg_exec(
        db,
        "CREATE TABLE acct (id int PRIMARY KEY, n int)",
        "INSERT INTO acct VALUES (1, 0), (2, 0)",
    )
    locked = [threading.Event(), threading.Event()]

    @idempotent(consumer="billing")
    def transfer(conn: Any, ev: Any) -> str:
        mine, theirs = (1, 2) if ev.source.seq == 0 else (2, 1)  # opposite lock orders
        cur = conn.cursor()
        cur.execute("UPDATE acct SET n = n + 1 WHERE id = %s", (mine,))
        locked[mine - 1].set()
        locked[theirs - 1].wait(30)
        cur.execute("UPDATE acct SET n = n + 1 WHERE id = %s", (theirs,))
        return "moved"

    results: dict[int, Any] = {}

    def deliver(seq: int) -> None:
        try:
            results[seq] = transfer(lambda: psycopg2.connect(db), event(seq))
        except BaseException as exc:
            results[seq] = exc

    threads = [threading.Thread(target=deliver, args=(seq,)) for seq in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [0, 1] and list(results.values()).count("moved") == 1
    (loser,) = [seq for seq, r in results.items() if r != "moved"]
    err = results[loser]
    assert isinstance(err, TransientError) and "deadlock detected" in str(err), err
    assert str(err).startswith("handler ") and "\n" not in str(err)
    assert isinstance(err.__cause__, psycopg2.errors.DeadlockDetected)
    # nothing of the loser was kept; its redelivery goes through
    assert pg_rows(db, "SELECT event_id FROM syncline_processed_events") == [
        (event_id(event(1 - loser)),)
    ]
    assert transfer(lambda: psycopg2.connect(db), event(loser)) == "moved"
    assert pg_rows(db, "SELECT sum(n) FROM acct") == [(4,)]


def test_a_connect_callable_that_fails_is_translated(db: str) -> None:
    @idempotent(consumer="billing")
    def book(conn: Any, ev: Any) -> None: ...

    refused = "postgresql://nobody@127.0.0.1:1/nothing?connect_timeout=2"
    with pytest.raises(
        TransientError, match="connecting for consumer billing failed in PostgreSQL"
    ) as err:
        book(lambda: psycopg2.connect(refused), event(0))
    assert "\n" not in str(err.value)
