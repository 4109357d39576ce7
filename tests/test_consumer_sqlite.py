"""The idempotent consumer on sqlite3: the contract, the id rules, bad input, and end to end.

The end-to-end test feeds real events (captured by the SQLite source, published
to and read back from the embedded log) through a handler twice.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import pytest

from contract.consumer_contract import ConsumerContract, event
from syncline.config import EmbeddedTransportConfig, SqliteSourceConfig
from syncline.consumer import Duplicate, event_id, idempotent
from syncline.errors import ConfigError, DataError, SynclineError
from syncline.events import Change, decode_value, encode_key, encode_value
from syncline.sources.sqlite import SqliteSource
from syncline.transports.base import Delivered, Record
from syncline.transports.embedded import EmbeddedTransport


class TestConsumerSqlite(ConsumerContract):
    mark = "?"

    @pytest.fixture
    def dsn(self, tmp_path: Path) -> str:
        return str(tmp_path / "service.db")

    def connect(self, dsn: str, autocommit: bool = False) -> Any:
        return sqlite3.connect(dsn, timeout=30, isolation_level=None if autocommit else "")

    def is_closed(self, conn: Any) -> bool:
        try:
            conn.execute("SELECT 1")
        except sqlite3.ProgrammingError:
            return True
        return False

    def table_exists(self, dsn: str, table: str) -> bool:
        return bool(self.rows(dsn, "SELECT 1 FROM sqlite_master WHERE name = ?", (table,)))


# -- the id ---------------------------------------------------------------------


def test_id_names_the_fields_that_make_it_unique() -> None:
    ev = event(3, lsn=24861504)
    assert (
        event_id(ev)
        == "postgresql:orders-to-billing:orders:public:orders:24861504:3:c:1714555800123456"
    )
    assert event_id(Change({"id": 3}, ev)) == event_id(ev)
    # every field counts: position, op, pipeline, commit time
    other = [event(4, lsn=24861504), event(3, lsn=24861505), event(3, lsn=24861504, op="d")]
    assert len({event_id(e) for e in [ev, *other]}) == 4
    d = json.loads(encode_value(ev))
    d["source"]["name"] = "other-pipeline"
    assert event_id(d) != event_id(ev)
    d = json.loads(encode_value(ev))
    d["source"]["ts_us"] += 1
    assert event_id(d) != event_id(ev)


def test_id_escapes_separators_in_names() -> None:
    a = json.loads(encode_value(event(0)))
    b = json.loads(encode_value(event(0)))
    a["source"]["db"], a["source"]["schema"] = "x:y", "z"
    b["source"]["db"], b["source"]["schema"] = "x", "y:z"
    assert event_id(a) != event_id(b)
    assert ":x%3Ay:z:" in event_id(a)


def test_snapshot_rows_are_told_apart_by_their_row() -> None:
    base = json.loads(encode_value(event(0)))
    base["op"] = "r"
    base["source"].update(snapshot="true", seq=None)
    rows = []
    for i in range(3):
        d = json.loads(json.dumps(base))
        d["after"] = {"id": i, "amount": 1.5, "tags": ["a", None]}
        rows.append(d)
    ids = {event_id(d) for d in rows}
    assert len(ids) == 3
    shuffled = dict(reversed(list(rows[0]["after"].items())))  # key order does not matter
    assert event_id({**rows[0], "after": shuffled}) == event_id(rows[0])
    # the final snapshot row is marked "last"; its id does not depend on the mark
    assert event_id({**rows[0], "source": {**rows[0]["source"], "snapshot": "last"}}) == event_id(
        rows[0]
    )


def test_ts_ms_stands_in_when_ts_us_is_absent() -> None:
    d = json.loads(encode_value(event(0)))
    del d["source"]["ts_us"]
    assert event_id(d).endswith(":1714555800123000")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("source"), "the event has no source block"),
        (lambda d: d["source"].pop("seq"), "source.seq is missing"),
        (lambda d: d["source"].pop("db"), "source.db is missing"),
        (lambda d: d["source"].update(lsn="0/16B3748"), "source.lsn is str"),
        (lambda d: d.update(op="x"), "op is str 'x'"),
        (
            lambda d: d["source"].pop("ts_ms") and d["source"].pop("ts_us"),
            "source.ts_ms is missing",
        ),
        (lambda d: d.update(op="r", after=None), "snapshot event without an after row"),
    ],
)
def test_events_without_the_id_fields_are_refused_in_one_line(mutate: Any, message: str) -> None:
    d = json.loads(encode_value(event(0)))
    mutate(d)
    with pytest.raises(DataError, match=message) as err:
        event_id(d)
    assert "\n" not in str(err.value) and "id_of=" in str(err.value)


def test_bad_input_to_a_handler_is_one_line_and_never_runs_it(tmp_path: Path) -> None:
    calls: list[Any] = []

    @idempotent(consumer="billing")
    def handle(conn: Any, ev: Any) -> None:
        calls.append(ev)

    conn = sqlite3.connect(tmp_path / "s.db")
    for bad, kind, message in [
        ({"op": "c"}, DataError, "no source block"),
        (b'{"op": "c"}', DataError, "cannot derive an event id from a bytes"),
    ]:
        with pytest.raises(kind, match=message) as err:
            handle(conn, bad)
        assert "\n" not in str(err.value)
    for bad_conn in (object(), "sqlite:///s.db", lambda: object()):
        with pytest.raises(
            ConfigError, match=r"unsupported connection .*pass a psycopg2 or sqlite3"
        ) as cerr:
            handle(bad_conn, event(0))
        assert "\n" not in str(cerr.value)
    assert calls == []


def test_id_of_identifies_foreign_events(tmp_path: Path) -> None:
    @idempotent(consumer="mail", id_of=lambda msg: msg["message_id"])
    def send(conn: Any, msg: dict[str, str]) -> str:
        conn.execute("INSERT INTO outbox VALUES (?)", (msg["message_id"],))
        return "sent"

    @idempotent(consumer="mail", id_of=lambda msg: None)  # type: ignore[arg-type,return-value]
    def broken(conn: Any, msg: dict[str, str]) -> None: ...

    conn = sqlite3.connect(tmp_path / "s.db")
    conn.execute("CREATE TABLE outbox (id TEXT)")
    conn.commit()
    assert send(conn, {"message_id": "m-1"}) == "sent"
    assert send(conn, {"message_id": "m-1"}) == Duplicate("mail", "m-1")
    with pytest.raises(DataError, match="id_of returned None"):
        broken(conn, {"message_id": "m-2"})
    assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (1,)


def test_decorator_arguments_are_checked() -> None:
    with pytest.raises(ConfigError, match="consumer must be a non-empty name"):
        idempotent(consumer="")
    with pytest.raises(ConfigError, match=r"not a plain \[schema\.\]name"):
        idempotent(consumer="c", table="seen; DROP TABLE x")


def test_a_locked_database_is_a_transient_error(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock

    @idempotent(consumer="billing")
    def handle(conn: Any, ev: Any) -> None: ...

    with pytest.raises(SynclineError) as err:
        handle(sqlite3.connect(path, timeout=0.05), event(0))
    assert type(err.value).__name__ == "TransientError"
    assert "database is locked" in str(err.value) and "retry" in str(err.value)
    holder.execute("ROLLBACK")


# -- end to end -------------------------------------------------------------------


def test_real_events_from_the_log_fed_twice_are_processed_once(tmp_path: Path) -> None:
    svc = tmp_path / "orders.db"
    with sqlite3.connect(svc) as c:
        c.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT, qty INTEGER)")
        c.executemany(
            "INSERT INTO orders VALUES (?, ?, ?)", [(i, f"item{i}", i) for i in range(1, 6)]
        )
    c.close()
    cfg = SqliteSourceConfig(
        kind="sqlite", path=str(svc), tables=["orders"], snapshot="initial", poll_interval=0.005
    )  # type: ignore[arg-type]
    src = SqliteSource(cfg, "orders-to-billing")
    src.open(None)
    changes: list[Change] = []

    def capture() -> None:
        while (b := src.read(4, 0)) is not None:
            changes.extend(b.changes)
            src.ack(b.checkpoint)

    capture()  # the snapshot
    with sqlite3.connect(svc) as c:
        c.execute("INSERT INTO orders VALUES (6, 'item6', 6)")
        c.execute("UPDATE orders SET qty = 60 WHERE id = 6")
        c.execute("UPDATE orders SET id = 7 WHERE id = 6")  # a key change: d + c, one seq
        c.execute("DELETE FROM orders WHERE id = 1")
    c.close()
    capture()
    src.close()
    assert [ch.event.op for ch in changes] == ["r"] * 5 + ["c", "u", "d", "c", "d"]

    log = EmbeddedTransport(
        EmbeddedTransportConfig(path=str(tmp_path / "log"), partitions=3), "orders-to-billing"
    )
    prod = log.producer()
    for i in range(0, len(changes), 4):
        part = changes[i : i + 4]
        prod.publish(
            [Record("main.orders", encode_key(ch.key), encode_value(ch.event)) for ch in part],
            {"n": i},
        )

    def read_all(group: str) -> list[Delivered]:
        cons = log.consumer(group)
        out: list[Delivered] = []
        while batch := cons.poll(3, 0.2):
            out.extend(batch)
        cons.close()
        return out

    service = sqlite3.connect(tmp_path / "billing.db")
    service.execute("CREATE TABLE ledger (event_id TEXT, op TEXT, row_id INTEGER)")
    service.commit()

    @idempotent(consumer="billing")
    def on_order(conn: sqlite3.Connection, ev: Any) -> str:
        ev = ev if isinstance(ev, dict) else msgspec.to_builtins(ev)
        row = ev.get("after") or ev["before"]
        conn.execute("INSERT INTO ledger VALUES (?, ?, ?)", (event_id(ev), ev["op"], row["id"]))
        return str(ev["op"])

    first = [on_order(service, decode_value(r.value)) for r in read_all("billing-1")]
    again = [on_order(service, json.loads(r.value)) for r in read_all("billing-2")]  # as JSON
    log.close()
    assert len(first) == len(changes) == 10
    assert all(isinstance(r, str) for r in first)
    assert all(isinstance(r, Duplicate) for r in again) and len(again) == 10
    ledger = service.execute("SELECT event_id, op, row_id FROM ledger").fetchall()
    service.close()
    assert len(ledger) == 10 and len({e for e, _, _ in ledger}) == 10  # distinct ids
    assert sorted((op, rid) for _, op, rid in ledger) == sorted(
        (ch.event.op, (ch.event.after or ch.event.before or {})["id"]) for ch in changes
    )
