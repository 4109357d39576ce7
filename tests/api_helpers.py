"""Shared by the API tests: SQLite → SQLite pipelines in this process, behind the real app.

``ApiHarness`` builds a ``Runtime`` from a config document, starts its pipelines,
and puts the FastAPI app in front of it with FastAPI's TestClient; calls carry
the token of a role (viewer, operator, admin).
"""

from __future__ import annotations

import json
import sqlite3
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from httpx import Response

with warnings.catch_warnings():  # newer Starlette would rather have httpx2; httpx works
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

from syncline.api.app import create_app
from syncline.api.settings import resolve_settings
from syncline.config import parse_config
from syncline.pipeline import Pipeline
from syncline.runtime import Runtime

TOKENS = {
    "viewer": "viewer-token-0123456789abcdef",
    "operator": "operator-token-0123456789abcdef",
    "admin": "admin-token-0123456789abcdef",
}
ORDERS = "CREATE TABLE orders (id INTEGER PRIMARY KEY, qty INTEGER NOT NULL)"
GUARD = (
    "CREATE TRIGGER no_negative_{op} BEFORE {op} ON orders WHEN NEW.qty < 0 "
    "BEGIN SELECT RAISE(ABORT, 'qty must not be negative'); END"
)


def sql(path: Path, *stmts: str) -> None:
    db = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        for s in stmts:
            db.execute(s)
    finally:
        db.close()


def rows(path: Path, query: str = "SELECT id, qty FROM orders ORDER BY id") -> list[Any]:
    db = sqlite3.connect(path, timeout=30)
    try:
        return list(db.execute(query))
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []  # not created by the sink yet
        raise
    finally:
        db.close()


def make_source(path: Path, n: int = 5) -> Path:
    values = ", ".join(f"({i}, {i})" for i in range(1, n + 1))
    sql(path, ORDERS, *([f"INSERT INTO orders VALUES {values}"] if n else []))
    return path


def pipeline_doc(tmp: Path, name: str = "shop", **overrides: Any) -> dict[str, Any]:
    """A SQLite → SQLite pipeline config (fast: apply in a thread, no fsync)."""
    doc: dict[str, Any] = {
        "name": name,
        "source": {"kind": "sqlite", "path": str(tmp / f"{name}-src.db"), "tables": ["orders"]},
        "transport": {"path": str(tmp / "log"), "partitions": 2, "fsync": False},
        "sink": {"kind": "sqlite", "path": str(tmp / f"{name}-dst.db")},
        "batch": {"max_events": 100, "max_wait_ms": 5},
        "apply_in": "thread",
        "retry": {"initial_delay_ms": 10, "max_delay_ms": 50},
        "dlq": {"max_attempts": 2},
    }
    doc.update(overrides)
    return doc


class ApiHarness:
    def __init__(self, tmp: Path, pipelines: list[dict[str, Any]], *, tokens: bool = True) -> None:
        self.tmp = tmp
        self.audit_path = tmp / "audit.log"
        api: dict[str, Any] = {"listen": "127.0.0.1:0", "audit_log": str(self.audit_path)}
        if tokens:
            api["tokens"] = [{"name": f"{r}-1", "role": r, "token": t} for r, t in TOKENS.items()]
        cfg = parse_config({"pipelines": pipelines, "api": api})
        settings = resolve_settings(cfg.api, env={})
        assert settings is not None
        self.runtime = Runtime(cfg)
        for p in self.runtime.pipelines:
            p.start()
        self.app = create_app(self.runtime, settings)
        self.client = TestClient(self.app, base_url="http://127.0.0.1")

    def pipeline(self, name: str = "shop") -> Pipeline:
        p = self.runtime.find(name)
        assert p is not None
        return p

    def call(self, method: str, path: str, role: str | None = "admin", **kwargs: Any) -> Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        if role is not None:
            headers["Authorization"] = f"Bearer {TOKENS.get(role, role)}"
        return self.client.request(method, path, headers=headers, **kwargs)

    def audit(self) -> list[dict[str, Any]]:
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines()]

    def close(self) -> None:
        self.client.close()
        self.runtime.shutdown(5)
        self.app.state.ctx.audit.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[list[ApiHarness]]:
    made: list[ApiHarness] = []
    yield made
    for h in made:
        h.close()


def start_api(
    made: list[ApiHarness], tmp: Path, pipelines: list[dict[str, Any]], **kw: Any
) -> ApiHarness:
    h = ApiHarness(tmp, pipelines, **kw)
    made.append(h)
    return h


def caught_up(p: Pipeline) -> bool:
    assert p.failure is None, p.failure
    return p.stats.captured > 0 and p.caught_up()
