"""Conflict strategies in the PostgreSQL sink: lww, target_wins, custom, manual, missing columns.

The sink is driven directly with hand-built changes (as the dispatcher would), against
a real throwaway PostgreSQL; local writers are plain connections to the target.
"""

from __future__ import annotations

import random
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from e2e_helpers import pg_exec, pg_rows, syncline
from syncline.config import PostgresSinkConfig, parse_config
from syncline.errors import ConfigError, DataError, SchemaError
from syncline.events import Change, ChangeEvent, Op, SourceInfo
from syncline.schema import Column, TableSchema
from syncline.sinks.postgres import PostgresSink

ITEMS = TableSchema(
    "public",
    "items",
    (
        Column("id", "integer", nullable=False),
        Column("name", "text"),
        Column("reserved", "integer"),
        Column("updated_at", "timestamp with time zone"),
    ),
    ("id",),
)
DDL = (
    "CREATE TABLE items (id integer PRIMARY KEY, name text, reserved integer, "
    "updated_at timestamptz, note text DEFAULT 'local-only')"
)
T0 = 1_700_000_000_000_000  # µs


def ts_text(us: int) -> str:
    return f"2023-11-14 22:13:{20 + (us - T0) // 1_000_000:02d}.{(us - T0) % 1_000_000:06d}+00"


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
    """A change of items row ``i`` committed at ``ts`` (µs); ``at`` sets updated_at."""
    src = SourceInfo(
        connector="postgresql",
        name="src",
        ts_ms=ts // 1000,
        ts_us=ts,
        db="src",
        schema="public",
        table="items",
    )
    after = None
    if op != Op.DELETE:
        after = {"id": i, "name": name if name is not None else f"n{i}", "reserved": reserved}
        after["updated_at"] = ts_text(at) if at is not None else None
        if unchanged:
            for c in unchanged:
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


def items(dsn: str, cols: str = "id, name, reserved") -> list[tuple[Any, ...]]:
    return pg_rows(dsn, f"SELECT {cols} FROM items ORDER BY id")


@pytest.fixture
def sinks() -> Iterator[list[PostgresSink]]:
    made: list[PostgresSink] = []
    yield made
    for s in made:
        s.close()


def open_sink(
    made: list[PostgresSink],
    dsn: str,
    conflict: dict[str, Any] | None,
    ddl: str | None = DDL,
    schema: TableSchema | None = ITEMS,
    **opts: Any,
) -> PostgresSink:
    if ddl:
        pg_exec(dsn, ddl)
    table: dict[str, Any] = dict(opts)
    if conflict is not None:
        table["conflict"] = conflict
    cfg = PostgresSinkConfig(kind="postgres", dsn=dsn, tables={"public.items": table})
    sink = PostgresSink(cfg, "p")
    made.append(sink)
    sink.open("p")
    sink.prepare({"public.items": schema} if schema is not None else {})
    return sink


# ---- lww -----------------------------------------------------------------------------------


def test_lww_by_column_keeps_the_newer_row(pg_target_dsn: str, sinks: list[PostgresSink]) -> None:
    s = open_sink(sinks, pg_target_dsn, {"strategy": "lww", "column": "updated_at"})
    s.apply([ch(Op.CREATE, 1, at=T0 + 2_000_000), ch(Op.CREATE, 2, at=T0)], {0: 2})
    # An older update of row 1 loses; a newer update of row 2 wins; both in one batch.
    r = s.apply(
        [
            ch(Op.UPDATE, 1, name="stale", at=T0 + 1_000_000),
            ch(Op.UPDATE, 2, name="fresh", at=T0 + 1_000_000),
        ],
        {0: 4},
    )
    assert (r.applied, r.conflicts) == (1, 1)
    assert s.conflicts_detected == 1
    assert items(pg_target_dsn) == [(1, "n1", 0), (2, "fresh", 0)]
    # A local write with a newer updated_at beats a later-arriving but older incoming change.
    pg_exec(
        pg_target_dsn,
        f"UPDATE items SET name = 'local', updated_at = '{ts_text(T0 + 9_000_000)}' WHERE id = 2",
    )
    r = s.apply([ch(Op.UPDATE, 2, name="late", at=T0 + 5_000_000)], {0: 5})
    assert r.conflicts == 1
    # An older delete loses too; a newer one wins.
    r = s.apply([ch(Op.DELETE, 1, before={"id": 1, "updated_at": ts_text(T0 + 1)})], {0: 6})
    assert r.conflicts == 1
    assert items(pg_target_dsn) == [(1, "n1", 0), (2, "local", 0)]
    s.apply([ch(Op.DELETE, 1, before={"id": 1, "updated_at": ts_text(T0 + 3_000_000)})], {0: 7})
    assert items(pg_target_dsn) == [(2, "local", 0)]
    assert s.positions() == {0: 7}


