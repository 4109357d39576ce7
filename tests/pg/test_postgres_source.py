"""PostgresSource against a real PostgreSQL (wal_level=logical): snapshot, stream, resume, errors."""

from __future__ import annotations

import random
import socket
import string
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest

from syncline.config import PostgresSourceConfig
from syncline.errors import (
    AuthError,
    ConfigError,
    ConnectError,
    PermanentError,
    SchemaError,
    TransientError,
)
from syncline.events import Change
from syncline.sources.base import CaptureBatch, Checkpoint
from syncline.sources.postgres import PostgresSource
from syncline.sources.postgres.errors import endpoint, wal_level_message


def _exec(dsn: str, *stmts: str, params: Any = None) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        for s in stmts:
            cur.execute(s, params)
    conn.close()


def _query(dsn: str, stmt: str, params: Any = None) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(stmt, params)
        rows = cur.fetchall()
    conn.close()
    return rows


def _source(dsn: str, tables: list[str], **kw: Any) -> PostgresSource:
    cfg = PostgresSourceConfig(kind="postgres", dsn=dsn, tables=tables, **kw)
    return PostgresSource(cfg, f"p-{uuid.uuid4().hex[:10]}")


def _collect(
    src: PostgresSource,
    n: int,
    max_changes: int = 1000,
    seconds: float = 30.0,
    ack: bool = True,
    batches: list[CaptureBatch] | None = None,
) -> list[Change]:
    """Read until ``n`` changes arrived (or the deadline), checking the batch size bound."""
    out: list[Change] = []
    deadline = time.monotonic() + seconds
    while len(out) < n and time.monotonic() < deadline:
        batch = src.read(max_changes, 0.2)
        if batch is None:
            continue
        assert len(batch.changes) <= max_changes
        out.extend(batch.changes)
        if batches is not None:
            batches.append(batch)
        if ack:
            src.ack(batch.checkpoint)
    return out


def _with_dsn(dsn: str, **parts: Any) -> str:
    u = urlsplit(dsn)
    user = parts.get("user", u.username)
    password = parts.get("password", u.password)
    host = parts.get("host", u.hostname)
    port = parts.get("port", u.port)
    db = parts.get("db", u.path.lstrip("/"))
    return urlunsplit(u._replace(netloc=f"{user}:{password}@{host}:{port}", path=f"/{db}"))


# -- snapshot and stream ----------------------------------------------------------------


def test_snapshot_and_concurrent_inserts_arrive_exactly_once(pg_source_dsn: str) -> None:
    _exec(
        pg_source_dsn,
        "CREATE TABLE items (id bigint PRIMARY KEY, payload text)",
        "CREATE TABLE others (k text PRIMARY KEY)",
        "INSERT INTO items SELECT g, repeat('x', 50) FROM generate_series(1, 20000) g",
        "INSERT INTO others VALUES ('a'), ('b')",
        "ANALYZE items",
    )
    stop = threading.Event()
    inserted: list[int] = []

    def writer() -> None:
        conn = psycopg2.connect(pg_source_dsn)
        conn.autocommit = True
        cur = conn.cursor()
        next_id = 100_000
        while not stop.is_set():
            cur.execute("INSERT INTO items VALUES (%s, 'w'), (%s, 'w')", (next_id, next_id + 1))
            inserted.extend((next_id, next_id + 1))
            next_id += 2
            time.sleep(0.002)
        conn.close()

    progress: list[tuple[str, int, int | None]] = []
    src = _source(pg_source_dsn, ["items", "public.others"])
    src.on_progress = lambda t, done, est: progress.append((t, done, est))
    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        time.sleep(0.05)
        src.open(None)  # the slot is created while the writer commits
        batches: list[CaptureBatch] = []
        changes = _collect(src, 20002, max_changes=700, batches=batches)  # the snapshot, in chunks
        time.sleep(0.2)
        stop.set()
        thread.join()
        expected = 20002 + len(inserted)
        changes += _collect(src, expected - len(changes), max_changes=700, batches=batches)
    finally:
        stop.set()
        src.close()

    snap = [c for c in changes if c.event.op == "r"]
    stream = [c for c in changes if c.event.op == "c"]
    assert len(snap) + len(stream) == len(changes) == 20002 + len(inserted)
    ids = [c.key["id"] for c in changes if c.event.source.table == "items"]
    assert len(ids) == len(set(ids)) == 20000 + len(inserted)  # every row exactly once
    assert set(ids) == set(range(1, 20001)) | set(inserted)
    assert stream, "the writer's rows after the slot's consistent point come from the stream"
    assert [c.event.source.snapshot for c in snap].count("last") == 1
    assert snap[-1].event.source.snapshot == "last" and snap[-1].event.source.table == "others"
    assert all(c.event.source.snapshot == "false" for c in stream)
    first_stream = changes.index(stream[0])
    assert all(c.event.op == "r" for c in changes[:first_stream])  # snapshot strictly first
    assert {c.event.source.lsn for c in snap} == {batches[0].checkpoint["lsn"]}
    assert batches[0].checkpoint["snapshot"] == "running"
    assert batches[-1].checkpoint["snapshot"] == "done"
    assert progress[-1][0] == "public.others"
    snap_items = sum(1 for c in snap if c.event.source.table == "items")
    assert snap_items >= 20000  # plus whatever the writer committed before the slot existed
    assert max(done for t, done, _ in progress if t == "public.items") == snap_items
    assert any(est and est >= 19000 for t, _, est in progress if t == "public.items")


