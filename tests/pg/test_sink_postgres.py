"""The PostgreSQL sink: the sink contract, every value type, connection and apply errors."""

from __future__ import annotations

import base64
import datetime as dt
import math
import socket
import threading
from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg2
import pytest

from contract.sink_contract import ITEMS, ITEMS_DDL, PIPELINE, SinkContract, change, ins, upd
from syncline.config import PostgresSinkConfig
from syncline.errors import (
    AuthError,
    ConfigError,
    ConnectError,
    DataError,
    SchemaError,
    TransientError,
)
from syncline.events import Op
from syncline.schema import Column, TableSchema
from syncline.sinks.base import Sink
from syncline.sinks.postgres import PostgresSink, array_literal


def pg_exec(dsn: str, sql: str) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def pg_rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SET TimeZone = 'UTC'")
            cur.execute(sql)
            return list(cur.fetchall())
    finally:
        conn.close()


def make(dsn: str, pipeline: str = PIPELINE, **cfg: Any) -> PostgresSink:
    return PostgresSink(PostgresSinkConfig(kind="postgres", dsn=dsn, **cfg), pipeline)


def with_dsn(
    dsn: str,
    *,
    password: str | None = None,
    port: int | None = None,
    db: str | None = None,
    query: str | None = None,
) -> str:
    parts = urlsplit(dsn)
    host = parts.hostname or "127.0.0.1"
    user = parts.username or "postgres"
    pw = parts.password if password is None else password
    netloc = f"{user}:{quote(pw or '', safe='')}@{host}:{port or parts.port}"
    path = parts.path if db is None else "/" + db
    return urlunsplit(parts._replace(netloc=netloc, path=path, query=query or parts.query))


class TestPostgresSinkContract(SinkContract):
    mapped_target = "mirror.items_copy"

    @pytest.fixture(autouse=True)
    def _target(self, pg_target_dsn: str) -> None:
        self.dsn = pg_target_dsn

    def make_sink(
        self,
        tables: Mapping[str, Mapping[str, Any]] | None = None,
        create_tables: bool = False,
        pipeline: str = PIPELINE,
    ) -> Sink:
        return make(self.dsn, pipeline, tables=dict(tables or {}), create_tables=create_tables)

    def exec_target(self, sql: str) -> None:
        pg_exec(self.dsn, sql)

    def read_target_rows(self, table: str, columns: str = "*") -> list[tuple[Any, ...]]:
        return pg_rows(self.dsn, f"SELECT {columns} FROM {table} ORDER BY 1")

    def audit_ddl(self) -> list[str]:
        return [
            "CREATE TABLE audit (n serial PRIMARY KEY, op text)",
            "CREATE FUNCTION audit_fn() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN INSERT INTO audit (op) VALUES (TG_OP); RETURN NULL; END $$",
            "CREATE TRIGGER items_audit AFTER INSERT OR UPDATE OR DELETE ON items "
            "FOR EACH ROW EXECUTE FUNCTION audit_fn()",
        ]


# ---- values ------------------------------------------------------------------------------

VALS_DDL = """
CREATE TABLE vals (
    id int PRIMARY KEY, big bigint, num numeric(30,10), dbl double precision, flag boolean,
    txt text, uid uuid, doc jsonb, js json, day date, ts timestamptz, raw bytea,
    ints int[], texts text[], grid int[], flags boolean[], blobs bytea[], docs jsonb[]
)
"""
VALS = TableSchema(
    "public",
    "vals",
    tuple(
        Column(n, t)
        for n, t in [
            ("id", "integer"),
            ("big", "bigint"),
            ("num", "numeric(30,10)"),
            ("dbl", "double precision"),
            ("flag", "boolean"),
            ("txt", "text"),
            ("uid", "uuid"),
            ("doc", "jsonb"),
            ("js", "json"),
            ("day", "date"),
            ("ts", "timestamp with time zone"),
            ("raw", "bytea"),
            ("ints", "integer[]"),
            ("texts", "text[]"),
            ("grid", "integer[]"),
            ("flags", "boolean[]"),
            ("blobs", "bytea[]"),
            ("docs", "jsonb[]"),
        ]
    ),
    ("id",),
)
AWKWARD = 'tab\there\nnew\\line\r "q" \\N NULL {x,y} ☃'
TEXTS = ['a"b', "c,d", None, "NULL", "", "back\\slash", "{brace}", " sp ", "tab\tnl\n"]
RAW = bytes(range(256))


