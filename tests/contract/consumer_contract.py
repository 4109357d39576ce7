"""The idempotent-consumer contract: each supported driver subclasses ``ConsumerContract``.

A subclass provides a ``dsn`` fixture (a fresh, empty service database per
test), ``connect(dsn, autocommit=False)`` returning a new DB-API connection to
it, and ``mark`` (the driver's parameter placeholder). Handlers write a row per
processed event into ``ledger``, so side effects are counted, not assumed.
"""

from __future__ import annotations

import abc
import json
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from syncline.consumer import (
    DEFAULT_TABLE,
    Duplicate,
    ensure_table,
    event_id,
    idempotent,
    purge_processed,
)
from syncline.errors import PermanentError
from syncline.events import ChangeEvent, SourceInfo, encode_value

LEDGER = "CREATE TABLE ledger (event_id text NOT NULL, consumer text NOT NULL, amount integer)"


def event(seq: int, *, lsn: int = 1000, op: str = "c", amount: int = 10) -> ChangeEvent:
    src = SourceInfo(
        connector="postgresql",
        name="orders-to-billing",
        ts_ms=1_714_555_800_123,
        ts_us=1_714_555_800_123_456,
        db="orders",
        schema="public",
        table="orders",
        txId=7,
        lsn=lsn,
        seq=seq,
    )
    return ChangeEvent(after={"id": seq, "amount": amount}, source=src, op=op, ts_ms=1)


class Boom(Exception):
    pass