def test_lww_by_integer_column(pg_target_dsn: str, sinks: list[PostgresSink]) -> None:
    ddl = "CREATE TABLE items (id integer PRIMARY KEY, name text, reserved integer, updated_at timestamptz)"
    s = open_sink(sinks, pg_target_dsn, {"strategy": "lww", "column": "reserved"}, ddl=ddl)
    s.apply([ch(Op.CREATE, 1, reserved=5)], {})
    r = s.apply(
        [ch(Op.UPDATE, 1, name="lower", reserved=4), ch(Op.UPDATE, 1, name="x", reserved=3)], {}
    )
    assert r.conflicts == 1 and items(pg_target_dsn) == [(1, "n1", 5)]
    s.apply([ch(Op.UPDATE, 1, name="higher", reserved=6)], {})
    assert items(pg_target_dsn) == [(1, "higher", 6)]
    # A delete with only the key deletes the version it finds (commit times are not in the
    # column's units): its tombstone holds that version, so a re-insert with a newer one
    # comes back and a late older update does not.
    s.apply([ch(Op.DELETE, 1, T0 + 10**9)], {})
    assert pg_rows(pg_target_dsn, "SELECT version FROM syncline.row_versions") == [(6,)]
    assert s.apply([ch(Op.UPDATE, 1, name="late", reserved=5)], {}).conflicts == 1
    s.apply([ch(Op.CREATE, 1, name="again", reserved=7)], {})
    assert items(pg_target_dsn) == [(1, "again", 7)]


def test_lww_by_commit_time(pg_target_dsn: str, sinks: list[PostgresSink]) -> None:
    s = open_sink(sinks, pg_target_dsn, {"strategy": "lww"})
    s.apply([ch(Op.CREATE, 1, T0 + 200), ch(Op.CREATE, 2, T0 + 200)], {})
    r = s.apply(
        [ch(Op.UPDATE, 1, T0 + 100, name="older"), ch(Op.UPDATE, 2, T0 + 300, name="newer")], {}
    )
    assert (r.applied, r.conflicts) == (1, 1)
    assert items(pg_target_dsn) == [(1, "n1", 0), (2, "newer", 0)]
    versions = pg_rows(
        pg_target_dsn,
        "SELECT key->>'id', version, deleted_at IS NOT NULL FROM syncline.row_versions ORDER BY 1",
    )
    assert versions == [("1", T0 + 200, False), ("2", T0 + 300, False)]
    # Partial (unchanged TOAST) updates obey the same rule.
    r = s.apply([ch(Op.UPDATE, 2, T0 + 250, reserved=9, unchanged=["name"])], {})
    assert r.conflicts == 1
    s.apply([ch(Op.UPDATE, 2, T0 + 400, reserved=9, unchanged=["name"])], {})
    assert items(pg_target_dsn) == [(1, "n1", 0), (2, "newer", 9)]


@pytest.mark.parametrize(
    "conflict", [{"strategy": "lww"}, {"strategy": "lww", "column": "updated_at"}]
)
def test_lww_tie_break_is_the_same_on_every_replica(
    new_pg_db: Any, sinks: list[PostgresSink], conflict: dict[str, Any]
) -> None:
    """Two replicas get two changes with equal versions in opposite orders and end equal."""
    a = ch(Op.UPDATE, 1, T0 + 500, name="from-a", reserved=1, at=T0 + 500)
    b = ch(Op.UPDATE, 1, T0 + 500, name="from-b", reserved=2, at=T0 + 500)
    finals, lost = [], 0
    for order in ([a, b], [b, a]):
        dsn = new_pg_db()
        s = open_sink(sinks, dsn, conflict)
        s.apply([ch(Op.CREATE, 1, T0, at=T0)], {})
        lost += sum(s.apply([c], {}).conflicts for c in order)
        finals.append(items(dsn, "id, name, reserved, updated_at"))
    assert finals[0] == finals[1]
    assert lost == 1  # the same change lost on one replica (arriving second), won on the other
    # A delete with the same version as an update wins, whichever comes first.
    for first_delete in (True, False):
        dsn = new_pg_db()
        s = open_sink(sinks, dsn, conflict)
        s.apply([ch(Op.CREATE, 1, T0, at=T0)], {})
        d = ch(Op.DELETE, 1, T0 + 500, before={"id": 1, "updated_at": ts_text(T0 + 500)})
        for c in [d, a] if first_delete else [a, d]:
            s.apply([c], {})
        assert items(dsn) == []


