"""SqliteSource against real SQLite files: capture, snapshot, restart, trim, bad paths."""

from __future__ import annotations

import base64
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from syncline.config import SqliteSourceConfig
from syncline.errors import PermanentError, SchemaError, StorageError
from syncline.events import Change, decode_value, encode_value
from syncline.sources.base import CaptureBatch
from syncline.sources.sqlite import LOG, SUPPRESS, SqliteSource

ITEMS = "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER)"


def make_db(tmp_path: Path, *ddl: str, name: str = "svc.db") -> str:
    path = str(tmp_path / name)
    with sqlite3.connect(path) as conn:
        for stmt in ddl:
            conn.execute(stmt)
    conn.close()
    return path


def connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=10)
    conn.execute("PRAGMA synchronous=OFF")  # the service's durability is not under test here
    return conn


def source(
    path: str, tables: list[str], snapshot: str = "never", pipeline: str = "p"
) -> SqliteSource:
    cfg = SqliteSourceConfig(
        kind="sqlite", path=path, tables=tables, snapshot=snapshot, poll_interval=0.005
    )  # type: ignore[arg-type]
    return SqliteSource(cfg, pipeline)


@pytest.fixture
def opened() -> Iterator[list[SqliteSource]]:
    """Sources to close after the test, whatever happens."""
    made: list[SqliteSource] = []
    yield made
    for s in made:
        s.close()


def drain(src: SqliteSource, max_changes: int = 1000) -> tuple[list[Change], list[CaptureBatch]]:
    batches = []
    while (b := src.read(max_changes, 0)) is not None:
        batches.append(b)
    return [c for b in batches for c in b.changes], batches


def apply(state: dict[Any, dict[str, Any]], changes: list[Change]) -> None:
    for ch in changes:
        key = tuple(ch.key.values())
        if ch.event.op == "d":
            state.pop(key, None)
        else:
            assert ch.event.after is not None
            state[key] = ch.event.after


def table_state(path: str, table: str = "items") -> dict[Any, dict[str, Any]]:
    conn = connect(path)
    conn.row_factory = sqlite3.Row
    rows = {(r["id"],): dict(r) for r in conn.execute(f"SELECT * FROM {table}")}
    conn.close()
    return rows


