"""The SQLite sink: the sink contract, folding rules, and what only SQLite needs."""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from contract.sink_contract import (
    ITEMS,
    PIPELINE,
    SinkContract,
    change,
    dele,
    ins,
    trunc,
    upd,
)
from syncline.config import SqliteSinkConfig
from syncline.errors import DataError, StorageError, TransientError
from syncline.events import Op
from syncline.schema import Column, TableSchema
from syncline.sinks.base import Sink
from syncline.sinks.sql import TableOps, Truncate, fold, map_type
from syncline.sinks.sqlite import SqliteSink


def make(path: Path, pipeline: str = PIPELINE, **cfg: Any) -> SqliteSink:
    return SqliteSink(SqliteSinkConfig(kind="sqlite", path=str(path), **cfg), pipeline)


class TestSqliteSinkContract(SinkContract):
    @pytest.fixture(autouse=True)
    def _target(self, tmp_path: Path) -> None:
        self.path = tmp_path / "target.db"

    def make_sink(
        self,
        tables: Mapping[str, Mapping[str, Any]] | None = None,
        create_tables: bool = False,
        pipeline: str = PIPELINE,
    ) -> Sink:
        return make(self.path, pipeline, tables=dict(tables or {}), create_tables=create_tables)

    def exec_target(self, sql: str) -> None:
        with sqlite3.connect(self.path) as conn:
            conn.execute(sql)
        conn.close()

    def read_target_rows(self, table: str, columns: str = "*") -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.path)
        try:
            return conn.execute(f"SELECT {columns} FROM {table} ORDER BY 1").fetchall()
        finally:
            conn.close()

    def audit_ddl(self) -> list[str]:
        return ["CREATE TABLE audit (n INTEGER PRIMARY KEY, op TEXT)"] + [
            f"CREATE TRIGGER items_{op} AFTER {op} ON items BEGIN "
            f"INSERT INTO audit (op) VALUES ('{op}'); END"
            for op in ("INSERT", "UPDATE", "DELETE")
        ]


# ---- folding (pure) ---------------------------------------------------------------------


def test_fold_orders_steps_and_counts() -> None:
    other = change(Op.CREATE, 1, {"id": 1}, table="other")
    steps, result = fold([ins(1), other, upd(1, name="x"), trunc(), ins(2), dele(9)])
    assert [type(s).__name__ for s in steps] == ["TableOps", "Truncate", "TableOps", "TableOps"]
    first, _, other_ops, after = steps
    assert isinstance(first, TableOps) and first.upserts == [{"id": 1, "name": "x"}]
    assert isinstance(other_ops, TableOps) and other_ops.table_id == "public.other"
    assert isinstance(after, TableOps)
    assert after.upserts == [{"id": 2, "name": "n2", "qty": 0}] and after.deletes == [{"id": 9}]
    assert (result.applied, result.skipped) == (5, 1)


def test_fold_partial_without_earlier_image_stays_partial() -> None:
    steps, _ = fold([upd(1, unchanged=["name"], qty=1), upd(1, unchanged=["name", "qty"])])
    (ops,) = steps
    assert isinstance(ops, TableOps)
    # The second image lacks qty too, but the first one carried it: only name is left unsent.
    assert ops.partials == [({"id": 1, "qty": 1}, ["name"])]


def test_fold_partial_after_full_image_is_complete() -> None:
    steps, _ = fold([ins(1, name="a", qty=1), upd(1, unchanged=["name"], qty=2)])
    (ops,) = steps
    assert isinstance(ops, TableOps) and ops.upserts == [{"id": 1, "name": "a", "qty": 2}]
    assert ops.partials == []


def test_fold_truncate_alone() -> None:
    steps, result = fold([trunc()])
    assert steps == [Truncate("public.items")] and result.applied == 1


def test_fold_rejects_a_change_without_key() -> None:
    with pytest.raises(DataError, match="no key"):
        fold([change(Op.CREATE, None, {"id": 1})])


def test_type_mapping_between_dialects() -> None:
    pg = ["integer", "bigint", "boolean", "numeric(30,10)", "double precision", "bytea", "jsonb"]
    assert [map_type(t, "postgres", "sqlite") for t in pg] == [
        "INTEGER", "INTEGER", "INTEGER", "TEXT", "REAL", "BLOB", "TEXT",
    ]  # fmt: skip
    assert map_type("text[]", "postgres", "sqlite") == "TEXT"
    lite = ["INTEGER", "REAL", "TEXT", "BLOB", "NUMERIC", "VARCHAR(20)", "", "BOOLEAN"]
    assert [map_type(t, "sqlite", "postgres") for t in lite] == [
        "bigint", "double precision", "text", "bytea", "numeric", "text", "text", "boolean",
    ]  # fmt: skip
    assert map_type("numeric(10,2)", "postgres", "postgres") == "numeric(10,2)"


# ---- SQLite specifics -------------------------------------------------------------------

PG_TYPES = TableSchema(
    "public",
    "vals",
    (
        Column("id", "integer", nullable=False),
        Column("num", "numeric(30,10)"),
        Column("flag", "boolean"),
        Column("dbl", "double precision"),
        Column("raw", "bytea"),
        Column("doc", "jsonb"),
        Column("tags", "text[]"),
    ),
    ("id",),
)