@pytest.mark.parametrize(
    "conflict", [{"strategy": "lww"}, {"strategy": "lww", "column": "updated_at"}]
)
def test_tombstone_blocks_an_older_update(
    pg_target_dsn: str, sinks: list[PostgresSink], conflict: dict[str, Any]
) -> None:
    s = open_sink(sinks, pg_target_dsn, conflict)
    s.apply([ch(Op.CREATE, 1, T0 + 100, at=T0 + 100), ch(Op.CREATE, 2, T0 + 100, at=T0 + 100)], {})
    s.apply([ch(Op.DELETE, 1, T0 + 300)], {})  # no before image: the commit time is its version
    # A late update and a late insert that happened before the delete must not bring it back.
    r = s.apply([ch(Op.UPDATE, 1, T0 + 200, name="zombie", at=T0 + 200)], {})
    r2 = s.apply([ch(Op.CREATE, 1, T0 + 250, name="zombie", at=T0 + 250)], {})
    assert r.conflicts == r2.conflicts == 1
    assert items(pg_target_dsn) == [(2, "n2", 0)]
    # A delete of a row the target never had leaves a tombstone as well.
    s.apply([ch(Op.DELETE, 7, T0 + 300)], {})
    s.apply([ch(Op.CREATE, 7, T0 + 200, at=T0 + 200)], {})
    assert items(pg_target_dsn) == [(2, "n2", 0)]
    # Something newer than the delete does come back.
    s.apply([ch(Op.CREATE, 1, T0 + 400, name="reborn", at=T0 + 400)], {})
    assert items(pg_target_dsn) == [(1, "reborn", 0), (2, "n2", 0)]


@pytest.mark.parametrize("column", ["updated_at", "reserved"])
def test_local_delete_leaves_a_tombstone(
    new_pg_db: Any, sinks: list[PostgresSink], column: str
) -> None:
    """A delete made on a node (not by syncline) blocks older writes arriving later, there
    and on the other node alike; a newer write brings the row back on both."""
    conflict = {"strategy": "lww", "column": column}
    a, b = new_pg_db(), new_pg_db()
    sa, sb = open_sink(sinks, a, conflict), open_sink(sinks, b, conflict)
    for s in (sa, sb):
        s.apply([ch(Op.CREATE, 1, at=T0 + 100_000, reserved=100)], {})
    # concurrently: a bumps row 1 and deletes it; b updates it to an older version
    at_a, at_b = (T0 + 300_000, 300), (T0 + 200_000, 200)
    pg_exec(a, f"UPDATE items SET updated_at = '{ts_text(at_a[0])}', reserved = {at_a[1]}",
            "DELETE FROM items WHERE id = 1")  # fmt: skip
    pg_exec(
        b, f"UPDATE items SET name = 'b', updated_at = '{ts_text(at_b[0])}', reserved = {at_b[1]}"
    )
    version = T0 + 300_000 if column == "updated_at" else 300
    tomb = "SELECT key->>'id', version, deleted_at IS NOT NULL FROM syncline.row_versions"
    assert pg_rows(a, tomb) == [("1", version, True)]
    # b's older update reaches a: blocked by the local tombstone
    r = sa.apply([ch(Op.UPDATE, 1, name="b", at=at_b[0], reserved=at_b[1])], {})
    assert r.conflicts == 1 and items(a) == []
    # a's update and delete reach b: the delete (before image) wins over b's older row
    before = {"id": 1, "name": "n1", "reserved": at_a[1], "updated_at": ts_text(at_a[0])}
    sb.apply([ch(Op.UPDATE, 1, at=at_a[0], reserved=at_a[1]), ch(Op.DELETE, 1, before=before)], {})
    assert items(b) == [] and pg_rows(b, tomb) == [("1", version, True)]
    # a newer insert made on b comes back on a as well
    pg_exec(b, f"INSERT INTO items VALUES (1, 'new', 400, '{ts_text(T0 + 400_000)}')")
    r = sa.apply([ch(Op.CREATE, 1, name="new", reserved=400, at=T0 + 400_000)], {})
    assert r.conflicts == 0 and items(a) == items(b) == [(1, "new", 400)]
    # deletes syncline applies are not recorded twice: the trigger skips its transactions
    sb.apply(
        [ch(Op.DELETE, 1, before={"id": 1, "reserved": 500, "updated_at": ts_text(T0 + 500_000)})],
        {},
    )
    want_v = T0 + 500_000 if column == "updated_at" else 500
    assert pg_rows(b, tomb) == [("1", want_v, True)]


