"""Conflict strategies in the SQLite sink: lww, target_wins, custom, manual, missing columns.

Driven directly with hand-built changes against real SQLite files; the local writer is
a second connection to the target file.
"""

from __future__ import annotations

import random
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e_helpers import syncline
from syncline.config import SqliteSinkConfig
from syncline.errors import ConfigError, DataError, SchemaError
from syncline.events import Change, ChangeEvent, Op, SourceInfo
from syncline.schema import Column, TableSchema
from syncline.sinks.sqlite import SqliteSink

ITEMS = TableSchema(
    "main",
    "items",
    (
        Column("id", "INTEGER", nullable=False),
        Column("name", "TEXT"),
        Column("reserved", "INTEGER"),
        Column("updated_at", "TEXT"),
    ),
    ("id",),
    dialect="sqlite",
)
DDL = (
    "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, reserved INTEGER, "
    "updated_at TIMESTAMP, note TEXT DEFAULT 'local-only')"
)
T0 = 1_700_000_000_000_000  # µs: 2023-11-14 22:13:20 UTC


def ts_text(us: int) -> str:
    return f"2023-11-14 22:13:{20 + (us - T0) // 1_000_000:02d}.{(us - T0) % 1_000_000:06d}+00:00"


def ch(
    op: str,
    i: int,
    ts: int = T0,
    *,
    name: str | None = None,
    reserved: int | None = 0,
    at: int | None = None,
    before: dict[str, Any] | None = None,
    unchanged: list[str] | None = None,
) -> Change:
    src = SourceInfo(
        connector="sqlite", name="src", ts_ms=ts // 1000, ts_us=ts, db="main", schema="main",
        table="items",
    )  # fmt: skip
    after = None
    if op != Op.DELETE:
        after = {"id": i, "name": name if name is not None else f"n{i}", "reserved": reserved}
        after["updated_at"] = ts_text(at) if at is not None else None
        for c in unchanged or []:
            after.pop(c, None)
    ev = ChangeEvent(
        before=before if op != Op.DELETE else (before or {"id": i}),
        after=after,
        source=src,
        op=op,
        ts_ms=ts // 1000,
        unchanged=unchanged,
    )
    return Change({"id": i}, ev)


class Db:
    def __init__(self, path: Path) -> None:
        self.path = path

    def exec(self, *sql: str) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        try:
            for s in sql:
                conn.execute(s)
        finally:
            conn.close()

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    def items(self, cols: str = "id, name, reserved") -> list[tuple[Any, ...]]:
        return self.rows(f"SELECT {cols} FROM items ORDER BY id")


@pytest.fixture
def db(tmp_path: Path) -> Db:
    return Db(tmp_path / "target.db")


@pytest.fixture
def sinks() -> Iterator[list[SqliteSink]]:
    made: list[SqliteSink] = []
    yield made
    for s in made:
        s.close()


def open_sink(
    made: list[SqliteSink],
    db: Db,
    conflict: dict[str, Any] | None,
    ddl: str | None = DDL,
    schema: TableSchema | None = ITEMS,
    **opts: Any,
) -> SqliteSink:
    if ddl:
        db.exec(ddl)
    table: dict[str, Any] = dict(opts)
    if conflict is not None:
        table["conflict"] = conflict
    cfg = SqliteSinkConfig(kind="sqlite", path=str(db.path), tables={"items": table})
    sink = SqliteSink(cfg, "p")
    made.append(sink)
    sink.open("p")
    sink.prepare({"main.items": schema} if schema is not None else {})
    return sink


# ---- lww -----------------------------------------------------------------------------------


