"""The transform chain inside a running pipeline: SQLite → SQLite and PostgreSQL → PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import hmac
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e_helpers import pg_exec, pg_rows, wait_until
from syncline.config import PipelineConfig, parse_config
from syncline.errors import DataError, SchemaError
from syncline.pipeline import Pipeline
from syncline.transforms import decrypt_value

KEY = bytes(range(1, 33))
SALT = "pepper"


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_FIELD_KEY", base64.b64encode(KEY).decode())
    monkeypatch.setenv("TEST_MASK_SALT", SALT)


def pipeline_config(
    tmp_path: Path,
    source: dict[str, Any],
    sink: dict[str, Any],
    transforms: list[dict[str, Any]],
    apply_in: str = "thread",
) -> PipelineConfig:
    data = {
        "pipelines": [
            {
                "name": "shop",
                "source": source,
                "transport": {"path": str(tmp_path / "log"), "partitions": 2, "fsync": False},
                "transforms": transforms,
                "sink": sink,
                "batch": {"max_events": 100, "max_wait_ms": 5},
                "apply_in": apply_in,
            }
        ]
    }
    return parse_config(data).pipelines[0]


@pytest.fixture
def running(tmp_path: Path) -> Iterator[list[Pipeline]]:
    pipes: list[Pipeline] = []
    yield pipes
    for p in pipes:
        p.stop(drain=False, timeout=10)


def start(pipes: list[Pipeline], cfg: PipelineConfig) -> Pipeline:
    pipe = Pipeline(cfg)
    pipes.append(pipe)
    pipe.start()
    return pipe


def settle(pipe: Pipeline, captured: int) -> None:
    ok = wait_until(
        lambda: pipe.failure is not None or (pipe.stats.captured >= captured and pipe.caught_up()),
        60,
    )
    assert pipe.failure is None, pipe.failure
    assert ok, (pipe.stats.captured, pipe.applied_end, pipe.stats.state, pipe.stats.error)


def sqlite_exec(path: Path, *sql: str) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        for s in sql:
            db.execute(s)
    finally:
        db.close()


def sqlite_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(path)
    try:
        return list(db.execute(sql))
    finally:
        db.close()


# ---- SQLite → SQLite ----------------------------------------------------------------------

SQLITE_DDL = (
    "CREATE TABLE orders(id INTEGER PRIMARY KEY, customer TEXT, email TEXT, card TEXT,"
    " price TEXT, qty INTEGER, status TEXT, note TEXT)",
    "CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT)",
)

SQLITE_CHAIN: list[dict[str, Any]] = [
    {"type": "route", "from": "main.orders", "to": "sales.orders_copy"},
    {"type": "rename_fields", "fields": {"customer": "customer_name"}, "tables": ["orders_copy"]},
    {"type": "drop_fields", "fields": ["note"], "tables": ["sales.*"]},
    {
        "type": "compute",
        "fields": {"total": {"expr": "decimal(price) * qty", "type": "TEXT"}},
        "tables": ["sales.orders_copy"],
    },
    {"type": "filter", "exclude": "op != 'd' and status == 'draft'", "tables": ["orders_copy"]},
    {
        "type": "mask",
        "fields": ["email"],
        "method": "hash",
        "salt_env": "TEST_MASK_SALT",
        "tables": ["sales.orders_copy"],
    },
    {
        "type": "encrypt",
        "fields": ["card"],
        "key_env": "TEST_FIELD_KEY",
        "tables": ["sales.orders_copy"],
    },
    {"type": "cast", "fields": {"price": "float"}, "tables": ["sales.orders_copy"]},
]


@pytest.mark.parametrize("apply_in", ["thread", "process"])
def test_sqlite_pipeline_with_every_kind_of_transform(
    tmp_path: Path, secrets: None, running: list[Pipeline], apply_in: str
) -> None:
    """Route, rename, drop, compute, filter, mask, encrypt and cast, checked row by row.

    With ``apply_in: process`` the chain is built again in the apply worker's process
    (from the same config and environment).
    """
    src, dst = tmp_path / "src.db", tmp_path / "dst.db"
    sqlite_exec(
        src,
        *SQLITE_DDL,
        "INSERT INTO orders VALUES (1, 'ann', 'ann@x.io', '4111-1', '2.50', 2, 'paid', 'n1')",
        "INSERT INTO orders VALUES (2, 'bob', 'bob@x.io', '4111-2', '10.00', 1, 'draft', 'n2')",
        "INSERT INTO orders VALUES (3, 'cy', NULL, NULL, '0.10', 3, 'new', NULL)",
        "INSERT INTO customers VALUES (1, 'Ann'), (2, 'Bob')",
    )
    cfg = pipeline_config(
        tmp_path,
        {"kind": "sqlite", "path": str(src), "tables": ["orders", "customers"]},
        {"kind": "sqlite", "path": str(dst)},
        SQLITE_CHAIN,
        apply_in,
    )
    pipe = start(running, cfg)
    settle(pipe, 5)
    assert sqlite_rows(dst, "SELECT id FROM orders_copy ORDER BY id") == [(1,), (3,)]
    sqlite_exec(
        src,
        "INSERT INTO orders VALUES (4, 'dee', 'dee@x.io', '5500-4', '1.25', 4, 'paid', 'n4')",
        "UPDATE orders SET qty = 5 WHERE id = 1",
        "UPDATE orders SET status = 'paid' WHERE id = 2",  # leaves draft: now it arrives
        "DELETE FROM orders WHERE id = 3",
        "UPDATE customers SET name = 'Bobby' WHERE id = 2",
    )
    settle(pipe, 10)
    # a batch of nothing but filtered-out changes still moves the stored positions
    sqlite_exec(src, "INSERT INTO orders VALUES (5, 'eve', 'e@x.io', '1', '1', 1, 'draft', '')")
    settle(pipe, 11)
    pipe.stop(drain=True)

    cols = [(r[1], r[2]) for r in sqlite_rows(dst, "PRAGMA table_info(orders_copy)")]
    assert cols == [
        ("id", "INTEGER"),
        ("customer_name", "TEXT"),
        ("email", "TEXT"),
        ("card", "TEXT"),
        ("price", "REAL"),
        ("qty", "INTEGER"),
        ("status", "TEXT"),
        ("total", "TEXT"),
    ]
    rows = sqlite_rows(dst, "SELECT * FROM orders_copy ORDER BY id")
    cards = [r[3] for r in rows]
    assert all(c.startswith("enc:v1:") for c in cards)
    opened = [decrypt_value(KEY, "sales.orders_copy", "card", c) for c in cards]
    assert opened == ["4111-1", "4111-2", "5500-4"]

    def mac(email: str) -> str:
        return hmac.new(SALT.encode(), email.encode(), hashlib.sha256).hexdigest()

    assert [r[:3] + r[4:] for r in rows] == [
        (1, "ann", mac("ann@x.io"), 2.5, 5, "paid", "12.50"),
        (2, "bob", mac("bob@x.io"), 10.0, 1, "paid", "10.00"),
        (4, "dee", mac("dee@x.io"), 1.25, 4, "paid", "5.00"),
    ]
    assert sqlite_rows(dst, "SELECT * FROM customers ORDER BY id") == [(1, "Ann"), (2, "Bobby")]
    assert not sqlite_rows(dst, "SELECT name FROM sqlite_schema WHERE name = 'orders'")
    stored = dict(sqlite_rows(dst, "SELECT partition, next_offset FROM _syncline_offsets"))
    assert sum(stored.values()) == 11  # every logged change, the filtered ones included


def test_schema_time_refusal_stops_the_pipeline_with_one_line(
    tmp_path: Path, running: list[Pipeline]
) -> None:
    src = tmp_path / "src.db"
    sqlite_exec(src, *SQLITE_DDL)
    cfg = pipeline_config(
        tmp_path,
        {"kind": "sqlite", "path": str(src), "tables": ["orders"]},
        {"kind": "sqlite", "path": str(tmp_path / "dst.db")},
        [{"type": "drop_fields", "fields": ["id", "note"]}],
    )
    pipe = start(running, cfg)
    assert pipe.wait(30)
    assert isinstance(pipe.failure, SchemaError)
    assert str(pipe.failure) == (
        "transforms[0] (drop_fields) on table main.orders: cannot drop key column(s) id: "
        "the target applies rows by key"
    )


def test_runtime_expression_error_dead_letters_the_row_or_fails_the_pipeline(
    tmp_path: Path, running: list[Pipeline]
) -> None:
    src = tmp_path / "src.db"
    sqlite_exec(
        src,
        *SQLITE_DDL,
        "INSERT INTO orders (id, qty) VALUES (1, 2), (2, NULL)",
    )
    cfg = pipeline_config(
        tmp_path,
        {"kind": "sqlite", "path": str(src), "tables": ["orders"]},
        {"kind": "sqlite", "path": str(tmp_path / "dst.db")},
        [{"type": "compute", "fields": {"double": {"expr": "qty * 2", "type": "INTEGER"}}}],
    )
    # with the dead-letter queue (the default) the bad row is set aside, the rest flows
    pipe = start(
        running, cfg.model_copy(update={"dlq": cfg.dlq.model_copy(update={"max_attempts": 1})})
    )
    assert wait_until(lambda: pipe.stats.dead_lettered == 1 and pipe.stats.applied == 1, 30)
    assert pipe.failure is None
    assert sqlite_rows(tmp_path / "dst.db", "SELECT id, double FROM orders") == [(1, 4)]
    pipe.stop(drain=False)

    # without it, the pipeline stops naming the row
    cfg = pipeline_config(
        tmp_path / "again",
        {"kind": "sqlite", "path": str(src), "tables": ["orders"]},
        {"kind": "sqlite", "path": str(tmp_path / "dst2.db")},
        [{"type": "compute", "fields": {"double": {"expr": "qty * 2", "type": "INTEGER"}}}],
    )
    pipe = start(
        running, cfg.model_copy(update={"dlq": cfg.dlq.model_copy(update={"enabled": False})})
    )
    assert pipe.wait(30)
    assert isinstance(pipe.failure, DataError)
    assert str(pipe.failure).startswith(
        'transforms[0] (compute) on main.orders key {"id":2}: double = qty * 2 failed: TypeError'
    )


# ---- PostgreSQL → PostgreSQL ---------------------------------------------------------------

PG_SOURCE_DDL = """
CREATE TABLE public.orders (
    id bigint PRIMARY KEY,
    customer text NOT NULL,
    price numeric(10,2) NOT NULL,
    qty integer NOT NULL,
    status text NOT NULL
);
"""
PG_TARGET_DDL = """
CREATE SCHEMA shop;
CREATE TABLE shop.order_lines (
    note text DEFAULT 'n/a',
    status text,
    order_id bigint PRIMARY KEY,
    buyer text NOT NULL,
    total numeric(14,2),
    synced_by text
);
"""


def test_postgres_route_rename_compute_into_a_differently_shaped_table(
    tmp_path: Path, pg_source_dsn: str, pg_target_dsn: str, running: list[Pipeline]
) -> None:
    pg_exec(pg_source_dsn, PG_SOURCE_DDL)
    pg_exec(pg_target_dsn, PG_TARGET_DDL)
    pg_exec(
        pg_source_dsn,
        "INSERT INTO orders SELECT g, 'c' || g, g * 1.25, g, 'new' FROM generate_series(1, 50) g",
    )
    cfg = pipeline_config(
        tmp_path,
        {"kind": "postgres", "dsn": pg_source_dsn, "tables": ["public.orders"]},
        {"kind": "postgres", "dsn": pg_target_dsn},
        [
            {"type": "route", "pattern": r"public\.(orders)", "to": r"shop.order_lines"},
            {"type": "rename_fields", "fields": {"id": "order_id", "customer": "buyer"}},
            {
                "type": "compute",
                "fields": {"total": {"expr": "decimal(price) * qty", "type": "numeric"}},
            },
            {"type": "drop_fields", "fields": ["price", "qty"]},
            {"type": "add_fields", "fields": {"synced_by": {"value": "syncline"}}},
        ],
    )
    pipe = start(running, cfg)
    settle(pipe, 50)
    pg_exec(
        pg_source_dsn,
        "UPDATE orders SET qty = qty + 1, status = 'paid' WHERE id <= 10",
        "DELETE FROM orders WHERE id > 45",
        "INSERT INTO orders VALUES (100, 'zed', 0.10, 3, 'new')",
    )
    settle(pipe, 50 + 10 + 5 + 1)
    pipe.stop(drain=True)
    got = pg_rows(
        pg_target_dsn,
        "SELECT order_id, buyer, total::text, status, synced_by, note"
        " FROM shop.order_lines ORDER BY order_id",
    )
    want = [
        (
            i,
            f"c{i}",
            f"{i * 1.25 * (i + 1 if i <= 10 else i):.2f}",
            "paid" if i <= 10 else "new",
            "syncline",
            "n/a",
        )
        for i in range(1, 46)
    ] + [(100, "zed", "0.30", "new", "syncline", "n/a")]
    assert got == want
    assert not pg_rows(pg_target_dsn, "SELECT 1 FROM pg_tables WHERE tablename = 'orders'")