def test_local_delete_tombstone_by_commit_time(
    pg_target_dsn: str, sinks: list[PostgresSink]
) -> None:
    """Without a column a local delete's version is the local clock at the delete."""
    s = open_sink(sinks, pg_target_dsn, {"strategy": "lww"})
    s.apply([ch(Op.CREATE, 1, T0)], {})
    pg_exec(pg_target_dsn, "DELETE FROM items WHERE id = 1")
    (now_us,) = pg_rows(pg_target_dsn, "SELECT (extract(epoch FROM now()) * 1000000)::bigint")[0]
    ((version,),) = pg_rows(
        pg_target_dsn, "SELECT version FROM syncline.row_versions WHERE deleted_at IS NOT NULL"
    )
    assert T0 < version <= now_us
    assert s.apply([ch(Op.UPDATE, 1, version - 1, name="old")], {}).conflicts == 1
    s.apply([ch(Op.UPDATE, 1, now_us + 10**6, name="new")], {})
    assert items(pg_target_dsn) == [(1, "new", 0)]
    # a restart with a column replaces the trigger's function, keeping one trigger
    s2 = open_sink(sinks, pg_target_dsn, {"strategy": "lww", "column": "reserved"}, ddl=None)
    s2.apply([ch(Op.CREATE, 2, reserved=42)], {})
    pg_exec(pg_target_dsn, "DELETE FROM items WHERE id = 2")
    tomb = "SELECT version FROM syncline.row_versions WHERE key->>'id' = '2'"
    assert pg_rows(pg_target_dsn, tomb) == [(42,)]
    trig = "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'syncline_tombstone_%'"
    assert pg_rows(pg_target_dsn, trig) == [(1,)]


def test_old_tombstones_are_purged(pg_target_dsn: str, sinks: list[PostgresSink]) -> None:
    s = open_sink(sinks, pg_target_dsn, {"strategy": "lww"})
    s.apply([ch(Op.CREATE, 1, T0), ch(Op.DELETE, 2, T0)], {})
    count = "SELECT count(*) FROM syncline.row_versions WHERE deleted_at IS NOT NULL"
    assert pg_rows(pg_target_dsn, count) == [(1,)]
    s.apply([], {0: 1})  # within the purge interval: nothing happens
    assert pg_rows(pg_target_dsn, count) == [(1,)]
    s.TOMBSTONE_RETENTION = 0.0
    s._next_purge = 0.0  # the next apply is due to purge
    s.apply([], {0: 2})
    assert pg_rows(pg_target_dsn, count) == [(0,)]
    assert pg_rows(pg_target_dsn, "SELECT count(*) FROM syncline.row_versions") == [(1,)]


# ---- target_wins ---------------------------------------------------------------------------