def test_update_delete_and_primary_key_change(pg_source_dsn: str) -> None:
    _exec(pg_source_dsn, "CREATE TABLE acc (id int PRIMARY KEY, owner text, n int)")
    src = _source(pg_source_dsn, ["acc"], snapshot="never")
    try:
        src.open(None)
        assert src.read(10, 0.1) is None
        _exec(
            pg_source_dsn,
            "INSERT INTO acc VALUES (1, 'ann', 1)",
            "UPDATE acc SET n = 2 WHERE id = 1",
            "BEGIN; UPDATE acc SET id = 10, n = 3 WHERE id = 1; INSERT INTO acc VALUES (2, 'bob', 0); COMMIT",
            "DELETE FROM acc WHERE id = 10",
        )
        changes = _collect(src, 6)
    finally:
        src.close()
    ops = [(c.event.op, c.key) for c in changes]
    assert ops == [
        ("c", {"id": 1}),
        ("u", {"id": 1}),
        ("d", {"id": 1}),
        ("c", {"id": 10}),
        ("c", {"id": 2}),
        ("d", {"id": 10}),
    ]
    ins, upd, pk_del, pk_ins, ins2, dele = (c.event for c in changes)
    assert ins.after == {"id": 1, "owner": "ann", "n": 1} and ins.before is None
    assert upd.after == {"id": 1, "owner": "ann", "n": 2} and upd.before is None
    assert pk_del.before == {"id": 1} and pk_del.after is None
    assert pk_ins.after == {"id": 10, "owner": "ann", "n": 3} and pk_ins.before is None
    assert dele.before == {"id": 10} and dele.after is None
    # one transaction: same commit LSN and xid, consecutive seq
    assert pk_del.source.lsn == pk_ins.source.lsn == ins2.source.lsn
    assert pk_del.source.txId == ins2.source.txId
    assert [pk_del.source.seq, pk_ins.source.seq, ins2.source.seq] == [0, 1, 2]
    assert (
        ins.source.lsn is not None
        and upd.source.lsn is not None
        and ins.source.lsn < upd.source.lsn
    )
    assert all(
        e.source.connector == "postgresql" and e.source.schema == "public" for e in (ins, dele)
    )
    assert abs(ins.source.ts_ms - time.time() * 1000) < 60_000
    assert ins.ts_ms >= ins.source.ts_ms


def test_replica_identity_full_sends_old_rows(pg_source_dsn: str) -> None:
    _exec(
        pg_source_dsn, "CREATE TABLE log (a int, b text)", "ALTER TABLE log REPLICA IDENTITY FULL"
    )
    src = _source(pg_source_dsn, ["log"], snapshot="never")
    try:
        src.open(None)
        assert src.describe()["public.log"].key == ("a", "b")
        _exec(
            pg_source_dsn,
            "INSERT INTO log VALUES (1, 'x')",
            "UPDATE log SET b = 'y'",
            "DELETE FROM log",
        )
        changes = _collect(src, 4)
    finally:
        src.close()
    assert [c.event.op for c in changes] == ["c", "d", "c", "d"]  # b is part of the key here
    assert changes[1].event.before == {"a": 1, "b": "x"}
    assert changes[3].event.before == {"a": 1, "b": "y"} and changes[3].key == {"a": 1, "b": "y"}