def vals_row(i: int) -> dict[str, Any]:
    return {
        "id": i, "big": 9223372036854775807, "num": "12345678901234567890.0123456789",
        "dbl": "NaN", "flag": True, "txt": AWKWARD, "uid": "0b5c2f9e-6a4e-4b7c-9f52-2f0d3c4a1e77",
        "doc": '{"a": [1, 2], "b": "x\\ty"}', "js": {"k": ["v", None, 1.5]},
        "day": "2024-02-29", "ts": "2024-02-29 12:34:56.123456+00",
        "raw": base64.b64encode(RAW).decode(), "ints": [1, None, -3], "texts": TEXTS,
        "grid": [[1, 2], [3, 4]], "flags": [True, False, None],
        "blobs": [base64.b64encode(b"\x00\\\x01").decode(), None], "docs": [{"a": 1}, '"s"'],
    }  # fmt: skip


def check_vals_row(row: tuple[Any, ...], i: int) -> None:
    (id_, big, num, dbl, flag, txt, uid, doc, js, day, ts, raw, ints, texts, grid, flags, blobs,
     docs) = row  # fmt: skip
    assert id_ == i and big == 9223372036854775807
    assert num == Decimal("12345678901234567890.0123456789")
    assert math.isnan(dbl) and flag is True and txt == AWKWARD
    assert str(uid) == "0b5c2f9e-6a4e-4b7c-9f52-2f0d3c4a1e77"
    assert doc == {"a": [1, 2], "b": "x\ty"} and js == {"k": ["v", None, 1.5]}
    assert day == dt.date(2024, 2, 29)
    assert ts == dt.datetime(2024, 2, 29, 12, 34, 56, 123456, tzinfo=dt.UTC)
    assert bytes(raw) == RAW
    assert ints == [1, None, -3] and texts == TEXTS and grid == [[1, 2], [3, 4]]
    assert flags == [True, False, None]
    assert [None if b is None else bytes(b) for b in blobs] == [b"\x00\\\x01", None]
    assert docs == [{"a": 1}, "s"]


def test_every_value_type_round_trips(pg_target_dsn: str) -> None:
    pg_exec(pg_target_dsn, VALS_DDL)
    sink = make(pg_target_dsn)
    sink.open(PIPELINE)
    sink.prepare({"public.vals": VALS})
    specials: list[dict[str, Any]] = [
        {"id": 10, "dbl": 1.5e300, "num": 1, "big": -1, "flag": False},
        {"id": 11, "dbl": "-Infinity", "num": "-0.0000000001", "flag": None},
        {"id": 12, "dbl": float("inf"), "num": 2.5, "texts": [], "ints": []},
    ]
    sink.apply(
        [change(Op.READ, i, vals_row(i), table="vals") for i in (1, 2)]
        + [change(Op.CREATE, r["id"], r, table="vals") for r in specials],
        {0: 5},
    )
    rows = pg_rows(pg_target_dsn, "SELECT * FROM vals ORDER BY id")
    check_vals_row(rows[0], 1)
    check_vals_row(rows[1], 2)
    got = pg_rows(
        pg_target_dsn,
        "SELECT id, dbl, num, big, flag, texts, ints FROM vals WHERE id >= 10 ORDER BY id",
    )
    assert got == [
        (10, 1.5e300, Decimal("1.0000000000"), -1, False, None, None),
        (11, float("-inf"), Decimal("-0.0000000001"), None, None, None, None),
        (12, float("inf"), Decimal("2.5000000000"), None, None, [], []),
    ]
    # Updates go through the same encoders; a partial update keeps the unsent jsonb and bytea.
    partial = {k: v for k, v in vals_row(2).items() if k not in ("doc", "raw")} | {"txt": "new"}
    sink.apply([change(Op.UPDATE, 2, partial, table="vals", unchanged=["doc", "raw"])], {0: 6})
    (row2,) = pg_rows(pg_target_dsn, "SELECT * FROM vals WHERE id = 2")
    assert row2[5] == "new"
    check_vals_row((*row2[:5], AWKWARD, *row2[6:]), 2)
    sink.close()