def test_target_wins_keeps_local_edits(pg_target_dsn: str, sinks: list[PostgresSink]) -> None:
    s = open_sink(sinks, pg_target_dsn, {"strategy": "target_wins"})
    s.apply([ch(Op.CREATE, i) for i in range(1, 6)], {0: 5})
    pg_exec(
        pg_target_dsn,
        "UPDATE items SET name = 'local' WHERE id = 2",
        "UPDATE items SET note = 'changed' WHERE id = 3",  # a column syncline does not send
        "DELETE FROM items WHERE id = 4",
    )
    r = s.apply([ch(Op.UPDATE, i, name=f"upd{i}") for i in range(1, 6)], {0: 10})
    assert (r.applied, r.conflicts) == (2, 3)
    assert items(pg_target_dsn) == [(1, "upd1", 0), (2, "local", 0), (3, "n3", 0), (5, "upd5", 0)]
    # Deletes follow the same rule; untouched rows (and those syncline wrote last) go.
    r = s.apply([ch(Op.DELETE, i) for i in (1, 2, 4)], {0: 13})
    assert r.conflicts == 1
    assert items(pg_target_dsn) == [(2, "local", 0), (3, "n3", 0), (5, "upd5", 0)]
    # A row deleted by syncline can be created again; partial updates obey the rule too.
    s.apply([ch(Op.CREATE, 1, name="again")], {})
    r = s.apply([ch(Op.UPDATE, i, reserved=7, unchanged=["name"]) for i in (2, 5)], {})
    assert r.conflicts == 1
    assert items(pg_target_dsn) == [(1, "again", 0), (2, "local", 0), (3, "n3", 0), (5, "upd5", 7)]


def test_target_wins_under_a_concurrent_local_writer(
    pg_target_dsn: str, sinks: list[PostgresSink]
) -> None:
    """Rows a local writer touches keep its last value; every other row gets the last batch's."""
    n = 200
    s = open_sink(sinks, pg_target_dsn, {"strategy": "target_wins"})
    s.apply([ch(Op.CREATE, i) for i in range(n)], {})
    touched: dict[int, str] = {}
    stop, wrote = threading.Event(), threading.Event()

    def local_writer() -> None:
        conn = psycopg2.connect(pg_target_dsn)
        conn.autocommit = True
        rnd = random.Random(7)
        k = 0
        with conn.cursor() as cur:
            while not stop.is_set() or k < 20:
                i, k = rnd.randrange(n), k + 1
                cur.execute("UPDATE items SET name = %s WHERE id = %s", (f"local{k}", i))
                touched[i] = f"local{k}"
                wrote.set()
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
    rows = dict(pg_rows(pg_target_dsn, "SELECT id, name FROM items"))
    assert touched and conflicts > 0
    assert rows == {i: touched.get(i, "last") for i in range(n)}


# ---- custom --------------------------------------------------------------------------------


def keep_reserved(event: ChangeEvent, current: dict[str, Any] | None) -> Any:
    """Business rule: reserved stock never goes down through replication; 'ignore' is dropped."""
    assert current is not None
    if event.op == Op.DELETE:
        return "apply" if current["reserved"] == 0 else "skip"
    after = event.after or {}
    if after.get("name") == "ignore":
        return "skip"
    if after.get("reserved", 0) < current["reserved"]:
        return {**after, "reserved": current["reserved"]}
    return "apply"


def bad_resolver(event: ChangeEvent, current: dict[str, Any] | None) -> Any:
    return 42


@pytest.fixture
def importable() -> Iterator[None]:
    """Resolvers are named ``module:function``: make this module importable by its name."""
    here = str(Path(__file__).parent)
    sys.path.insert(0, here)
    sys.modules.setdefault("test_conflicts_pg", sys.modules[__name__])
    yield
    sys.path.remove(here)


def test_custom_resolver_never_decreases_reserved(
    pg_target_dsn: str, sinks: list[PostgresSink], importable: None
) -> None:
    s = open_sink(
        sinks, pg_target_dsn, {"strategy": "custom", "resolver": "test_conflicts_pg:keep_reserved"}
    )
    s.apply(
        [ch(Op.CREATE, 1, reserved=5), ch(Op.CREATE, 2, reserved=0), ch(Op.CREATE, 3, reserved=1)],
        {0: 3},
    )
    pg_exec(pg_target_dsn, "UPDATE items SET reserved = 8 WHERE id = 2")  # reserved locally
    r = s.apply(
        [
            ch(Op.UPDATE, 1, name="one", reserved=3),  # lower: merged, keeps 5
            ch(Op.UPDATE, 2, name="two", reserved=9),  # higher than the local 8: applied
            ch(Op.UPDATE, 3, name="ignore", reserved=4),  # skipped
            ch(Op.CREATE, 4, reserved=2),  # new key: no resolver call
            ch(Op.UPDATE, 4, name="four", reserved=1),  # the key exists now (from this batch)
            ch(Op.DELETE, 3),  # reserved 1 > 0: skipped
        ],
        {0: 9},
    )
    assert r.conflicts == 4
    assert s.conflicts_detected == 4
    assert items(pg_target_dsn) == [(1, "one", 5), (2, "two", 9), (3, "n3", 1), (4, "four", 2)]
    assert s.positions() == {0: 9}
    # The note column (not sent) keeps its value through a merged row.
    assert pg_rows(pg_target_dsn, "SELECT note FROM items WHERE id = 1") == [("local-only",)]