def test_unchanged_toast_column_is_listed_not_blanked(pg_source_dsn: str) -> None:
    _exec(pg_source_dsn, "CREATE TABLE docs (id int PRIMARY KEY, title text, body text)")
    body = "".join(random.choices(string.ascii_letters + string.digits, k=20_000))  # incompressible
    src = _source(pg_source_dsn, ["docs"], snapshot="never")
    try:
        src.open(None)
        _exec(pg_source_dsn, "INSERT INTO docs VALUES (1, 't', %s)", params=(body,))
        _exec(pg_source_dsn, "UPDATE docs SET title = 't2' WHERE id = 1")
        _exec(pg_source_dsn, "UPDATE docs SET body = 'short' WHERE id = 1")
        changes = _collect(src, 3)
    finally:
        src.close()
    ins, upd, upd2 = (c.event for c in changes)
    assert ins.after is not None and ins.after["body"] == body and ins.unchanged is None
    assert upd.op == "u" and upd.after == {"id": 1, "title": "t2"} and upd.unchanged == ["body"]
    assert upd2.after == {"id": 1, "title": "t2", "body": "short"} and upd2.unchanged is None


def test_truncate_emits_one_event_per_table(pg_source_dsn: str) -> None:
    _exec(
        pg_source_dsn,
        "CREATE TABLE a (id int PRIMARY KEY)",
        "CREATE TABLE b (id int PRIMARY KEY)",
        "INSERT INTO a VALUES (1)",
    )
    src = _source(pg_source_dsn, ["a", "b"], snapshot="never")
    try:
        src.open(None)
        _exec(pg_source_dsn, "TRUNCATE a, b")
        changes = _collect(src, 2)
    finally:
        src.close()
    assert sorted(c.event.source.table for c in changes) == ["a", "b"]
    for c in changes:
        assert (
            c.event.op == "t" and c.key == {} and c.event.before is None and c.event.after is None
        )


def test_large_transaction_is_read_in_bounded_chunks(pg_source_dsn: str) -> None:
    _exec(pg_source_dsn, "CREATE TABLE big (id int PRIMARY KEY, v text)")
    src = _source(pg_source_dsn, ["big"], snapshot="never")
    try:
        src.open(None)
        _exec(
            pg_source_dsn,
            "INSERT INTO big SELECT g, 'value ' || g FROM generate_series(1, 100000) g",
        )
        batches: list[CaptureBatch] = []
        changes = _collect(src, 100_000, max_changes=5000, seconds=120, batches=batches)
        # the commit may only be read with the next call; it moves end_lsn past the transaction
        while batches[-1].checkpoint["end_lsn"] < batches[-1].checkpoint["lsn"]:
            batch = src.read(5000, 1)
            assert batch is not None and not batch.changes
            batches.append(batch)
    finally:
        src.close()
    assert len(changes) == 100_000
    assert [c.key["id"] for c in changes] == list(range(1, 100_001))
    assert len(batches) >= 20 and all(len(b.changes) <= 5000 for b in batches)
    full = [b for b in batches if b.changes]  # idle batches may come first while the server writes
    assert len({b.checkpoint["lsn"] for b in full}) == 1  # one transaction, checkpoints inside it
    seqs = [b.checkpoint["seq"] for b in full]
    assert seqs == sorted(seqs) and seqs[-1] == 99_999
    # end_lsn moves only once the whole transaction has been handed out
    assert all(b.checkpoint["end_lsn"] < b.checkpoint["lsn"] for b in full[:-1])
    assert batches[-1].checkpoint["end_lsn"] > full[-1].checkpoint["lsn"]


def _slot_flush(dsn: str, slot: str) -> int:
    rows = _query(
        dsn,
        "SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
        (slot,),
    )
    return int(rows[0][0])