def test_lww_by_timestamp_column(db: Db, sinks: list[SqliteSink]) -> None:
    s = open_sink(sinks, db, {"strategy": "lww", "column": "updated_at"})
    s.apply([ch(Op.CREATE, 1, at=T0 + 2_000_000), ch(Op.CREATE, 2, at=T0)], {0: 2})
    r = s.apply(
        [
            ch(Op.UPDATE, 1, name="stale", at=T0 + 1_000_000),
            ch(Op.UPDATE, 2, name="fresh", at=T0 + 1_000_000),
        ],
        {0: 4},
    )
    assert (r.applied, r.conflicts) == (1, 1) and s.conflicts_detected == 1
    assert db.items() == [(1, "n1", 0), (2, "fresh", 0)]
    # A local write with a newer timestamp (another spelling of the offset) beats an older one.
    db.exec("UPDATE items SET name = 'local', updated_at = '2023-11-14T22:13:29Z' WHERE id = 2")
    assert s.apply([ch(Op.UPDATE, 2, name="late", at=T0 + 5_000_000)], {0: 5}).conflicts == 1
    r = s.apply([ch(Op.DELETE, 1, before={"id": 1, "updated_at": ts_text(T0 + 1)})], {0: 6})
    assert r.conflicts == 1
    s.apply([ch(Op.DELETE, 1, before={"id": 1, "updated_at": ts_text(T0 + 3_000_000)})], {0: 7})
    assert db.items() == [(2, "local", 0)]
    assert s.positions() == {0: 7}


def test_lww_by_integer_column(db: Db, sinks: list[SqliteSink]) -> None:
    s = open_sink(sinks, db, {"strategy": "lww", "column": "reserved"})
    s.apply([ch(Op.CREATE, 1, reserved=5)], {})
    r = s.apply([ch(Op.UPDATE, 1, name="lower", reserved=4)], {})
    assert r.conflicts == 1 and db.items() == [(1, "n1", 5)]
    s.apply([ch(Op.UPDATE, 1, name="higher", reserved=6)], {})
    # A key-only delete takes the version it deletes; a newer re-insert comes back.
    s.apply([ch(Op.DELETE, 1, T0 + 10**9)], {})
    assert db.rows("SELECT version, deleted FROM _syncline_row_versions") == [(6, 1)]
    assert s.apply([ch(Op.UPDATE, 1, name="late", reserved=5)], {}).conflicts == 1
    s.apply([ch(Op.CREATE, 1, name="again", reserved=7)], {})
    assert db.items() == [(1, "again", 7)]


def test_lww_by_commit_time(db: Db, sinks: list[SqliteSink]) -> None:
    s = open_sink(sinks, db, {"strategy": "lww"})
    s.apply([ch(Op.CREATE, 1, T0 + 200), ch(Op.CREATE, 2, T0 + 200)], {})
    r = s.apply(
        [ch(Op.UPDATE, 1, T0 + 100, name="older"), ch(Op.UPDATE, 2, T0 + 300, name="newer")], {}
    )
    assert (r.applied, r.conflicts) == (1, 1)
    assert db.items() == [(1, "n1", 0), (2, "newer", 0)]
    versions = db.rows("SELECT key, version, deleted FROM _syncline_row_versions ORDER BY key")
    assert versions == [('{"id":1}', T0 + 200, 0), ('{"id":2}', T0 + 300, 0)]
    assert s.apply([ch(Op.UPDATE, 2, T0 + 250, reserved=9, unchanged=["name"])], {}).conflicts == 1
    s.apply([ch(Op.UPDATE, 2, T0 + 400, reserved=9, unchanged=["name"])], {})
    assert db.items() == [(1, "n1", 0), (2, "newer", 9)]