def test_custom_resolver_errors(
    pg_target_dsn: str, sinks: list[PostgresSink], importable: None
) -> None:
    cfg = PostgresSinkConfig(
        kind="postgres",
        dsn=pg_target_dsn,
        tables={"public.items": {"conflict": {"strategy": "custom", "resolver": "no_such_mod:fn"}}},
    )
    with pytest.raises(ConfigError) as err:
        PostgresSink(cfg, "p")
    assert "no_such_mod:fn" in str(err.value) and "cannot be imported" in str(err.value)
    missing_fn = {"conflict": {"strategy": "custom", "resolver": "test_conflicts_pg:nope"}}
    cfg = PostgresSinkConfig(
        kind="postgres", dsn=pg_target_dsn, tables={"public.items": missing_fn}
    )
    with pytest.raises(ConfigError, match="has no nope"):
        PostgresSink(cfg, "p")
    s = open_sink(
        sinks, pg_target_dsn, {"strategy": "custom", "resolver": "test_conflicts_pg:bad_resolver"}
    )
    s.apply([ch(Op.CREATE, 1)], {0: 1})
    with pytest.raises(DataError) as derr:
        s.apply([ch(Op.UPDATE, 1, name="x")], {0: 2})
    assert "bad_resolver" in str(derr.value) and "expected 'apply', 'skip' or a dict" in str(
        derr.value
    )
    assert s.positions() == {0: 1}


# ---- manual --------------------------------------------------------------------------------


def write_cfg(tmp_path: Path, dsn: str) -> Path:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"""pipelines:
  - name: p
    source: {{kind: sqlite, path: {tmp_path}/src.db, tables: [items]}}
    transport: {{path: {tmp_path}/log}}
    sink:
      kind: postgres
      dsn: "{dsn}"
      tables:
        public.items: {{conflict: {{strategy: manual}}}}
"""
    )
    return cfg


def test_manual_parks_conflicts_and_the_cli_resolves_them(
    pg_target_dsn: str, sinks: list[PostgresSink], tmp_path: Path
) -> None:
    s = open_sink(sinks, pg_target_dsn, {"strategy": "manual"})
    s.apply([ch(Op.CREATE, i) for i in (1, 2, 3)], {0: 3})
    pg_exec(
        pg_target_dsn,
        "UPDATE items SET name = 'local2' WHERE id = 2",
        "UPDATE items SET name = 'local3' WHERE id = 3",
    )
    r = s.apply(
        [
            ch(Op.UPDATE, 1, name="a1"),
            ch(Op.UPDATE, 2, name="a2"),
            ch(Op.UPDATE, 2, name="b2", reserved=4),
            ch(Op.UPDATE, 3, name="a3"),
        ],
        {0: 7},
    )
    assert (r.applied, r.conflicts) == (1, 3)
    # A later change of a key with an open conflict is parked behind it, in order.
    r = s.apply([ch(Op.UPDATE, 2, name="c2", reserved=5), ch(Op.UPDATE, 1, name="b1")], {0: 9})
    assert (r.applied, r.conflicts) == (1, 1)
    assert items(pg_target_dsn) == [(1, "b1", 0), (2, "local2", 0), (3, "local3", 0)]
    assert s.positions() == {0: 9}

    cfg = write_cfg(tmp_path, pg_target_dsn)
    out = syncline("conflicts", "list", str(cfg))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].split() == ["ID", "PIPELINE", "TABLE", "KEY", "OP", "STATUS", "DETECTED"]
    rows = [ln.split() for ln in lines[1:]]
    assert [(r[0], r[2], r[3], r[5]) for r in rows] == [
        ("1", "public.items", '{"id":2}', "open"),
        ("2", "public.items", '{"id":2}', "open"),
        ("3", "public.items", '{"id":3}', "open"),
        ("4", "public.items", '{"id":2}', "open"),
    ]
    shown = syncline("conflicts", "show", str(cfg), "1")
    assert shown.returncode == 0, shown.stderr
    assert '* name: "local2" -> "a2"' in shown.stdout
    assert "conflict 1: open" in shown.stdout

    # incoming: the chosen change and then the key's later parked ones are applied, in order.
    res = syncline("conflicts", "resolve", str(cfg), "1", "--use", "incoming")
    assert res.returncode == 0, res.stderr
    assert "then applied later parked change(s) 2, 4" in res.stdout
    assert items(pg_target_dsn) == [(1, "b1", 0), (2, "c2", 5), (3, "local3", 0)]
    # current: the target's row stays and becomes syncline's, so later changes apply again.
    res = syncline("conflicts", "resolve", str(cfg), "3", "--use", "current")
    assert res.returncode == 0, res.stderr
    r = s.apply([ch(Op.UPDATE, 3, name="after"), ch(Op.UPDATE, 2, name="d2")], {0: 11})
    assert (r.applied, r.conflicts) == (2, 0)
    assert items(pg_target_dsn) == [(1, "b1", 0), (2, "d2", 0), (3, "after", 0)]
    assert syncline("conflicts", "list", str(cfg)).stdout.strip() == "no open conflicts"
    everything = syncline("conflicts", "list", str(cfg), "--all", "-p", "p").stdout
    assert everything.count("resolved") == 4

    # Bad paths: one line on stderr, exit 2.
    for args in (
        ["resolve", str(cfg), "1", "--use", "incoming"],
        ["resolve", str(cfg), "99", "--use", "current"],
        ["resolve", str(cfg), "2", "--use", "mine"],
        ["show", str(cfg), "99"],
        ["list", str(cfg), "-p", "nope"],
    ):
        bad = syncline("conflicts", *args)
        assert bad.returncode == 2, (args, bad.stdout, bad.stderr)
        assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    assert (
        "already resolved"
        in syncline("conflicts", "resolve", str(cfg), "1", "--use", "incoming").stderr
    )