def test_insert_update_delete(tmp_path: Path, opened: list[SqliteSource]) -> None:
    path = make_db(tmp_path, ITEMS)
    src = source(path, ["items"], pipeline="orders")
    opened.append(src)
    src.open(None)
    assert src.read(100, 0) is None
    db = connect(path)
    db.execute("INSERT INTO items VALUES (1, 'apple', 3)")
    db.execute("UPDATE items SET qty = 5 WHERE id = 1")
    db.execute("DELETE FROM items WHERE id = 1")
    changes, batches = drain(src)
    assert [c.event.op for c in changes] == ["c", "u", "d"]
    assert [c.key for c in changes] == [{"id": 1}] * 3
    c, u, d = (c.event for c in changes)
    assert c.before is None and c.after == {"id": 1, "name": "apple", "qty": 3}
    assert u.before == {"id": 1, "name": "apple", "qty": 3}
    assert u.after == {"id": 1, "name": "apple", "qty": 5}
    assert d.before == {"id": 1, "name": "apple", "qty": 5} and d.after is None
    seqs = [e.source.seq for e in (c, u, d)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert batches[-1].checkpoint == {"seq": seqs[-1], "snapshot": "done"}
    s = c.source
    assert (s.connector, s.name, s.db, s.schema, s.table, s.txId) == (
        "sqlite", "orders", "svc.db", "main", "items", None,
    )  # fmt: skip
    assert s.ts_us is not None and abs(s.ts_us - time.time() * 1e6) < 60e6
    assert s.ts_ms == s.ts_us // 1000 and s.snapshot == "false"


def test_key_update_becomes_delete_and_create(tmp_path: Path, opened: list[SqliteSource]) -> None:
    path = make_db(tmp_path, ITEMS)
    db = connect(path)
    src = source(path, ["items"])
    opened.append(src)
    src.open(None)
    db.execute("INSERT INTO items VALUES (1, 'a', 1)")
    db.execute("UPDATE items SET id = 2 WHERE id = 1")
    db.execute("UPDATE items SET name = 'b' WHERE id = 2")
    changes, _ = drain(src)
    assert [(c.event.op, c.key) for c in changes] == [
        ("c", {"id": 1}), ("d", {"id": 1}), ("c", {"id": 2}), ("u", {"id": 2}),
    ]  # fmt: skip
    assert changes[1].event.before == {"id": 1, "name": "a", "qty": 1}
    assert changes[2].event.after == {"id": 2, "name": "a", "qty": 1}
    # the split pair never straddles a checkpoint and batches keep their limit
    src.close()
    src.open({"seq": 0, "snapshot": "done"})
    assert [len(b.changes) for b in drain(src, 2)[1]] == [1, 2, 1]
    src.close()
    src.open({"seq": changes[0].event.source.seq or 0, "snapshot": "done"})
    b = src.read(2, 0)
    assert b is not None and [c.event.op for c in b.changes] == ["d", "c"]


def test_snapshot_chunks_and_last_marker(tmp_path: Path, opened: list[SqliteSource]) -> None:
    path = make_db(tmp_path, ITEMS, "CREATE TABLE other (k TEXT PRIMARY KEY, v)")
    db = connect(path)
    db.executemany("INSERT INTO items VALUES (?, ?, ?)", [(i, f"n{i}", i) for i in range(150)])
    db.executemany("INSERT INTO other VALUES (?, ?)", [(f"k{i}", i) for i in range(100)])
    src = source(path, ["items", "other"], snapshot="initial")
    opened.append(src)
    progress: list[tuple[str, int]] = []
    src.on_progress = lambda t, n, est: progress.append((t, n))
    src.open(None)
    _, batches = drain(src, 100)
    assert [len(b.changes) for b in batches] == [100, 100, 50]
    assert [b.checkpoint["snapshot"] for b in batches] == ["running", "running", "done"]
    changes = [c for b in batches for c in b.changes]
    assert all(c.event.op == "r" and c.event.before is None for c in changes)
    flags = [c.event.source.snapshot for c in changes]
    assert flags == ["true"] * 249 + ["last"]
    assert sorted(c.key["id"] for c in changes if c.event.source.table == "items") == list(
        range(150)
    )
    assert {c.key["k"] for c in changes if c.event.source.table == "other"} == {
        f"k{i}" for i in range(100)
    }
    assert progress and progress[-1] == ("other", 100)
    db.execute("INSERT INTO items VALUES (999, 'late', 0)")
    late, _ = drain(src)
    assert [(c.event.op, c.key) for c in late] == [("c", {"id": 999})]


def test_snapshot_of_empty_tables_finishes(tmp_path: Path, opened: list[SqliteSource]) -> None:
    path = make_db(tmp_path, ITEMS)
    src = source(path, ["items"], snapshot="initial")
    opened.append(src)
    src.open(None)
    b = src.read(10, 0)
    assert b is not None and b.changes == [] and b.checkpoint["snapshot"] == "done"
    assert src.read(10, 0) is None


def test_snapshot_with_concurrent_writes_is_exact(
    tmp_path: Path, opened: list[SqliteSource]
) -> None:
    path = make_db(tmp_path, ITEMS)
    db = connect(path)
    db.executemany("INSERT INTO items VALUES (?, ?, ?)", [(i, f"n{i}", 0) for i in range(3000)])
    src = source(path, ["items"], snapshot="initial")
    opened.append(src)
    src.open(None)
    stop = threading.Event()

    def writer(seed: int) -> None:
        rnd, conn = random.Random(seed), connect(path)
        while not stop.is_set():
            k = rnd.randrange(4000)
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT OR IGNORE INTO items VALUES (?, 'new', 0)", (k,))
                conn.execute("UPDATE items SET qty = qty + 1 WHERE id = ?", (rnd.randrange(4000),))
                if rnd.random() < 0.3:
                    conn.execute("DELETE FROM items WHERE id = ?", (rnd.randrange(4000),))
            time.sleep(0.001)  # let the other writer in: SQLite's busy wait is not fair
        conn.close()

    thread = threading.Thread(target=writer, args=(7,))
    thread.start()
    try:
        changes: list[Change] = []
        while True:  # interleave guaranteed writes between snapshot batches too
            db.execute("UPDATE items SET qty = qty + 100 WHERE id = ?", (len(changes) % 3000,))
            b = src.read(100, 0)
            assert b is not None
            changes += b.changes
            if b.checkpoint["snapshot"] == "done":
                break
    finally:
        stop.set()
        thread.join()
    snap = [c for c in changes if c.event.op == "r"]
    assert len({c.key["id"] for c in snap}) == len(snap)  # each row read once
    stream, _ = drain(src, 500)
    assert stream and all(c.event.op in "cud" for c in stream)
    seqs = [c.event.source.seq or 0 for c in stream]
    assert seqs == sorted(seqs)  # changelog order, nothing reordered
    state: dict[Any, dict[str, Any]] = {}
    apply(state, changes + stream)
    assert state == table_state(path)


def test_restart_resumes_without_gaps_or_repeats(
    tmp_path: Path, opened: list[SqliteSource]
) -> None:
    path = make_db(tmp_path, ITEMS)
    db = connect(path)
    src = source(path, ["items"])
    opened.append(src)
    src.open(None)
    for i in range(30):
        db.execute("INSERT INTO items VALUES (?, 'x', ?)", (i, i))
    first, second = src.read(10, 0), src.read(10, 0)
    assert first is not None and second is not None
    src.close()  # crash: only the first batch's checkpoint reached the transport
    for i in range(30, 40):
        db.execute("INSERT INTO items VALUES (?, 'x', ?)", (i, i))
    again = source(path, ["items"])
    opened.append(again)
    again.open(first.checkpoint)
    rest, _ = drain(again, 7)
    ids = [c.key["id"] for c in list(first.changes) + rest]
    assert ids == list(range(40))
    assert [c.key["id"] for c in rest[:10]] == [c.key["id"] for c in second.changes]


def test_restart_mid_snapshot_converges(tmp_path: Path, opened: list[SqliteSource]) -> None:
    path = make_db(tmp_path, ITEMS)
    db = connect(path)
    db.executemany("INSERT INTO items VALUES (?, 'x', 0)", [(i,) for i in range(300)])
    src = source(path, ["items"], snapshot="initial")
    opened.append(src)
    src.open(None)
    b = src.read(100, 0)
    assert b is not None and b.checkpoint["snapshot"] == "running"
    src.ack(b.checkpoint)
    src.close()
    seen = list(b.changes)
    gone = [c.key["id"] for c in seen[:20]]  # rows the first attempt already emitted
    db.executemany("DELETE FROM items WHERE id = ?", [(i,) for i in gone])
    db.execute("UPDATE items SET qty = 7 WHERE id >= 250")
    db.execute("INSERT INTO items VALUES (1000, 'new', 1)")
    again = source(path, ["items"], snapshot="initial")
    opened.append(again)
    again.open(b.checkpoint)
    redo, batches = drain(again, 100)
    assert batches[-1].checkpoint["snapshot"] == "done"
    assert sum(c.event.op == "r" for c in redo) == 300 - 20 + 1
    state: dict[Any, dict[str, Any]] = {}
    apply(state, seen + redo)
    assert state == table_state(path)


def test_ack_trims_only_own_tables(tmp_path: Path, opened: list[SqliteSource]) -> None:
    path = make_db(tmp_path, ITEMS, "CREATE TABLE other (id INTEGER PRIMARY KEY, v)")
    a, b = source(path, ["items"], pipeline="a"), source(path, ["other"], pipeline="b")
    opened += [a, b]
    a.open(None)
    b.open(None)
    db = connect(path)
    for i in range(25):
        db.execute("INSERT INTO items VALUES (?, 'x', 1)", (i,))
        db.execute("INSERT INTO other VALUES (?, 'y')", (i,))
    count = "SELECT count(*) FROM " + LOG + " WHERE tbl = ?"
    got, batches = drain(a, 10)
    assert len(got) == 25
    a.ack(batches[0].checkpoint)
    assert db.execute(count, ("items",)).fetchone()[0] == 15
    a.ack(batches[-1].checkpoint)
    assert db.execute(count, ("items",)).fetchone()[0] == 0
    assert db.execute(count, ("other",)).fetchone()[0] == 25
    a.ack(batches[0].checkpoint)  # an old checkpoint is a no-op
    other, _ = drain(b)
    assert [c.key["id"] for c in other] == list(range(25))


def test_values_round_trip(tmp_path: Path, opened: list[SqliteSource]) -> None:
    path = make_db(tmp_path, "CREATE TABLE v (id INTEGER PRIMARY KEY, x, t TEXT, r REAL)")
    values: list[Any] = [
        None, 0, -1, 2**63 - 1, -(2**63), 1.5, 0.1 + 0.2, 1e300, 5e-324, 1.7976931348623157e308,
        float("inf"), float("-inf"), "héllo ✓ 𝄞", '["not a blob"]', "", "x00ff", "null",
        'tab\tnl\n"q"\\', b"\x00\xff\x10", b"", b"[1]",
    ]  # fmt: skip

    def expect(v: Any) -> Any:
        if isinstance(v, bytes):
            return base64.b64encode(v).decode()
        if v in (float("inf"), float("-inf")):
            return "Infinity" if v > 0 else "-Infinity"
        return v

    db = connect(path)
    db.executemany(
        "INSERT INTO v VALUES (?, ?, ?, ?)", [(i, v, v, v) for i, v in enumerate(values)]
    )
    src = source(path, ["v"], snapshot="initial")
    opened.append(src)
    src.open(None)
    snap, _ = drain(src)
    db.execute("UPDATE v SET id = id + 1000")
    stream, _ = drain(src)
    assert len(snap) == len(values) and len(stream) == 2 * len(values)
    stored = {r[0]: r[1:] for r in db.execute("SELECT id - 1000, x, t, r FROM v")}
    for images, kind in (
        ([c.event.after for c in snap], "r"),
        ([c.event.before for c in stream[::2]], "d"),
    ):
        for img in images:
            assert img is not None
            i = img["id"] % 1000
            want = tuple(expect(v) for v in stored[i])
            assert (img["x"], img["t"], img["r"]) == want, (kind, i)
            assert type(img["x"]) is type(want[0]), (kind, i)
    for c in snap + stream:  # and they survive the event codec unchanged
        assert decode_value(encode_value(c.event)) == c.event


def test_rolled_back_writes_produce_nothing(tmp_path: Path, opened: list[SqliteSource]) -> None:
    path = make_db(tmp_path, ITEMS)
    src = source(path, ["items"])
    opened.append(src)
    src.open(None)
    db = connect(path)
    db.execute("BEGIN")
    db.execute("INSERT INTO items VALUES (1, 'x', 1)")
    db.execute("ROLLBACK")
    assert src.read(10, 0.05) is None
    db.execute("INSERT INTO items VALUES (2, 'y', 1)")
    got, _ = drain(src)
    assert [c.key for c in got] == [{"id": 2}]


def test_suppress_table_hides_writes(tmp_path: Path, opened: list[SqliteSource]) -> None:
    path = make_db(tmp_path, ITEMS)
    src = source(path, ["items"])
    opened.append(src)
    src.open(None)
    db = connect(path)
    db.execute("BEGIN IMMEDIATE")
    db.execute(f"INSERT INTO {SUPPRESS} VALUES ('sink')")
    db.execute("INSERT INTO items VALUES (1, 'from-sink', 1)")
    db.execute(f"DELETE FROM {SUPPRESS}")
    db.execute("COMMIT")
    db.execute("INSERT INTO items VALUES (2, 'from-service', 1)")
    got, _ = drain(src)
    assert [c.key for c in got] == [{"id": 2}]


def test_blocking_read_wakes_on_commit(tmp_path: Path, opened: list[SqliteSource]) -> None:
    path = make_db(tmp_path, ITEMS)
    src = source(path, ["items"])
    opened.append(src)
    src.open(None)
    other = threading.Timer(
        0.1, lambda: connect(path).execute("INSERT INTO items VALUES (5, 'z', 1)")
    )
    other.start()
    b = src.read(10, 30)
    other.join()
    assert b is not None and [c.key for c in b.changes] == [{"id": 5}]


def test_describe_and_composite_key(tmp_path: Path) -> None:
    path = make_db(
        tmp_path,
        "CREATE TABLE lines (sku TEXT NOT NULL, line INTEGER, price NUMERIC(10,2), note,"
        " PRIMARY KEY (line, sku)) WITHOUT ROWID",
        ITEMS,
    )
    src = source(path, ["main.lines", "items"])
    schemas = src.describe()
    assert list(schemas) == ["main.lines", "main.items"]
    lines = schemas["main.lines"]
    assert lines.key == ("line", "sku") and lines.dialect == "sqlite" and lines.schema == "main"
    assert [(c.name, c.type, c.nullable) for c in lines.columns] == [
        ("sku", "TEXT", False), ("line", "INTEGER", False),
        ("price", "NUMERIC(10,2)", True), ("note", "", True),
    ]  # fmt: skip
    assert schemas["main.items"].key == ("id",)
    assert src.check() == [f"sqlite {path}: 2 tables ok"]
    src.open(None)
    try:
        db = connect(path)
        db.execute("INSERT INTO lines VALUES ('ab', 2, 9.5, NULL)")
        db.execute("UPDATE lines SET sku = 'cd'")
        got, _ = drain(src)
        assert [(c.event.op, c.key) for c in got] == [
            ("c", {"line": 2, "sku": "ab"}), ("d", {"line": 2, "sku": "ab"}), ("c", {"line": 2, "sku": "cd"}),
        ]  # fmt: skip
    finally:
        src.close()
        src.close()  # idempotent


def test_triggers_follow_column_changes(tmp_path: Path, opened: list[SqliteSource]) -> None:
    path = make_db(tmp_path, ITEMS)
    src = source(path, ["items"])
    opened.append(src)
    src.open(None)
    src.close()
    db = connect(path)
    db.execute("ALTER TABLE items ADD COLUMN color TEXT")
    triggers = "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND name LIKE '_syncline_items_%'"
    src.open(None)
    assert db.execute(triggers).fetchone()[0] == 3
    db.execute("INSERT INTO items VALUES (1, 'a', 1, 'red')")
    got, _ = drain(src)
    assert got[0].event.after == {"id": 1, "name": "a", "qty": 1, "color": "red"}


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.db")
    src = source(path, ["items"], pipeline="orders")
    want = f"SQLite database {path} does not exist (source of pipeline orders)"
    for call in (lambda: src.open(None), src.check, src.describe):
        with pytest.raises(PermanentError) as err:
            call()
        assert str(err.value) == want
        assert type(err.value) is PermanentError  # the config is valid; the world is not (exit 1)
    assert not Path(path).exists()


def test_missing_table_and_missing_key(tmp_path: Path) -> None:
    path = make_db(tmp_path, ITEMS, "CREATE TABLE nokey (a, b)", "CREATE VIEW vw AS SELECT 1 AS a")
    cases = {
        "ghost": f"table ghost does not exist in {path} (source of pipeline p)",
        "vw": f"vw in {path} is a view; capture needs a table (source of pipeline p)",
        "nokey": f"table nokey in {path} has no primary key: add one (syncline applies changes"
        " by key) (source of pipeline p)",
    }
    for table, msg in cases.items():
        src = source(path, ["items", table])
        for call in (lambda s=src: s.open(None), src.check):  # type: ignore[misc]
            with pytest.raises(SchemaError) as err:
                call()
            assert str(err.value) == msg
        src.close()
    db = connect(path)  # a failed open leaves nothing half-installed
    assert (
        db.execute("SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'").fetchone()[0] == 0
    )


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StorageError, match=r"junk\.db .*source of pipeline p.*not a database"):
        source(str(path), ["items"]).check()