@pytest.mark.parametrize(
    "conflict", [{"strategy": "lww"}, {"strategy": "lww", "column": "updated_at"}]
)
def test_lww_tie_break_is_the_same_on_every_replica(
    tmp_path: Path, sinks: list[SqliteSink], conflict: dict[str, Any]
) -> None:
    a = ch(Op.UPDATE, 1, T0 + 500, name="from-a", reserved=1, at=T0 + 500)
    b = ch(Op.UPDATE, 1, T0 + 500, name="from-b", reserved=2, at=T0 + 500)
    finals, lost = [], 0
    for n, order in enumerate(([a, b], [b, a])):
        db = Db(tmp_path / f"r{n}.db")
        s = open_sink(sinks, db, conflict)
        s.apply([ch(Op.CREATE, 1, T0, at=T0)], {})
        lost += sum(s.apply([c], {}).conflicts for c in order)
        finals.append(db.items("id, name, reserved, updated_at"))
    assert finals[0] == finals[1] and lost == 1
    for n, first_delete in enumerate((True, False)):
        db = Db(tmp_path / f"d{n}.db")
        s = open_sink(sinks, db, conflict)
        s.apply([ch(Op.CREATE, 1, T0, at=T0)], {})
        d = ch(Op.DELETE, 1, T0 + 500, before={"id": 1, "updated_at": ts_text(T0 + 500)})
        for c in [d, a] if first_delete else [a, d]:
            s.apply([c], {})
        assert db.items() == []


@pytest.mark.parametrize(
    "conflict", [{"strategy": "lww"}, {"strategy": "lww", "column": "updated_at"}]
)
def test_tombstone_blocks_an_older_update(
    db: Db, sinks: list[SqliteSink], conflict: dict[str, Any]
) -> None:
    s = open_sink(sinks, db, conflict)
    s.apply([ch(Op.CREATE, i, T0 + 100, at=T0 + 100) for i in (1, 2)], {})
    s.apply([ch(Op.DELETE, 1, T0 + 300)], {})
    r = s.apply([ch(Op.UPDATE, 1, T0 + 200, name="zombie", at=T0 + 200)], {})
    r2 = s.apply([ch(Op.CREATE, 1, T0 + 250, name="zombie", at=T0 + 250)], {})
    assert r.conflicts == r2.conflicts == 1
    assert db.items() == [(2, "n2", 0)]
    s.apply([ch(Op.CREATE, 1, T0 + 400, name="reborn", at=T0 + 400)], {})
    assert db.items() == [(1, "reborn", 0), (2, "n2", 0)]
    # Old tombstones go after the retention, opportunistically.
    s.apply([ch(Op.DELETE, 2, T0 + 500)], {})
    tombstones = "SELECT count(*) FROM _syncline_row_versions WHERE deleted = 1"
    assert db.rows(tombstones)[0][0] >= 1  # by column, row 1's stays too (it blocks only older)
    s.TOMBSTONE_RETENTION, s._next_purge = 0.0, 0.0
    s.apply([], {0: 1})
    assert db.rows(tombstones) == [(0,)]


@pytest.mark.parametrize("column", ["updated_at", "reserved"])
def test_local_delete_leaves_a_tombstone(
    tmp_path: Path, sinks: list[SqliteSink], column: str
) -> None:
    """A delete made on a node (not by syncline) blocks older writes arriving later, there
    and on the other node alike; a newer write brings the row back on both."""
    conflict = {"strategy": "lww", "column": column}
    a, b = Db(tmp_path / "a.db"), Db(tmp_path / "b.db")
    sa, sb = open_sink(sinks, a, conflict), open_sink(sinks, b, conflict)
    for s in (sa, sb):
        s.apply([ch(Op.CREATE, 1, at=T0 + 100_000, reserved=100)], {})
    # concurrently: a bumps row 1 and deletes it; b updates it to an older version
    a.exec(
        f"UPDATE items SET updated_at = '{ts_text(T0 + 300_000)}', reserved = 300",
        "DELETE FROM items WHERE id = 1",
    )
    b.exec(f"UPDATE items SET name = 'b', updated_at = '{ts_text(T0 + 200_000)}', reserved = 200")
    version = T0 + 300_000 if column == "updated_at" else 300
    tomb = "SELECT key, version, deleted FROM _syncline_row_versions"
    # b's older update reaches a: blocked by the local tombstone
    r = sa.apply([ch(Op.UPDATE, 1, name="b", at=T0 + 200_000, reserved=200)], {})
    assert r.conflicts == 1 and a.items() == []
    assert a.rows(tomb) == [('{"id":1}', version, 1)]
    # a's update and delete reach b: the delete (before image) wins over b's older row
    before = {"id": 1, "name": "n1", "reserved": 300, "updated_at": ts_text(T0 + 300_000)}
    sb.apply([ch(Op.UPDATE, 1, at=T0 + 300_000, reserved=300), ch(Op.DELETE, 1, before=before)], {})
    assert b.items() == [] and b.rows(tomb) == [('{"id":1}', version, 1)]
    # a newer insert made on b comes back on a as well
    b.exec(f"INSERT INTO items VALUES (1, 'new', 400, '{ts_text(T0 + 400_000)}', 'local-only')")
    r = sa.apply([ch(Op.CREATE, 1, name="new", reserved=400, at=T0 + 400_000)], {})
    assert r.conflicts == 0 and a.items() == b.items() == [(1, "new", 400)]
    # deletes syncline applies are not recorded twice: the trigger skips its transactions
    late = {"id": 1, "reserved": 500, "updated_at": ts_text(T0 + 500_000)}
    sb.apply([ch(Op.DELETE, 1, before=late)], {})
    want = T0 + 500_000 if column == "updated_at" else 500
    assert b.rows(tomb) == [('{"id":1}', want, 1)]
    assert b.rows("SELECT count(*) FROM _syncline_applying") == [(0,)]