def test_manual_locally_deleted_row_and_delete_conflicts(
    pg_target_dsn: str, sinks: list[PostgresSink]
) -> None:
    s = open_sink(sinks, pg_target_dsn, {"strategy": "manual"})
    s.apply([ch(Op.CREATE, i) for i in (1, 2, 3)], {})
    pg_exec(
        pg_target_dsn,
        "DELETE FROM items WHERE id IN (1, 2)",
        "UPDATE items SET name = 'l3' WHERE id = 3",
    )
    # update of a locally deleted row: parked; delete of one: agrees, applied; delete of a
    # locally changed row: parked.
    r = s.apply([ch(Op.UPDATE, 1, name="u1"), ch(Op.DELETE, 2), ch(Op.DELETE, 3)], {})
    assert (r.applied, r.conflicts) == (1, 2)
    parked = pg_rows(
        pg_target_dsn,
        "SELECT key::text, incoming->>'op', current->>'name' FROM syncline.conflicts ORDER BY id",
    )
    assert parked == [('{"id": 1}', "u", None), ('{"id": 3}', "d", "l3")]
    assert s.resolve_conflict(2, "incoming") == [2]
    assert items(pg_target_dsn) == []
    # A delete that agrees with a local delete, then a new row of that key: no conflict.
    s.apply([ch(Op.CREATE, 5)], {})
    pg_exec(pg_target_dsn, "DELETE FROM items WHERE id = 5")
    r = s.apply([ch(Op.DELETE, 5), ch(Op.CREATE, 5, name="new5")], {})
    assert r.conflicts == 0 and items(pg_target_dsn) == [(5, "new5", 0)]