def test_invalid_utf8_text_becomes_a_poison_record_in_its_place(
    tmp_path: Path, opened: list[SqliteSource]
) -> None:
    """SQLite stores TEXT unchecked; what cannot be read exactly is marked, never guessed."""
    path = make_db(tmp_path, ITEMS, "INSERT INTO items VALUES (9, CAST(x'e9' AS TEXT), 9)")
    src = source(path, ["items"], snapshot="initial")
    opened.append(src)
    src.open(None)
    db = connect(path)
    db.execute("INSERT INTO items VALUES (1, CAST(x'ff41' AS TEXT), 1)")  # poison
    db.execute("INSERT INTO items VALUES (2, 'ok', 2)")  # the stream goes on
    db.execute("UPDATE items SET name = 'fixed' WHERE id = 1")  # old image unreadable
    db.execute("UPDATE items SET name = CAST(x'c3' AS TEXT) WHERE id = 2")  # poison
    db.execute("UPDATE items SET id = 3 WHERE id = 2")  # key change, old image unreadable
    db.execute("DELETE FROM items WHERE id = 3")  # delete of an unreadable row: by key
    changes, _ = drain(src)
    got = [(c.event.op, c.key, c.event.poison is not None) for c in changes]
    assert got == [
        ("r", {"id": 9}, True),
        ("c", {"id": 1}, True),
        ("c", {"id": 2}, False),
        ("u", {"id": 1}, False),
        ("u", {"id": 2}, True),
        ("d", {"id": 2}, False),
        ("c", {"id": 3}, True),
        ("d", {"id": 3}, False),
    ]
    snap, first, _, fix, _, old_key, _, gone = (c.event for c in changes)
    assert snap.poison is not None and snap.after is None
    assert first.poison is not None and base64.b64decode(first.poison.after or "").startswith(
        b'{"id":1,"name":"\xffA"'
    )
    assert first.poison.error.startswith(
        f'SQLite {path} (source of pipeline p): row {{"id":1}} of table items: column name '
        "holds bytes that are not valid UTF-8; fix the row in the source database"
    )
    assert fix.before is None and fix.after == {"id": 1, "name": "fixed", "qty": 1}
    assert old_key.before == {"id": 2} and gone.before == {"id": 3}