def test_array_literal_quoting() -> None:
    assert array_literal([]) == "{}"
    assert array_literal([1, None, [2, 3]]) == '{"1",NULL,{"2","3"}}'
    assert array_literal(['a"b', "c\\d", "NULL"]) == '{"a\\"b","c\\\\d","NULL"}'


def test_sqlite_source_creates_postgres_types(pg_target_dsn: str) -> None:
    schema = TableSchema(
        "main",
        "gadgets",
        tuple(
            Column(n, t)
            for n, t in [
                ("id", "INTEGER"),
                ("price", "REAL"),
                ("name", "TEXT"),
                ("pic", "BLOB"),
                ("qty", "NUMERIC"),
                ("ok", "BOOLEAN"),
                ("born", "DATETIME"),
            ]
        ),
        ("id",),
        dialect="sqlite",
    )
    sink = make(pg_target_dsn, create_tables=True)
    sink.open(PIPELINE)
    sink.prepare({"main.gadgets": schema})
    row = {"id": 1, "price": 2.5, "name": "g", "pic": base64.b64encode(b"\x01").decode(),
           "qty": 3, "ok": 1, "born": "2024-01-01 10:00:00"}  # fmt: skip
    sink.apply([change(Op.CREATE, 1, row, table="gadgets", schema="main")], {})
    sink.close()
    types = pg_rows(
        pg_target_dsn,
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name = 'gadgets' ORDER BY ordinal_position",
    )
    assert [t for _, t in types] == [
        "bigint", "double precision", "text", "bytea", "numeric", "boolean", "text",
    ]  # fmt: skip
    got = pg_rows(pg_target_dsn, "SELECT id, price, name, pic, qty, ok, born FROM public.gadgets")
    assert [(a, b, c, bytes(d), e, f, g) for a, b, c, d, e, f, g in got] == [
        (1, 2.5, "g", b"\x01", Decimal(3), True, "2024-01-01 10:00:00")
    ]


def test_mapping_into_existing_table_in_another_schema(pg_target_dsn: str) -> None:
    pg_exec(pg_target_dsn, "CREATE SCHEMA mirror; " + ITEMS_DDL.replace("items", "mirror.stock"))
    sink = make(pg_target_dsn, tables={"items": {"target": "mirror.stock"}})
    sink.open(PIPELINE)
    sink.prepare({"public.items": ITEMS})
    sink.apply([ins(1), ins(2)], {0: 2})
    assert pg_rows(pg_target_dsn, "SELECT id, note FROM mirror.stock ORDER BY id") == [
        (1, "dflt"),
        (2, "dflt"),
    ]
    assert pg_rows(pg_target_dsn, "SELECT to_regclass('public.items')") == [(None,)]
    sink.close()