def test_local_delete_tombstone_by_commit_time(db: Db, sinks: list[SqliteSink]) -> None:
    """Without a column a local delete's version is the local clock at the delete."""
    s = open_sink(sinks, db, {"strategy": "lww"})
    s.apply([ch(Op.CREATE, 1, T0)], {})
    start = int(time.time() * 1e6)
    db.exec("DELETE FROM items WHERE id = 1")
    end = int(time.time() * 1e6)
    assert s.apply([ch(Op.UPDATE, 1, start - 10**6, name="old")], {}).conflicts == 1
    ((version,),) = db.rows("SELECT version FROM _syncline_row_versions WHERE deleted = 1")
    assert start - 1000 <= version <= end + 1000
    s.apply([ch(Op.UPDATE, 1, end + 10**6, name="new")], {})
    assert db.items() == [(1, "new", 0)]
    # a restart with a column replaces the trigger, keeping one
    s2 = open_sink(sinks, db, {"strategy": "lww", "column": "reserved"}, ddl=None)
    s2.apply([ch(Op.CREATE, 2, reserved=42)], {})
    db.exec("DELETE FROM items WHERE id = 2")
    s2.apply([], {})  # the next apply turns the raw value into the version
    tomb = "SELECT version FROM _syncline_row_versions WHERE key = '{\"id\":2}'"
    assert db.rows(tomb) == [(42,)]
    trig = (
        "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND name LIKE 'syncline_tomb%'"
    )
    assert db.rows(trig) == [(1,)]


def test_lww_column_value_that_is_no_timestamp(db: Db, sinks: list[SqliteSink]) -> None:
    s = open_sink(sinks, db, {"strategy": "lww", "column": "updated_at"})
    s.apply([ch(Op.CREATE, 1, at=T0)], {0: 1})
    bad = ch(Op.UPDATE, 1, name="x")
    assert bad.event.after is not None
    bad.event.after["updated_at"] = "yesterday"
    with pytest.raises(DataError) as err:
        s.apply([bad], {0: 2})
    assert "yesterday" in str(err.value) and "items" in str(err.value)
    assert s.positions() == {0: 1}


# ---- target_wins ---------------------------------------------------------------------------