class ConsumerContract(abc.ABC):
    mark: str = "?"

    @abc.abstractmethod
    def connect(self, dsn: str, autocommit: bool = False) -> Any: ...

    # -- helpers ----------------------------------------------------------------

    def q(self, sql: str) -> str:
        return sql.replace("?", self.mark)

    def rows(self, dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = self.connect(dsn)
        try:
            cur = conn.cursor()
            cur.execute(self.q(sql), params)
            out = list(cur.fetchall()) if cur.description else []
            conn.commit()
            return out
        finally:
            conn.close()

    def ledger(self, dsn: str) -> list[tuple[Any, ...]]:
        return self.rows(dsn, "SELECT event_id, consumer, amount FROM ledger ORDER BY 1, 2")

    def processed(self, dsn: str, table: str = DEFAULT_TABLE) -> list[tuple[Any, ...]]:
        if not self.table_exists(dsn, table):
            return []  # created in a transaction that was rolled back
        return self.rows(dsn, f"SELECT consumer, event_id FROM {table} ORDER BY 1, 2")

    def handler(
        self, consumer: str = "billing", calls: list[str] | None = None, **kw: Any
    ) -> Callable[..., Any]:
        """A decorated handler that books the event's amount and returns it."""
        mark = self.mark

        @idempotent(consumer=consumer, **kw)
        def book(conn: Any, ev: Any) -> int:
            ev_obj = ev if isinstance(ev, ChangeEvent) else None
            amount = ev_obj.after["amount"] if ev_obj and ev_obj.after else ev["after"]["amount"]
            cur = conn.cursor()
            cur.execute(
                f"INSERT INTO ledger (event_id, consumer, amount) VALUES ({mark}, {mark}, {mark})",
                (event_id(ev), consumer, amount),
            )
            cur.close()
            if calls is not None:
                calls.append(event_id(ev))
            return int(amount)

        return book

    @pytest.fixture
    def db(self, dsn: str) -> str:
        self.rows(dsn, LEDGER)
        return dsn

    # -- the contract -----------------------------------------------------------

    def test_first_delivery_processes_and_records(self, db: str) -> None:
        book, ev = self.handler(), event(0, amount=42)
        conn = self.connect(db)
        assert book(conn, ev) == 42
        conn.close()
        assert self.ledger(db) == [(event_id(ev), "billing", 42)]
        assert self.processed(db) == [("billing", event_id(ev))]
        (stamp,) = self.rows(db, f"SELECT processed_at FROM {DEFAULT_TABLE}")[0]
        assert stamp is not None

    def test_redelivery_is_a_duplicate_without_side_effects(self, db: str) -> None:
        calls: list[str] = []
        book, ev = self.handler(calls=calls), event(0)
        conn = self.connect(db)
        assert book(conn, ev) == 10
        for _ in range(3):
            assert book(conn, ev) == Duplicate("billing", event_id(ev))
        assert book(conn, event(1)) == 10  # another event is not a duplicate
        conn.close()
        assert calls == [event_id(event(0)), event_id(event(1))]
        assert len(self.ledger(db)) == 2
        assert len(self.processed(db)) == 2

    def test_handler_error_records_nothing_and_redelivery_processes(self, db: str) -> None:
        mark = self.mark

        @idempotent(consumer="billing")
        def flaky(conn: Any, ev: ChangeEvent) -> None:
            cur = conn.cursor()
            cur.execute(
                f"INSERT INTO ledger (event_id, consumer) VALUES ({mark}, {mark})",
                (event_id(ev), "billing"),
            )
            raise Boom("payment service down")

        conn, ev = self.connect(db), event(0)
        with pytest.raises(Boom, match="payment service down"):
            flaky(conn, ev)
        assert self.ledger(db) == [] and self.processed(db) == []
        assert self.handler()(conn, ev) == 10  # the redelivery processes it
        conn.close()
        assert self.ledger(db) == [(event_id(ev), "billing", 10)]

    def test_consumers_process_the_same_event_independently(self, db: str) -> None:
        billing, shipping, ev = self.handler("billing"), self.handler("shipping"), event(0)
        conn = self.connect(db)
        assert billing(conn, ev) == 10
        assert shipping(conn, ev) == 10
        assert isinstance(billing(conn, ev), Duplicate)
        assert shipping(conn, ev) == Duplicate("shipping", event_id(ev))
        conn.close()
        assert [r[1] for r in self.ledger(db)] == ["billing", "shipping"]
        assert self.processed(db) == [("billing", event_id(ev)), ("shipping", event_id(ev))]

    def test_event_and_its_json_dict_are_one_event(self, db: str) -> None:
        ev = event(3)
        as_dict = json.loads(encode_value(ev))
        assert event_id(as_dict) == event_id(ev)
        book, conn = self.handler(), self.connect(db)
        assert book(conn, as_dict) == 10
        assert isinstance(book(conn, ev), Duplicate)
        conn.close()
        assert len(self.ledger(db)) == 1

    def test_autocommit_connection_is_still_all_or_nothing(self, db: str) -> None:
        conn, ev = self.connect(db, autocommit=True), event(0)

        @idempotent(consumer="billing")
        def half(c: Any, e: ChangeEvent) -> None:
            c.cursor().execute(
                self.q("INSERT INTO ledger (event_id, consumer) VALUES (?, ?)"), ("x", "y")
            )
            raise Boom("half done")

        with pytest.raises(Boom):
            half(conn, ev)
        assert self.ledger(db) == [] and self.processed(db) == []
        assert self.handler()(conn, ev) == 10
        assert isinstance(self.handler()(conn, ev), Duplicate)
        conn.close()
        assert len(self.ledger(db)) == 1

    def test_inside_the_callers_transaction_the_caller_commits(self, db: str) -> None:
        book, conn = self.handler(), self.connect(db)
        cur = conn.cursor()
        cur.execute(
            self.q("INSERT INTO ledger (event_id, consumer) VALUES (?, ?)"), ("mine", "app")
        )
        assert book(conn, event(0)) == 10
        conn.rollback()  # the caller changes its mind: the event is not processed
        assert self.ledger(db) == [] and self.processed(db) == []

        cur.execute(
            self.q("INSERT INTO ledger (event_id, consumer) VALUES (?, ?)"), ("mine", "app")
        )
        assert book(conn, event(0)) == 10
        assert isinstance(book(conn, event(0)), Duplicate)  # keeps the caller's work

        @idempotent(consumer="billing")
        def failing(c: Any, e: ChangeEvent) -> None:
            c.cursor().execute(
                self.q("INSERT INTO ledger (event_id, consumer) VALUES (?, ?)"), ("no", "no")
            )
            raise Boom("undo only me")

        with pytest.raises(Boom):
            failing(conn, event(1))
        conn.commit()
        conn.close()
        assert [r[:2] for r in self.ledger(db)] == [
            ("mine", "app"),
            (event_id(event(0)), "billing"),
        ]
        assert self.processed(db) == [("billing", event_id(event(0)))]

    def test_handler_may_not_commit_itself(self, db: str) -> None:
        @idempotent(consumer="billing")
        def rude(c: Any, e: ChangeEvent) -> None:
            c.commit()

        conn = self.connect(db)
        with pytest.raises(
            PermanentError, match="committed or rolled back the transaction itself"
        ) as err:
            rude(conn, event(0))
        conn.close()
        assert "\n" not in str(err.value)

    def test_connection_callable_is_opened_and_closed(self, db: str) -> None:
        made: list[Any] = []

        def connect() -> Any:
            made.append(self.connect(db))
            return made[-1]

        book = self.handler()
        assert book(connect, event(0)) == 10
        assert isinstance(book(connect, event(0)), Duplicate)
        assert len(made) == 2 and all(self.is_closed(c) for c in made)
        assert len(self.ledger(db)) == 1

    def test_custom_table_and_explicit_ensure_table(self, db: str) -> None:
        conn = self.connect(db)
        ensure_table(conn, "svc_seen")
        ensure_table(conn, "svc_seen")  # twice is fine
        book = self.handler(table="svc_seen")
        assert book(conn, event(0)) == 10
        assert isinstance(book(conn, event(0)), Duplicate)
        conn.close()
        assert self.processed(db, "svc_seen") == [("billing", event_id(event(0)))]
        assert not self.table_exists(db, DEFAULT_TABLE)

    def test_purge_forgets_old_ids_only(self, db: str) -> None:
        book, conn = self.handler(), self.connect(db)
        for i in range(3):
            book(conn, event(i))
        self.handler("shipping")(conn, event(0))
        old = event_id(event(0))
        self.rows(
            db,
            f"UPDATE {DEFAULT_TABLE} SET processed_at = '2000-01-01 00:00:00' WHERE event_id = ?",
            (old,),
        )
        assert purge_processed(conn, timedelta(days=1), consumer="nobody") == 0
        assert purge_processed(conn, 86400.0, consumer="billing") == 1
        assert purge_processed(conn, timedelta(days=1)) == 1  # shipping's
        assert purge_processed(conn, timedelta(days=1)) == 0
        assert self.processed(db) == sorted(("billing", event_id(event(i))) for i in (1, 2))
        assert book(conn, event(0)) == 10  # forgotten: a late redelivery processes again
        assert purge_processed(conn, 3600, table="never_created") == 0
        conn.close()

    def test_concurrent_duplicates_process_once(self, db: str) -> None:
        self.run_concurrently(db, 6, same_event=True)
        assert len(self.ledger(db)) == 1

    def test_concurrent_first_use_of_a_fresh_database(self, db: str) -> None:
        self.run_concurrently(db, 6, same_event=False)
        assert len(self.ledger(db)) == 6 and len(self.processed(db)) == 6

    def run_concurrently(self, db: str, n: int, *, same_event: bool) -> list[Any]:
        calls: list[str] = []
        book, start = self.handler(calls=calls), threading.Barrier(n)
        results: list[Any] = [None] * n

        def worker(i: int) -> None:
            conn = self.connect(db)
            try:
                start.wait()
                results[i] = book(conn, event(0 if same_event else i))
            except BaseException as exc:
                results[i] = exc
            finally:
                conn.close()

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not [r for r in results if isinstance(r, BaseException)], results
        done = [r for r in results if not isinstance(r, Duplicate)]
        assert len(done) == (1 if same_event else n)
        assert len(calls) == len(done)
        return results

    @abc.abstractmethod
    def is_closed(self, conn: Any) -> bool: ...

    @abc.abstractmethod
    def table_exists(self, dsn: str, table: str) -> bool: ...