def test_restart_continues_without_gaps_or_repeats(pg_source_dsn: str) -> None:
    _exec(pg_source_dsn, "CREATE TABLE r (id int PRIMARY KEY)")
    cfg = PostgresSourceConfig(kind="postgres", dsn=pg_source_dsn, tables=["r"], snapshot="never")
    name = f"restart-{uuid.uuid4().hex[:8]}"
    src = PostgresSource(cfg, name)
    src.open(None)
    _exec(pg_source_dsn, "INSERT INTO r SELECT generate_series(1, 1000)")  # txn A
    _exec(pg_source_dsn, "INSERT INTO r SELECT generate_series(1001, 1010)")  # txn B
    _exec(pg_source_dsn, "INSERT INTO r SELECT generate_series(1011, 1500)")  # txn C
    seen: list[int] = []

    batches: list[CaptureBatch] = []
    seen += [c.key["id"] for c in _collect(src, 300, max_changes=100, batches=batches)]
    src.close()  # everything acked, but only inside A: nothing confirmed on the server yet
    ckpt: Checkpoint = batches[-1].checkpoint
    assert ckpt["seq"] == len(seen) - 1 < 1000

    # second run: resumes inside A; reads past A's end; the last checkpoint is *not* acked
    src = PostgresSource(cfg, name)
    src.open(ckpt)
    batches = []
    seen += [c.key["id"] for c in _collect(src, 900, max_changes=450, ack=False, batches=batches)]
    src.ack(batches[0].checkpoint)
    src.close()
    ckpt = batches[-1].checkpoint  # what the transport durably holds

    src = PostgresSource(cfg, name)
    src.open(ckpt)
    seen += [c.key["id"] for c in _collect(src, 1500 - len(seen))]
    time.sleep(0.2)
    assert src.read(100, 0.3) is None or not src.read(100, 0.3)  # nothing more
    src.close()
    assert seen == list(range(1, 1501))


def test_restart_mid_snapshot_redoes_it(pg_source_dsn: str) -> None:
    _exec(
        pg_source_dsn,
        "CREATE TABLE s (id int PRIMARY KEY)",
        "INSERT INTO s SELECT generate_series(1, 50)",
    )
    cfg = PostgresSourceConfig(kind="postgres", dsn=pg_source_dsn, tables=["s"])
    name = f"resnap-{uuid.uuid4().hex[:8]}"
    src = PostgresSource(cfg, name)
    src.open(None)
    part = src.read(10, 1)
    assert part is not None and part.checkpoint["snapshot"] == "running"
    src.close()
    _exec(pg_source_dsn, "INSERT INTO s VALUES (51)")  # lands in the new snapshot, not the stream
    src = PostgresSource(cfg, name)
    try:
        src.open(part.checkpoint)
        changes = _collect(src, 51, max_changes=20)
        time.sleep(0.2)
        assert not _collect(src, 1, seconds=0.5)
    finally:
        src.close()
    assert sorted(c.key["id"] for c in changes) == list(range(1, 52))
    assert {c.event.op for c in changes} == {"r"}


def test_retaken_snapshot_replays_deletes_made_since_the_first_attempt(
    pg_source_dsn: str,
) -> None:
    """Rows of a cut-short snapshot that were deleted before the retake must not stay behind."""
    _exec(
        pg_source_dsn,
        "CREATE TABLE s (id int PRIMARY KEY, v text)",
        "INSERT INTO s SELECT g, 'v' FROM generate_series(1, 50) g",
    )
    cfg = PostgresSourceConfig(kind="postgres", dsn=pg_source_dsn, tables=["s"])
    name = f"resnap-{uuid.uuid4().hex[:8]}"
    src = PostgresSource(cfg, name)
    src.open(None)
    part = src.read(10, 1)
    assert part is not None and part.checkpoint["snapshot"] == "running"
    src.close()  # a crash: ids 1-10 are in the log, the rest never will be from this snapshot
    _exec(
        pg_source_dsn,
        "DELETE FROM s WHERE id <= 3",
        "DELETE FROM s WHERE id = 40",
        "DELETE FROM s WHERE id = 7",
        "INSERT INTO s VALUES (7, 'back')",
        "UPDATE s SET id = 108 WHERE id = 8",  # a key change: a delete of 8 and a create of 108
    )

    # second attempt, also cut short: replays those deletes, then part of the new snapshot
    src = PostgresSource(cfg, name)
    src.open(part.checkpoint)
    batches: list[CaptureBatch] = []
    again = _collect(src, 8, max_changes=8, ack=False, batches=batches)
    src.close()
    assert batches[-1].checkpoint["snapshot"] == "running"
    assert [(c.event.op, c.key["id"]) for c in again[:6]] == [
        ("d", 1), ("d", 2), ("d", 3), ("d", 40), ("d", 7), ("d", 8),
    ]  # fmt: skip
    assert {c.event.op for c in again[6:]} == {"r"}
    _exec(pg_source_dsn, "DELETE FROM s WHERE id = 4", "INSERT INTO s VALUES (51, 'new')")

    src = PostgresSource(cfg, name)
    try:
        src.open(batches[-1].checkpoint)
        changes = _collect(src, 7 + 46, max_changes=20)
        _exec(pg_source_dsn, "INSERT INTO s VALUES (52, 'streamed')")
        streamed = _collect(src, 1)
        time.sleep(0.2)
        assert not _collect(src, 1, seconds=0.5)  # nothing repeated
    finally:
        src.close()
    deletes = [c.key["id"] for c in changes if c.event.op == "d"]
    assert deletes == [1, 2, 3, 40, 7, 8, 4]  # every delete since the first attempt, in order
    assert [c.event.op for c in changes] == ["d"] * 7 + ["r"] * 46  # all before the rows
    rows = {c.key["id"]: c.event.after["v"] for c in changes if c.event.op == "r"}  # type: ignore[index]
    assert rows == dict(_query(pg_source_dsn, "SELECT id, v FROM s WHERE id <> 52"))
    assert rows[7] == "back" and 108 in rows and 51 in rows
    assert [(c.event.op, c.key["id"]) for c in streamed] == [("c", 52)]