def test_bad_checkpoints(tmp_path: Path, opened: list[SqliteSource]) -> None:
    path = make_db(tmp_path, ITEMS)
    src = source(path, ["items"])
    opened.append(src)
    src.open(None)
    db = connect(path)
    for i in range(5):
        db.execute("INSERT INTO items VALUES (?, 'x', 1)", (i,))
    _, batches = drain(src, 3)
    src.ack(batches[-1].checkpoint)
    src.close()
    for cp, match in (
        ({"seq": 1, "snapshot": "done"}, "behind seq 5, which was already acked"),
        ({"seq": 99, "snapshot": "done"}, "ahead of the changelog"),
        ({"lsn": 3}, "is not a SQLite source checkpoint"),
    ):
        with pytest.raises(PermanentError, match=match):
            src.open(cp)
    src.open(batches[-1].checkpoint)
    assert src.read(10, 0) is None


def test_snapshot_never_skips_existing_rows(tmp_path: Path, opened: list[SqliteSource]) -> None:
    path = make_db(tmp_path, ITEMS)
    db = connect(path)
    db.execute("INSERT INTO items VALUES (1, 'old', 1)")
    src = source(path, ["items"], snapshot="never")
    opened.append(src)
    src.open(None)
    assert src.read(10, 0) is None
    db.execute("INSERT INTO items VALUES (2, 'new', 1)")
    got, _ = drain(src)
    assert [c.key for c in got] == [{"id": 2}]