def test_postgres_values_into_created_sqlite_table(tmp_path: Path) -> None:
    sink = make(tmp_path / "t.db", create_tables=True)
    sink.open(PIPELINE)
    sink.prepare({"public.vals": PG_TYPES})
    exact = "12345678901234567890.0123456789"
    raw = bytes(range(256))
    rows: list[dict[str, Any]] = [
        {"id": 1, "num": exact, "flag": True, "dbl": 1.5, "raw": base64.b64encode(raw).decode(),
         "doc": {"a": [1, "x"]}, "tags": ["a", None, 'q"uote']},
        {"id": 2, "num": "-1", "flag": False, "dbl": "NaN", "raw": None, "doc": '"s"', "tags": []},
        {"id": 3, "num": None, "flag": None, "dbl": "-Infinity", "raw": "", "doc": None, "tags": None},
    ]  # fmt: skip
    sink.apply([change(Op.READ, r["id"], r, table="vals") for r in rows], {0: 3})
    sink.close()
    conn = sqlite3.connect(tmp_path / "t.db")
    decl = {r[1]: r[2] for r in conn.execute("PRAGMA table_info(vals)")}
    assert decl == {"id": "INTEGER", "num": "TEXT", "flag": "INTEGER", "dbl": "REAL",
                    "raw": "BLOB", "doc": "TEXT", "tags": "TEXT"}  # fmt: skip
    got = conn.execute("SELECT * FROM vals ORDER BY id").fetchall()
    conn.close()
    assert got == [
        (1, exact, 1, 1.5, raw, '{"a":[1,"x"]}', '["a",null,"q\\"uote"]'),
        (2, "-1", 0, "NaN", None, '"s"', "[]"),
        (3, None, None, float("-inf"), b"", None, None),
    ]


def test_sqlite_source_into_sqlite_keeps_types(tmp_path: Path) -> None:
    schema = TableSchema(
        "main", "notes", (Column("k", "TEXT", False), Column("body", "BLOB")), ("k",), "sqlite"
    )
    sink = make(tmp_path / "t.db")
    sink.open(PIPELINE)
    sink.prepare({"main.notes": schema})
    blob = base64.b64encode(b"\x00\x01").decode()
    ev = change(Op.CREATE, None, {"k": "a", "body": blob}, table="notes", schema="main")
    ev.key = {"k": "a"}
    sink.apply([ev], {})
    sink.close()
    conn = sqlite3.connect(tmp_path / "t.db")
    assert conn.execute("SELECT k, body FROM notes").fetchall() == [("a", b"\x00\x01")]
    assert [r[2] for r in conn.execute("PRAGMA table_info(notes)")] == ["TEXT", "BLOB"]
    conn.close()


def test_wal_mode_and_offsets_table(tmp_path: Path) -> None:
    sink = make(tmp_path / "t.db")
    sink.open(PIPELINE)
    sink.prepare({"public.items": ITEMS})
    sink.apply([ins(1)], {2: 10})
    sink.close()
    conn = sqlite3.connect(tmp_path / "t.db")
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute(
        "SELECT pipeline, partition, next_offset FROM _syncline_offsets"
    ).fetchall() == [(PIPELINE, 2, 10)]
    conn.close()


def test_unopenable_path_is_one_line(tmp_path: Path) -> None:
    sink = make(tmp_path / "no" / "such" / "dir" / "t.db")
    with pytest.raises(StorageError) as err:
        sink.open(PIPELINE)
    msg = str(err.value)
    assert "does not exist" in msg and "t.db" in msg and "\n" not in msg


def test_check_without_database_file(tmp_path: Path) -> None:
    notes = make(tmp_path / "t.db").check()
    assert "will be created" in notes[0]
    assert not (tmp_path / "t.db").exists()
    with pytest.raises(StorageError):
        make(tmp_path / "t.db", create_tables=False).check()


def test_locked_database_is_transient_and_recovers(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    sink = SqliteSink(SqliteSinkConfig(kind="sqlite", path=str(path)), PIPELINE, busy_timeout=0.05)
    sink.open(PIPELINE)
    sink.prepare({"public.items": ITEMS})
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    with pytest.raises(TransientError):
        sink.apply([ins(1)], {0: 1})
    blocker.execute("ROLLBACK")
    blocker.close()
    sink.apply([ins(1)], {0: 1})
    assert sink.positions() == {0: 1}
    sink.close()


def test_bad_base64_in_blob_column_is_a_data_error(tmp_path: Path) -> None:
    sink = make(tmp_path / "t.db", create_tables=True)
    sink.open(PIPELINE)
    sink.prepare({"public.vals": PG_TYPES})
    with pytest.raises(DataError) as err:
        sink.apply([change(Op.CREATE, 1, {"id": 1, "raw": "###"}, table="vals")], {0: 1})
    assert "vals" in str(err.value) and "raw='###'" in str(err.value)
    assert sink.positions() == {}
    sink.close()