def test_idle_source_confirms_wal_it_does_not_capture(pg_source_dsn: str) -> None:
    _exec(pg_source_dsn, "CREATE TABLE cap (id int PRIMARY KEY)", "CREATE TABLE noise (id int)")
    src = _source(pg_source_dsn, ["cap"], snapshot="never", status_interval=0.2)
    try:
        src.open(None)
        before = _slot_flush(pg_source_dsn, src.slot)
        _exec(pg_source_dsn, "INSERT INTO noise SELECT generate_series(1, 1000)")
        moved: list[CaptureBatch] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            batch = src.read(100, 0.2)
            if batch is not None:
                assert not batch.changes
                moved.append(batch)
                src.ack(batch.checkpoint)
            if _slot_flush(pg_source_dsn, src.slot) > before and moved:
                break
        assert _slot_flush(pg_source_dsn, src.slot) > before
        assert moved and moved[-1].checkpoint["end_lsn"] > before
    finally:
        src.close()


def test_heartbeat_query_runs_while_idle(pg_source_dsn: str) -> None:
    _exec(
        pg_source_dsn,
        "CREATE TABLE cap (id int PRIMARY KEY)",
        "CREATE TABLE beats (at timestamptz)",
    )
    src = _source(
        pg_source_dsn,
        ["cap"],
        snapshot="never",
        heartbeat_interval=0.1,
        heartbeat_query="INSERT INTO beats VALUES (now())",
    )
    try:
        src.open(None)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            src.read(10, 0.1)
    finally:
        src.close()
    assert _query(pg_source_dsn, "SELECT count(*) FROM beats")[0][0] >= 3


def test_describe_check_and_naming(pg_source_dsn: str) -> None:
    _exec(
        pg_source_dsn,
        "CREATE TABLE d (id bigint, region text, amount numeric(10,2) NOT NULL, tags text[], "
        "total int GENERATED ALWAYS AS (1) STORED, PRIMARY KEY (region, id))",
    )
    src = _source(pg_source_dsn, ["d"])
    schema = src.describe()["public.d"]
    assert [c.name for c in schema.columns] == [
        "id",
        "region",
        "amount",
        "tags",
    ]  # generated: not replicated
    assert [c.type for c in schema.columns] == ["bigint", "text", "numeric(10,2)", "text[]"]
    assert [c.nullable for c in schema.columns] == [False, False, False, True]
    assert schema.key == ("region", "id") and schema.dialect == "postgres"
    notes = src.check()
    assert len(notes) == 1 and "wal_level=logical, 1 table ok" in notes[0]
    assert src.slot == src.pipeline.replace("-", "_").join(["syncline_", ""])
    assert src.publication == f"{src.slot}_pub"
    src.close()
    src.close()  # idempotent