def test_snapshot_is_one_point_in_time_across_tables(
    tmp_path: Path, opened: list[SqliteSource]
) -> None:
    ddl = "CREATE TABLE {} (id INTEGER PRIMARY KEY, balance INTEGER)"
    path = make_db(tmp_path, ddl.format("a"), ddl.format("b"))
    db = connect(path)
    for t in "ab":
        db.executemany(f"INSERT INTO {t} VALUES (?, 100)", [(i,) for i in range(200)])
    src = source(path, ["a", "b"], snapshot="initial")
    opened.append(src)
    src.open(None)
    rnd, snap = random.Random(3), []
    while True:
        with db:  # move money from a to b while the snapshot pages through both tables
            db.execute("BEGIN IMMEDIATE")
            db.execute("UPDATE a SET balance = balance - 5 WHERE id = ?", (rnd.randrange(200),))
            db.execute("UPDATE b SET balance = balance + 5 WHERE id = ?", (rnd.randrange(200),))
        b = src.read(50, 0)
        assert b is not None
        snap += b.changes
        if b.checkpoint["snapshot"] == "done":
            break
    assert sum(c.event.after["balance"] for c in snap if c.event.after) == 40_000
    assert {c.event.after["balance"] for c in snap if c.event.after} == {100}  # as at the start
    assert db.execute("SELECT sum(balance) FROM a").fetchone()[0] < 20_000  # though money moved