def test_target_wins_keeps_local_edits(db: Db, sinks: list[SqliteSink]) -> None:
    s = open_sink(sinks, db, {"strategy": "target_wins"})
    s.apply([ch(Op.CREATE, i) for i in range(1, 6)], {0: 5})
    db.exec(
        "UPDATE items SET name = 'local' WHERE id = 2",
        "UPDATE items SET note = 'changed' WHERE id = 3",
        "DELETE FROM items WHERE id = 4",
    )
    r = s.apply([ch(Op.UPDATE, i, name=f"upd{i}") for i in range(1, 6)], {0: 10})
    assert (r.applied, r.conflicts) == (2, 3)
    assert db.items() == [(1, "upd1", 0), (2, "local", 0), (3, "n3", 0), (5, "upd5", 0)]
    r = s.apply([ch(Op.DELETE, i) for i in (1, 2, 4)], {0: 13})
    assert r.conflicts == 1
    assert db.items() == [(2, "local", 0), (3, "n3", 0), (5, "upd5", 0)]
    s.apply([ch(Op.CREATE, 1, name="again")], {})
    r = s.apply([ch(Op.UPDATE, i, reserved=7, unchanged=["name"]) for i in (2, 5)], {})
    assert r.conflicts == 1
    assert db.items() == [(1, "again", 0), (2, "local", 0), (3, "n3", 0), (5, "upd5", 7)]


def test_target_wins_under_a_concurrent_local_writer(db: Db, sinks: list[SqliteSink]) -> None:
    n = 200
    s = open_sink(sinks, db, {"strategy": "target_wins"})
    s.apply([ch(Op.CREATE, i) for i in range(n)], {})
    touched: dict[int, str] = {}
    stop, wrote = threading.Event(), threading.Event()

    def local_writer() -> None:
        conn = sqlite3.connect(db.path, isolation_level=None, timeout=30)
        rnd = random.Random(7)
        k = 0
        while not stop.is_set() or k < 20:
            i, k = rnd.randrange(n), k + 1
            conn.execute("UPDATE items SET name = ? WHERE id = ?", (f"local{k}", i))
            touched[i] = f"local{k}"
            wrote.set()
            time.sleep(0.001)  # a tight loop would starve the sink of SQLite's one write lock
        conn.close()

    t = threading.Thread(target=local_writer)
    t.start()
    conflicts = 0
    try:
        for b in range(30):
            wrote.wait(10)  # let local writes land between batches
            wrote.clear()
            conflicts += s.apply([ch(Op.UPDATE, i, name=f"b{b}") for i in range(n)], {}).conflicts
    finally:
        stop.set()
        t.join()
    s.apply([ch(Op.UPDATE, i, name="last") for i in range(n)], {})
    rows = dict(db.rows("SELECT id, name FROM items"))
    assert touched and conflicts > 0
    assert rows == {i: touched.get(i, "last") for i in range(n)}


# ---- custom --------------------------------------------------------------------------------


def keep_reserved(event: ChangeEvent, current: dict[str, Any] | None) -> Any:
    """Reserved stock never goes down through replication; name 'ignore' is dropped."""
    assert current is not None
    if event.op == Op.DELETE:
        return "apply" if current["reserved"] == 0 else "skip"
    after = event.after or {}
    if after.get("name") == "ignore":
        return "skip"
    if after.get("reserved", 0) < current["reserved"]:
        return {**after, "reserved": current["reserved"]}
    return "apply"


@pytest.fixture
def importable() -> Iterator[None]:
    here = str(Path(__file__).parent)
    sys.path.insert(0, here)
    sys.modules.setdefault("test_conflicts_sqlite", sys.modules[__name__])
    yield
    sys.path.remove(here)


def test_custom_resolver_never_decreases_reserved(
    db: Db, sinks: list[SqliteSink], importable: None
) -> None:
    rule = {"strategy": "custom", "resolver": "test_conflicts_sqlite:keep_reserved"}
    s = open_sink(sinks, db, rule)
    s.apply([ch(Op.CREATE, 1, reserved=5), ch(Op.CREATE, 2), ch(Op.CREATE, 3, reserved=1)], {})
    db.exec("UPDATE items SET reserved = 8 WHERE id = 2")
    r = s.apply(
        [
            ch(Op.UPDATE, 1, name="one", reserved=3),
            ch(Op.UPDATE, 2, name="two", reserved=9),
            ch(Op.UPDATE, 3, name="ignore", reserved=4),
            ch(Op.CREATE, 4, reserved=2),
            ch(Op.UPDATE, 4, name="four", reserved=1),
            ch(Op.DELETE, 3),
        ],
        {0: 9},
    )
    assert r.conflicts == 4 and s.conflicts_detected == 4
    assert db.items() == [(1, "one", 5), (2, "two", 9), (3, "n3", 1), (4, "four", 2)]
    assert db.rows("SELECT note FROM items WHERE id = 1") == [("local-only",)]
    assert s.positions() == {0: 9}