def test_existing_publication_gets_missing_tables(pg_source_dsn: str) -> None:
    _exec(
        pg_source_dsn,
        "CREATE TABLE x (id int PRIMARY KEY)",
        "CREATE TABLE y (id int PRIMARY KEY)",
        "CREATE PUBLICATION mypub FOR TABLE x",
    )
    src = _source(pg_source_dsn, ["x", "y"], publication="mypub", snapshot="never")
    try:
        src.open(None)
        tables = _query(
            pg_source_dsn,
            "SELECT tablename FROM pg_publication_tables WHERE pubname = 'mypub' ORDER BY 1",
        )
        assert tables == [("x",), ("y",)]
        _exec(pg_source_dsn, "INSERT INTO y VALUES (1)")
        assert [c.event.source.table for c in _collect(src, 1)] == ["y"]
    finally:
        src.close()


# -- bad paths ------------------------------------------------------------------------


def test_lost_connection_mid_stream_is_transient(pg_source_dsn: str) -> None:
    _exec(pg_source_dsn, "CREATE TABLE t (id int PRIMARY KEY)")
    src = _source(pg_source_dsn, ["t"], snapshot="never")
    try:
        src.open(None)
        _exec(pg_source_dsn, "INSERT INTO t VALUES (1)")
        batches: list[CaptureBatch] = []
        assert len(_collect(src, 1, batches=batches)) == 1
        _exec(
            pg_source_dsn,
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = %s",
            params=(src.slot,),
        )
        with pytest.raises(
            ConnectError, match=r"lost connection to PostgreSQL at 127\.0\.0\.1:\d+ while streaming"
        ):
            for _ in range(50):
                src.read(10, 0.1)
    finally:
        src.close()
    # a new run picks up after the stored checkpoint (the server may not have seen the ack)
    src2 = PostgresSource(src.config, src.pipeline)
    try:
        deadline = time.monotonic() + 10
        while True:  # the old walsender may take a moment to release the slot
            try:
                src2.open(batches[-1].checkpoint)
                break
            except TransientError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        _exec(pg_source_dsn, "INSERT INTO t VALUES (2)")
        assert [c.key["id"] for c in _collect(src2, 1)] == [2]
    finally:
        src2.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_port(pg_source_dsn: str) -> None:
    port = _closed_port()
    src = _source(_with_dsn(pg_source_dsn, port=port), ["t"])
    with pytest.raises(ConnectError) as info:
        src.open(None)
    msg = str(info.value)
    assert (
        msg
        == f"cannot connect to PostgreSQL at 127.0.0.1:{port}: connection refused (source of pipeline {src.pipeline}); "
        "check the host and port in the source dsn and that the server is running"
    )
    assert "syncline-test" not in msg


def test_wrong_password(pg_source_dsn: str) -> None:
    src = _source(_with_dsn(pg_source_dsn, password="not-the-password"), ["t"])
    with pytest.raises(AuthError) as info:
        src.check()
    port = urlsplit(pg_source_dsn).port
    assert str(info.value) == (
        f"password authentication failed for user postgres at 127.0.0.1:{port} (source of pipeline {src.pipeline}); "
        "check the user and password in the source dsn"
    )
    assert "not-the-password" not in str(info.value)


def test_missing_database(pg_source_dsn: str) -> None:
    src = _source(_with_dsn(pg_source_dsn, db="no_such_db"), ["t"])
    with pytest.raises(ConfigError, match=r"database no_such_db does not exist at 127\.0\.0\.1:"):
        src.open(None)


def test_missing_table_and_table_without_key(pg_source_dsn: str) -> None:
    _exec(pg_source_dsn, "CREATE TABLE nokey (a int)")
    db = urlsplit(pg_source_dsn).path.lstrip("/")
    src = _source(pg_source_dsn, ["public.ghost"])
    with pytest.raises(SchemaError) as info:
        src.open(None)
    assert (
        str(info.value)
        == f"table public.ghost does not exist in database {db} (source of pipeline {src.pipeline})"
    )
    src = _source(pg_source_dsn, ["nokey"])
    with pytest.raises(
        SchemaError,
        match=r"^table public.nokey has no primary key: add one or set REPLICA IDENTITY FULL",
    ):
        src.check()
    with pytest.raises(SchemaError, match="has no primary key"):
        src.open(None)
    assert _query(
        pg_source_dsn, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (src.slot,)
    ) == [(0,)]


