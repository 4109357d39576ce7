"""The sink contract: every SQL sink backend subclasses ``SinkContract`` in a few lines.

A subclass provides three hooks against a fresh, empty target per test:
``make_sink(tables, create_tables, pipeline)`` (an unopened sink),
``exec_target(sql)`` (run DDL/DML on the target, committed) and
``read_target_rows(table, columns)`` (rows ordered by the first column), plus
``mapped_target`` (a target name for the mapping test) and ``audit_ddl()``
(an ``audit`` table fed by row triggers on ``items``). The tests drive the sink
directly with hand-built changes, the way the dispatcher does.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from syncline.errors import DataError, SchemaError, TransientError
from syncline.events import Change, ChangeEvent, Op, SourceInfo
from syncline.schema import Column, TableSchema
from syncline.sinks.base import Sink

PIPELINE = "p"
ITEMS = TableSchema(
    "public",
    "items",
    (Column("id", "integer", nullable=False), Column("name", "text"), Column("qty", "integer")),
    ("id",),
)
ITEMS_DDL = (
    "CREATE TABLE items (id integer PRIMARY KEY, name text, qty integer CHECK (qty >= 0), "
    "note text DEFAULT 'dflt')"
)


def change(
    op: str,
    key: int | None,
    after: dict[str, Any] | None = None,
    before: dict[str, Any] | None = None,
    unchanged: list[str] | None = None,
    table: str = "items",
    schema: str = "public",
) -> Change:
    src = SourceInfo(
        connector="postgresql", name="t", ts_ms=1, db="src", schema=schema, table=table
    )
    ev = ChangeEvent(before=before, after=after, source=src, op=op, ts_ms=1, unchanged=unchanged)
    return Change({} if key is None else {"id": key}, ev)


def ins(i: int, name: str | None = None, qty: int | None = 0, op: str = Op.CREATE) -> Change:
    return change(op, i, {"id": i, "name": name if name is not None else f"n{i}", "qty": qty})


def upd(i: int, unchanged: list[str] | None = None, **cols: Any) -> Change:
    return change(Op.UPDATE, i, {"id": i, **cols}, unchanged=unchanged)


def dele(i: int) -> Change:
    return change(Op.DELETE, i, before={"id": i})


def trunc() -> Change:
    return change(Op.TRUNCATE, None)


class SinkContract(abc.ABC):
    mapped_target: str = "items_copy"

    @abc.abstractmethod
    def make_sink(
        self,
        tables: Mapping[str, Mapping[str, Any]] | None = None,
        create_tables: bool = False,
        pipeline: str = PIPELINE,
    ) -> Sink: ...

    @abc.abstractmethod
    def exec_target(self, sql: str) -> None: ...

    @abc.abstractmethod
    def read_target_rows(self, table: str, columns: str = "*") -> list[tuple[Any, ...]]: ...

    @abc.abstractmethod
    def audit_ddl(self) -> list[str]:
        """Statements creating table ``audit(op)`` with a row per insert/update/delete on items."""

    # ---- helpers ---------------------------------------------------------------------

    @pytest.fixture(autouse=True)
    def _close_sinks(self) -> Iterator[None]:
        self._sinks: list[Sink] = []
        yield
        for s in reversed(self._sinks):
            s.close()

    def sink(
        self,
        schemas: Mapping[str, TableSchema] | None = None,
        ddl: str | None = ITEMS_DDL,
        **kw: Any,
    ) -> Sink:
        """An opened, prepared sink (creating ``items`` on the target first by default)."""
        if ddl:
            self.exec_target(ddl)
        s = self.make_sink(**kw)
        self._sinks.append(s)
        s.open(kw.get("pipeline", PIPELINE))
        s.prepare({ITEMS.table_id: ITEMS} if schemas is None else schemas)
        return s

    def items(self) -> list[tuple[Any, ...]]:
        return self.read_target_rows("items", "id, name, qty")

    # ---- row operations --------------------------------------------------------------

    def test_insert_update_delete(self) -> None:
        s = self.sink()
        r = s.apply([ins(1), ins(2), ins(3, op=Op.READ)], {0: 3})
        assert (r.applied, r.skipped) == (3, 0)
        assert self.items() == [(1, "n1", 0), (2, "n2", 0), (3, "n3", 0)]
        r = s.apply([upd(2, name="two", qty=5), dele(3)], {0: 5})
        assert (r.applied, r.skipped) == (2, 0)
        assert self.items() == [(1, "n1", 0), (2, "two", 5)]
        assert s.positions() == {0: 5}

    def test_extra_target_columns_keep_their_defaults(self) -> None:
        s = self.sink()
        s.apply([ins(1), upd(1, name="x", qty=2)], {})
        assert self.read_target_rows("items", "id, name, note") == [(1, "x", "dflt")]

    def test_nulls_and_awkward_text(self) -> None:
        s = self.sink()
        text = "tab\there, newline\nhere, cr\r, back\\slash \\N \"quoted\" 'single' ünï ☃"
        s.apply([ins(1, name=text, qty=None), ins(2, name="", qty=1)], {})
        assert self.items() == [(1, text, None), (2, "", 1)]

    # ---- folding ---------------------------------------------------------------------

    def test_fold_create_updates_delete_leaves_nothing(self) -> None:
        s = self.sink()
        s.apply([ins(9)], {})
        batch = [ins(1), upd(1, name="a", qty=1), upd(1, name="b", qty=2), dele(1)]
        r = s.apply(batch, {})
        assert (r.applied, r.skipped) == (1, 3)
        assert self.items() == [(9, "n9", 0)]

    def test_fold_delete_then_create_is_an_upsert(self) -> None:
        s = self.sink()
        s.apply([ins(1, name="old", qty=1)], {})
        r = s.apply([dele(1), ins(1, name="new", qty=2)], {})
        assert (r.applied, r.skipped) == (1, 1)
        assert self.items() == [(1, "new", 2)]

    def test_fold_many_updates_last_wins(self) -> None:
        s = self.sink()
        batch = [ins(1), *(upd(1, name=f"v{i}", qty=i) for i in range(50)), ins(2)]
        r = s.apply(batch, {})
        assert (r.applied, r.skipped) == (2, 50)
        assert self.items() == [(1, "v49", 49), (2, "n2", 0)]

    def test_primary_key_change_moves_the_row(self) -> None:
        s = self.sink()
        s.apply([ins(1, name="mover", qty=7), ins(5)], {})
        s.apply([dele(1), ins(2, name="mover", qty=7)], {})
        assert self.items() == [(2, "mover", 7), (5, "n5", 0)]

    def test_unchanged_toast_column_keeps_target_value(self) -> None:
        s = self.sink()
        big = "x" * 5000
        s.apply([ins(1, name=big, qty=1), ins(2, name="short", qty=1)], {})
        r = s.apply([upd(1, unchanged=["name"], qty=2), upd(2, unchanged=["name"], qty=3)], {})
        assert r.applied == 2
        assert self.items() == [(1, big, 2), (2, "short", 3)]

    def test_unchanged_column_taken_from_earlier_image_in_batch(self) -> None:
        # Row 4 is new in this batch: a partial UPDATE alone would find nothing to update.
        s = self.sink()
        r = s.apply([ins(4, name="kept", qty=1), upd(4, unchanged=["name"], qty=2)], {})
        assert (r.applied, r.skipped) == (1, 1)
        assert self.items() == [(4, "kept", 2)]

    def test_partial_updates_chain(self) -> None:
        s = self.sink()
        s.apply([ins(1, name="base", qty=1)], {})
        s.apply([upd(1, unchanged=["name"], qty=2), upd(1, unchanged=["name"], qty=3)], {})
        assert self.items() == [(1, "base", 3)]

    def test_truncate_splits_the_batch(self) -> None:
        s = self.sink()
        s.apply([ins(1), ins(2)], {})
        r = s.apply([ins(3), upd(1, name="gone", qty=9), trunc(), ins(4), upd(4, name="four")], {})
        assert (r.applied, r.skipped) == (4, 1)
        assert self.items() == [(4, "four", None)]

    # ---- exactly once ----------------------------------------------------------------

    def test_positions_round_trip(self) -> None:
        s = self.sink()
        assert s.positions() == {}
        s.apply([], {0: 5, 3: 7})
        assert s.positions() == {0: 5, 3: 7}
        s.apply([ins(1)], {0: 6})
        assert s.positions() == {0: 6, 3: 7}
        s.apply([], {0: 2})  # the dispatcher decides about replays; the sink stores what it gets
        assert s.positions() == {0: 2, 3: 7}
        again = self.sink(ddl=None)
        assert again.positions() == {0: 2, 3: 7}
        other = self.sink(ddl=None, pipeline="q")
        assert other.positions() == {}

    def test_a_stale_second_applier_is_fenced_off(self) -> None:
        first = self.sink()
        zombie = self.sink(ddl=None)
        assert first.positions() == zombie.positions() == {}
        first.apply([ins(1, name="first")], {0: 1})
        with pytest.raises(TransientError, match="another syncline process is applying"):
            zombie.apply([ins(1, name="zombie")], {0: 1})
        assert self.items() == [(1, "first", 0)]
        assert zombie.positions() == {0: 1}  # after re-reading it may go on
        zombie.apply([ins(2)], {0: 2})
        assert self.items() == [(1, "first", 0), (2, "n2", 0)]

    def test_failed_batch_leaves_rows_and_positions_untouched(self) -> None:
        s = self.sink()
        s.apply([ins(1, qty=1)], {0: 1, 1: 4})
        with pytest.raises(DataError) as err:
            s.apply([ins(2, qty=1), upd(1, name="changed", qty=2), ins(3, qty=-1)], {0: 4, 1: 9})
        msg = str(err.value)
        assert "items" in msg and "\n" not in msg
        assert s.positions() == {0: 1, 1: 4}
        assert self.items() == [(1, "n1", 1)]
        # The sink stays usable and the corrected batch goes through.
        s.apply([ins(2, qty=1), upd(1, name="changed", qty=2), ins(3, qty=3)], {0: 4, 1: 9})
        assert s.positions() == {0: 4, 1: 9}
        assert self.items() == [(1, "changed", 2), (2, "n2", 1), (3, "n3", 3)]

    def test_not_null_violation_is_a_data_error(self) -> None:
        s = self.sink(
            ddl="CREATE TABLE items (id integer PRIMARY KEY, name text NOT NULL, qty integer)"
        )
        s.apply([ins(1)], {0: 1})
        with pytest.raises(DataError):
            s.apply([change(Op.CREATE, 2, {"id": 2, "name": None, "qty": 1})], {0: 2})
        assert s.positions() == {0: 1}
        assert self.items() == [(1, "n1", 0)]

    def test_audit_trigger_sees_each_applied_change_once(self) -> None:
        s = self.sink()
        for sql in self.audit_ddl():
            self.exec_target(sql)
        total = 0
        for batch in (
            [ins(1), ins(2), ins(3)],
            [upd(1, name="a"), upd(2, unchanged=["name"], qty=4), dele(3)],
            [ins(4), upd(4, name="b"), upd(4, name="c")],
            [ins(3), dele(2), ins(2)],
        ):
            total += s.apply(batch, {}).applied
        assert total == 3 + 3 + 1 + 2
        with pytest.raises(DataError):
            s.apply([ins(7), ins(8, qty=-1)], {})
        assert self.read_target_rows("audit", "count(*)") == [(total,)]

    # ---- tables ----------------------------------------------------------------------

    def test_table_mapping_to_another_name(self) -> None:
        s = self.sink(
            ddl=None, create_tables=True, tables={"public.items": {"target": self.mapped_target}}
        )
        s.apply([ins(1), ins(2), dele(1)], {0: 3})
        assert self.read_target_rows(self.mapped_target, "id, name, qty") == [(2, "n2", 0)]
        assert s.positions() == {0: 3}

    def test_create_tables_creates_a_keyed_table(self) -> None:
        s = self.sink(ddl=None, create_tables=True)
        s.apply([ins(1), ins(1, name="again")], {})
        assert self.items() == [(1, "again", 0)]
        # The created table passes the strict checks (columns and key) of a later start.
        again = self.sink(ddl=None, create_tables=False)
        again.apply([upd(1, name="third", qty=1)], {})
        assert self.items() == [(1, "third", 1)]

    def test_table_without_schema_is_applied_by_name(self) -> None:
        s = self.sink(schemas={})
        s.apply([ins(1), upd(1, name="u", qty=3)], {})
        s.apply([dele(1), ins(2)], {})
        assert self.items() == [(2, "n2", 0)]

    def test_missing_table_without_create_tables(self) -> None:
        with pytest.raises(SchemaError) as err:
            self.sink(ddl=None, create_tables=False)
        msg = str(err.value)
        assert "items" in msg and "create_tables" in msg and "\n" not in msg

    def test_target_missing_a_column(self) -> None:
        with pytest.raises(SchemaError) as err:
            self.sink(ddl="CREATE TABLE items (id integer PRIMARY KEY, name text)")
        assert "qty" in str(err.value) and "items" in str(err.value)

    def test_target_with_another_key(self) -> None:
        with pytest.raises(SchemaError) as err:
            self.sink(ddl="CREATE TABLE items (id integer, name text PRIMARY KEY, qty integer)")
        assert "primary key" in str(err.value)

    def test_source_without_key(self) -> None:
        keyless = TableSchema("public", "items", ITEMS.columns, ())
        with pytest.raises(SchemaError) as err:
            self.sink(schemas={"public.items": keyless})
        assert "no primary key" in str(err.value)

    def test_check_reports_tables(self) -> None:
        self.exec_target(ITEMS_DDL)
        s = self.make_sink(tables={"public.items": {}})
        self._sinks.append(s)
        notes = s.check()
        assert any("items" in n and "ok" in n for n in notes)
        missing = self.make_sink(tables={"public.nothere": {}})
        self._sinks.append(missing)
        with pytest.raises(SchemaError) as err:
            missing.check()
        assert "nothere" in str(err.value)