def test_custom_resolver_that_cannot_be_imported(db: Db) -> None:
    rule = {"conflict": {"strategy": "custom", "resolver": "no_such_mod:fn"}}
    cfg = SqliteSinkConfig(kind="sqlite", path=str(db.path), tables={"items": rule})
    with pytest.raises(ConfigError) as err:
        SqliteSink(cfg, "p")
    assert "no_such_mod:fn" in str(err.value) and "\n" not in str(err.value)


# ---- manual --------------------------------------------------------------------------------


def test_manual_parks_conflicts_and_the_cli_resolves_them(
    db: Db, sinks: list[SqliteSink], tmp_path: Path
) -> None:
    s = open_sink(sinks, db, {"strategy": "manual"})
    s.apply([ch(Op.CREATE, i) for i in (1, 2, 3)], {0: 3})
    db.exec(
        "UPDATE items SET name = 'local2' WHERE id = 2", "UPDATE items SET name = 'l3' WHERE id = 3"
    )
    r = s.apply(
        [
            ch(Op.UPDATE, 1, name="a1"),
            ch(Op.UPDATE, 2, name="a2"),
            ch(Op.UPDATE, 2, name="b2", reserved=4),
            ch(Op.DELETE, 3),
        ],
        {0: 7},
    )
    assert (r.applied, r.conflicts) == (1, 3)
    r = s.apply([ch(Op.UPDATE, 2, name="c2", reserved=5), ch(Op.UPDATE, 1, name="b1")], {0: 9})
    assert (r.applied, r.conflicts) == (1, 1)
    assert db.items() == [(1, "b1", 0), (2, "local2", 0), (3, "l3", 0)]
    s.close()  # the CLI opens the file itself

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"pipelines: [{{name: p, source: {{kind: sqlite, path: {tmp_path}/src.db, tables: [items]}},"
        f" transport: {{path: {tmp_path}/log}}, sink: {{kind: sqlite, path: {db.path},"
        " tables: {items: {conflict: {strategy: manual}}}}}]\n"
    )
    out = syncline("conflicts", "list", str(cfg))
    assert out.returncode == 0, out.stderr
    rows = [ln.split() for ln in out.stdout.strip().splitlines()[1:]]
    assert [(r[0], r[3], r[4]) for r in rows] == [
        ("1", '{"id":2}', "u"),
        ("2", '{"id":2}', "u"),
        ("3", '{"id":3}', "d"),
        ("4", '{"id":2}', "u"),
    ]
    shown = syncline("conflicts", "show", str(cfg), "3")
    assert "incoming deletes the row" in shown.stdout and '"l3"' in shown.stdout
    res = syncline("conflicts", "resolve", str(cfg), "1", "--use", "incoming")
    assert res.returncode == 0, res.stderr
    assert db.items() == [(1, "b1", 0), (2, "c2", 5), (3, "l3", 0)]
    res = syncline("conflicts", "resolve", str(cfg), "3", "--use", "current")
    assert res.returncode == 0, res.stderr
    bad = syncline("conflicts", "resolve", str(cfg), "3", "--use", "current")
    assert bad.returncode == 2 and "already resolved" in bad.stderr
    s2 = open_sink(sinks, db, {"strategy": "manual"}, ddl=None)
    r = s2.apply([ch(Op.UPDATE, 3, name="after"), ch(Op.UPDATE, 2, name="d2")], {0: 11})
    assert (r.applied, r.conflicts) == (2, 0)
    assert db.items() == [(1, "b1", 0), (2, "d2", 0), (3, "after", 0)]
    assert syncline("conflicts", "list", str(cfg)).stdout.strip() == "no open conflicts"
    # A delete that agrees with a local delete, then a new row of that key: no conflict.
    db.exec("DELETE FROM items WHERE id = 1")
    r = s2.apply([ch(Op.DELETE, 1), ch(Op.CREATE, 1, name="new1")], {0: 13})
    assert r.conflicts == 0 and db.items()[0] == (1, "new1", 0)