def test_conflict_condition_hook(pg_target_dsn: str) -> None:
    class OnlyUpwards(PostgresSink):
        def conflict_condition(self, table_id: str) -> str | None:
            return "{new}.qty >= t.qty"

    pg_exec(pg_target_dsn, ITEMS_DDL)
    sink = OnlyUpwards(PostgresSinkConfig(kind="postgres", dsn=pg_target_dsn), PIPELINE)
    sink.open(PIPELINE)
    sink.prepare({"public.items": ITEMS})
    sink.apply([ins(1, qty=5), ins(2, qty=5)], {})
    sink.apply([upd(1, name="down", qty=3), upd(2, unchanged=["name"], qty=1)], {})
    sink.apply([ins(3, qty=1)], {})
    sink.apply([upd(3, unchanged=["name"], qty=4)], {})
    assert pg_rows(pg_target_dsn, "SELECT id, name, qty FROM items ORDER BY id") == [
        (1, "n1", 5),
        (2, "n2", 5),
        (3, "n3", 4),
    ]
    sink.close()


# ---- connections and failures ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_wrong_password_is_one_line_without_the_password(pg_target_dsn: str) -> None:
    secret = "Wr0ng-s3cret"
    sink = make(with_dsn(pg_target_dsn, password=secret))
    for call in (lambda: sink.open(PIPELINE), sink.check):
        with pytest.raises(AuthError) as err:
            call()
        msg = str(err.value)
        port = urlsplit(pg_target_dsn).port
        assert f"127.0.0.1:{port}" in msg and "password" in msg
        assert secret not in msg and "\n" not in msg


def test_unreachable_host_is_one_line(pg_target_dsn: str) -> None:
    port = _free_port()
    sink = make(with_dsn(pg_target_dsn, port=port, password="Secr3t-x"))
    with pytest.raises(ConnectError) as err:
        sink.open(PIPELINE)
    msg = str(err.value)
    assert f"127.0.0.1:{port}" in msg and "Secr3t-x" not in msg and "\n" not in msg
    assert isinstance(err.value, TransientError)


def test_missing_database_and_bad_dsn(pg_target_dsn: str) -> None:
    with pytest.raises(ConfigError) as err:
        make(with_dsn(pg_target_dsn, db="no_such_db")).open(PIPELINE)
    assert "no_such_db" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError) as err:
        make("this is not a dsn")
    assert "dsn" in str(err.value)


def test_lost_connection_is_transient_and_the_sink_recovers(
    pg_target_dsn: str, pg_server: Any
) -> None:
    pg_exec(pg_target_dsn, ITEMS_DDL)
    sink = make(pg_target_dsn)
    sink.open(PIPELINE)
    sink.prepare({"public.items": ITEMS})
    sink.apply([ins(1)], {0: 1})
    db = urlsplit(pg_target_dsn).path.lstrip("/")
    pg_exec(
        pg_server.admin_dsn,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{db}' AND application_name = 'syncline-sink-{PIPELINE}'",
    )
    with pytest.raises(TransientError):
        sink.apply([ins(2)], {0: 2})
    assert sink.positions() == {0: 1}  # reconnected lazily
    sink.apply([ins(2)], {0: 2})
    assert pg_rows(pg_target_dsn, "SELECT id FROM items ORDER BY id") == [(1,), (2,)]
    assert sink.positions() == {0: 2}
    sink.close()


def test_lock_timeout_is_transient_and_rolls_back(pg_target_dsn: str) -> None:
    pg_exec(pg_target_dsn, ITEMS_DDL)
    sink = make(with_dsn(pg_target_dsn, query="options=-c%20lock_timeout%3D200"))
    sink.open(PIPELINE)
    sink.prepare({"public.items": ITEMS})
    sink.apply([ins(1)], {0: 1})
    holder = psycopg2.connect(pg_target_dsn)
    with holder.cursor() as cur:
        cur.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
    with pytest.raises(TransientError) as err:
        sink.apply([ins(2)], {0: 2})
    assert "items" in str(err.value)
    holder.rollback()
    holder.close()
    sink.apply([ins(2), ins(3)], {0: 3})
    assert sink.positions() == {0: 3}
    assert pg_rows(pg_target_dsn, "SELECT count(*) FROM items") == [(3,)]
    sink.close()