def test_manual_under_a_concurrent_local_writer(
    pg_target_dsn: str, sinks: list[PostgresSink]
) -> None:
    """Nothing is lost: each change is either applied or parked, and parked ones resolve."""
    n = 100
    s = open_sink(sinks, pg_target_dsn, {"strategy": "manual"})
    s.apply([ch(Op.CREATE, i) for i in range(n)], {})
    touched: dict[int, str] = {}
    stop, wrote = threading.Event(), threading.Event()

    def local_writer() -> None:
        conn = psycopg2.connect(pg_target_dsn)
        conn.autocommit = True
        rnd = random.Random(11)
        k = 0
        with conn.cursor() as cur:
            while not stop.is_set() or k < 10:
                i, k = rnd.randrange(n), k + 1
                cur.execute("UPDATE items SET name = %s WHERE id = %s", (f"local{k}", i))
                touched[i] = f"local{k}"
                wrote.set()
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
    rows = dict(pg_rows(pg_target_dsn, "SELECT id, name FROM items"))
    open_keys = {
        int(k)
        for (k,) in pg_rows(pg_target_dsn, "SELECT DISTINCT key->>'id' FROM syncline.conflicts")
    }
    assert parked == pg_rows(pg_target_dsn, "SELECT count(*) FROM syncline.conflicts")[0][0] > 0
    assert open_keys <= set(touched)
    for i in range(n):
        if i in open_keys:
            assert rows[i] == touched[i]  # parked keys keep the local row
        elif i not in touched:
            assert rows[i] == "b19"
    # Resolving every key's first conflict with incoming brings it to the last batch's value.
    firsts = pg_rows(pg_target_dsn, "SELECT min(id) FROM syncline.conflicts GROUP BY key")
    for (cid,) in firsts:
        s.resolve_conflict(int(cid), "incoming")
    rows = dict(pg_rows(pg_target_dsn, "SELECT id, name FROM items"))
    assert all(rows[i] == "b19" for i in open_keys)


# ---- schema mapping and config -------------------------------------------------------------


def test_missing_columns_ignore(pg_target_dsn: str, sinks: list[PostgresSink]) -> None:
    ddl = "CREATE TABLE items (id integer PRIMARY KEY, name text)"
    with pytest.raises(SchemaError, match="lacks column"):
        open_sink(sinks, pg_target_dsn, None, ddl=ddl)
    s = open_sink(sinks, pg_target_dsn, None, ddl=None, missing_columns="ignore")
    s.apply([ch(Op.CREATE, 1, reserved=3), ch(Op.UPDATE, 1, name="x", reserved=4)], {})
    assert items(pg_target_dsn, "id, name") == [(1, "x")]
    # Without a source schema (plan built from the rows) the extra columns are dropped too.
    lazy = open_sink(sinks, pg_target_dsn, None, ddl=None, schema=None, missing_columns="ignore")
    lazy.apply([ch(Op.CREATE, 2, name="two", reserved=1)], {})
    assert items(pg_target_dsn, "id, name") == [(1, "x"), (2, "two")]
    # The key cannot be ignored away.
    keyless = TableSchema(
        "public", "items", (Column("code", "text"), Column("name", "text")), ("code",)
    )
    with pytest.raises(SchemaError):
        open_sink(sinks, pg_target_dsn, None, ddl=None, schema=keyless, missing_columns="ignore")


def test_lww_column_must_fit(pg_target_dsn: str, sinks: list[PostgresSink]) -> None:
    with pytest.raises(SchemaError) as err:
        open_sink(sinks, pg_target_dsn, {"strategy": "lww", "column": "name"})
    assert "name" in str(err.value) and "timestamp, date or integer" in str(err.value)
    with pytest.raises(SchemaError, match="conflict column version"):
        open_sink(sinks, pg_target_dsn, {"strategy": "lww", "column": "version"}, ddl=None)


@pytest.mark.parametrize(
    ("conflict", "message"),
    [
        ({"strategy": "custom"}, "strategy custom needs resolver: module:function"),
        ({"strategy": "lww", "resolver": "m:f"}, "resolver only applies to strategy custom"),
        ({"strategy": "target_wins", "column": "x"}, "column only applies to strategy lww"),
        ({"strategy": "newest"}, "conflict.strategy"),
        ({"strategy": "custom", "resolver": "not a ref"}, "conflict.resolver"),
    ],
)
def test_invalid_conflict_config_is_rejected(conflict: dict[str, Any], message: str) -> None:
    data = {
        "pipelines": [
            {
                "name": "p",
                "source": {"kind": "sqlite", "path": "x.db", "tables": ["items"]},
                "sink": {
                    "kind": "postgres",
                    "dsn": "postgresql://h/db",
                    "tables": {"items": {"conflict": conflict}},
                },
            }
        ]
    }
    with pytest.raises(ConfigError) as err:
        parse_config(data, "c.yaml")
    msg = str(err.value)
    assert message in msg and "pipelines[0].sink.tables" in msg and "\n" not in msg