def test_checkpoint_without_slot_is_refused(pg_source_dsn: str) -> None:
    _exec(pg_source_dsn, "CREATE TABLE t (id int PRIMARY KEY)")
    src = _source(pg_source_dsn, ["t"])
    with pytest.raises(PermanentError, match=f"replication slot {src.slot} is missing"):
        src.open({"lsn": 100, "seq": 0, "end_lsn": 100, "snapshot": "done"})


def test_bad_dsn_is_a_config_error() -> None:
    from syncline.errors import ConfigError

    with pytest.raises(ConfigError, match="not a valid PostgreSQL connection string"):
        _source("host=x port", ["t"])


def test_wal_level_message() -> None:
    ep = endpoint("postgresql://u:secret@db.example:6543/app", "orders")
    assert wal_level_message("replica", ep) == (
        "wal_level is replica on db.example:6543; set wal_level=logical and restart PostgreSQL (source of pipeline orders)"
    )


@pytest.mark.parametrize(
    ("driver_message", "kind", "ours"),
    [
        (
            'could not translate host name "db.example" to address: Name or service not known',
            ConnectError,
            "cannot connect to PostgreSQL at db.example:6543: unknown host (source of pipeline orders)"
            "; check the host and port in the source dsn and that the server is running",
        ),
        (
            "timeout expired",
            ConnectError,
            "cannot connect to PostgreSQL at db.example:6543: timed out (source of pipeline orders)"
            "; check the host and port in the source dsn and that the server is running",
        ),
        (
            "logical decoding requires wal_level >= logical",
            SchemaError,
            "logical decoding is off at db.example:6543: set wal_level=logical and restart "
            "PostgreSQL (source of pipeline orders)",
        ),
        (
            'FATAL:  role "u" does not exist',
            AuthError,
            "user u does not exist at db.example:6543 (source of pipeline orders); fix the user "
            "in the source dsn",
        ),
        (
            "server closed the connection unexpectedly s3cret",
            ConnectError,
            "lost connection to PostgreSQL at db.example:6543 while streaming: server closed the "
            "connection unexpectedly *** (source of pipeline orders)",
        ),
    ],
)
def test_driver_messages_become_one_actionable_line(
    driver_message: str, kind: type[Exception], ours: str
) -> None:
    from syncline.sources.postgres.errors import translate

    ep = endpoint("postgresql://u:s3cret@db.example:6543/app", "orders")
    err = translate(psycopg2.OperationalError(driver_message + "\n\tdetail line"), ep, "streaming")
    assert type(err) is kind and str(err) == ours


@pytest.mark.parametrize(
    "driver_message",
    ["no COPY in progress", "error with status PGRES_COPY_BOTH and no message from the libpq"],
)
def test_stream_ended_by_a_server_shutdown_is_a_lost_connection(driver_message: str) -> None:
    """psycopg2 reports these as a bare DatabaseError (no SQLSTATE) after a fast shutdown."""
    from syncline.sources.postgres.errors import translate

    ep = endpoint("postgresql://u:s3cret@db.example:6543/app", "orders")
    err = translate(psycopg2.DatabaseError(driver_message), ep, "streaming changes")
    assert type(err) is ConnectError
    assert str(err) == (
        "lost connection to PostgreSQL at db.example:6543 while streaming changes: "
        f"{driver_message} (source of pipeline orders)"
    )
    # a server error (it has a SQLSTATE) is still judged by its class
    assert isinstance(translate(psycopg2.errors.DivisionByZero("x"), ep), PermanentError)


def test_check_on_a_server_without_logical_wal() -> None:
    """The machine's own PostgreSQL runs with wal_level=replica; use it when it is there."""
    dsn = "postgresql://postgres@127.0.0.1:5432/postgres"
    try:
        psycopg2.connect(dsn, connect_timeout=2).close()
    except psycopg2.Error:
        pytest.skip("no PostgreSQL with trust auth at 127.0.0.1:5432")
    level = _query(dsn, "SHOW wal_level")[0][0]
    if level == "logical":
        pytest.skip("the server at 127.0.0.1:5432 already has wal_level=logical")
    src = _source(dsn, ["t"])
    with pytest.raises(SchemaError) as info:
        src.check()
    assert str(info.value).startswith(
        f"wal_level is {level} on 127.0.0.1:5432; set wal_level=logical"
    )