def test_manual_under_a_concurrent_local_writer(db: Db, sinks: list[SqliteSink]) -> None:
    n = 100
    s = open_sink(sinks, db, {"strategy": "manual"})
    s.apply([ch(Op.CREATE, i) for i in range(n)], {})
    touched: dict[int, str] = {}
    stop, wrote = threading.Event(), threading.Event()

    def local_writer() -> None:
        conn = sqlite3.connect(db.path, isolation_level=None, timeout=30)
        rnd = random.Random(11)
        k = 0
        while not stop.is_set() or k < 10:
            i, k = rnd.randrange(n), k + 1
            conn.execute("UPDATE items SET name = ? WHERE id = ?", (f"local{k}", i))
            touched[i] = f"local{k}"
            wrote.set()
            time.sleep(0.001)  # a tight loop would starve the sink of SQLite's one write lock
        conn.close()

    t = threading.Thread(target=local_writer)
    t.start()
    parked = 0
    try:
        for b in range(20):
            wrote.wait(10)
            wrote.clear()
            parked += s.apply([ch(Op.UPDATE, i, name=f"b{b}") for i in range(n)], {}).conflicts
    finally:
        stop.set()
        t.join()
    rows = dict(db.rows("SELECT id, name FROM items"))
    open_keys = {
        int(k)
        for (k,) in db.rows("SELECT DISTINCT json_extract(key, '$.id') FROM _syncline_conflicts")
    }
    assert parked == db.rows("SELECT count(*) FROM _syncline_conflicts")[0][0] > 0
    assert open_keys <= set(touched)
    for i in range(n):
        if i in open_keys:
            assert rows[i] == touched[i]
        elif i not in touched:
            assert rows[i] == "b19"
    for (cid,) in db.rows("SELECT min(id) FROM _syncline_conflicts GROUP BY key"):
        s.resolve_conflict(int(cid), "incoming")
    rows = dict(db.rows("SELECT id, name FROM items"))
    assert all(rows[i] == "b19" for i in open_keys)


# ---- schema mapping ------------------------------------------------------------------------


def test_missing_columns_ignore(db: Db, sinks: list[SqliteSink]) -> None:
    ddl = "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)"
    with pytest.raises(SchemaError, match="lacks column"):
        open_sink(sinks, db, None, ddl=ddl)
    s = open_sink(sinks, db, None, ddl=None, missing_columns="ignore")
    s.apply([ch(Op.CREATE, 1, reserved=3), ch(Op.UPDATE, 1, name="x", reserved=4)], {})
    lazy = open_sink(sinks, db, None, ddl=None, schema=None, missing_columns="ignore")
    lazy.apply([ch(Op.CREATE, 2, name="two", reserved=1)], {})
    assert db.items("id, name") == [(1, "x"), (2, "two")]
    # A rule still works on the narrower table.
    tw = open_sink(sinks, db, {"strategy": "target_wins"}, ddl=None, missing_columns="ignore")
    tw.apply([ch(Op.UPDATE, 3, name="three")], {})
    assert db.items("id, name") == [(1, "x"), (2, "two"), (3, "three")]


def test_lww_column_must_exist(db: Db, sinks: list[SqliteSink]) -> None:
    with pytest.raises(SchemaError, match="conflict column version"):
        open_sink(sinks, db, {"strategy": "lww", "column": "version"})