def test_two_sinks_apply_concurrently(pg_target_dsn: str) -> None:
    """Two pipelines writing one target: offsets stay per pipeline, rows all land."""
    pg_exec(pg_target_dsn, ITEMS_DDL)
    errors: list[BaseException] = []

    def run(name: str, start: int) -> None:
        try:
            sink = make(pg_target_dsn, name)
            sink.open(name)
            sink.prepare({"public.items": ITEMS})
            for b in range(10):
                ids = range(start + b * 50, start + (b + 1) * 50)
                sink.apply([ins(i) for i in ids], {0: b + 1})
            sink.close()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f"p{n}", n * 1000)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert pg_rows(pg_target_dsn, "SELECT count(*) FROM items") == [(1000,)]
    assert pg_rows(
        pg_target_dsn,
        "SELECT pipeline, partition, next_offset FROM syncline.syncline_offsets"
        " WHERE partition >= 0 ORDER BY 1",
    ) == [("p0", 0, 10), ("p1", 0, 10)]


def test_bad_values_are_data_errors_naming_table_and_column(pg_target_dsn: str) -> None:
    pg_exec(pg_target_dsn, VALS_DDL)
    sink = make(pg_target_dsn)
    sink.open(PIPELINE)
    sink.prepare({"public.vals": VALS})
    with pytest.raises(DataError) as err:
        sink.apply([change(Op.CREATE, 1, {"id": 1, "raw": "not base64!"}, table="vals")], {0: 1})
    assert "raw=" in str(err.value) and "public.vals" in str(err.value)
    with pytest.raises(DataError) as err:
        sink.apply([change(Op.CREATE, 1, {"id": 1, "day": "2024-13-45"}, table="vals")], {0: 1})
    msg = str(err.value)
    assert "public.vals" in msg and "2024-13-45" in msg and "\n" not in msg
    assert sink.positions() == {}
    sink.close()


def test_column_dropped_after_prepare_is_a_schema_error(pg_target_dsn: str) -> None:
    pg_exec(pg_target_dsn, ITEMS_DDL)
    sink = make(pg_target_dsn)
    sink.open(PIPELINE)
    sink.prepare({"public.items": ITEMS})
    pg_exec(pg_target_dsn, "ALTER TABLE items DROP COLUMN qty")
    with pytest.raises(SchemaError) as err:
        sink.apply([ins(1)], {0: 1})
    assert "qty" in str(err.value) and "items" in str(err.value)
    sink.close()


def test_a_second_applier_of_one_pipeline_is_fenced_off(pg_target_dsn: str) -> None:
    """A zombie process still applying with stale positions must not apply a batch twice."""
    pg_exec(pg_target_dsn, ITEMS_DDL)
    pg_exec(
        pg_target_dsn,
        "CREATE TABLE audit (n int); CREATE FUNCTION au() RETURNS trigger LANGUAGE plpgsql AS"
        " $$BEGIN INSERT INTO audit VALUES (1); RETURN NEW; END$$;"
        " CREATE TRIGGER au AFTER INSERT OR UPDATE ON items FOR EACH ROW EXECUTE FUNCTION au();",
    )
    first, zombie = make(pg_target_dsn, "p"), make(pg_target_dsn, "p")
    for sink in (first, zombie):
        sink.open("p")
        sink.prepare({"public.items": ITEMS})
        assert sink.positions() == {}
    first.apply([ins(1), ins(2)], {0: 2})
    with pytest.raises(TransientError, match="another syncline process is applying"):
        zombie.apply([ins(1), ins(2)], {0: 2})
    assert pg_rows(pg_target_dsn, "SELECT count(*) FROM audit") == [(2,)]
    assert zombie.positions() == {0: 2}  # re-reading the positions lets it continue
    zombie.apply([ins(3)], {0: 3})
    assert pg_rows(pg_target_dsn, "SELECT count(*) FROM audit") == [(3,)]
    first.close()
    zombie.close()
