"""Readiness against a real PostgreSQL sink: 503 while its database cannot be reached."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from api_helpers import ApiHarness, caught_up, harness, make_source, pipeline_doc, start_api
from e2e_helpers import pg_exec, pg_rows, wait_until
from servers import PG_PASSWORD, PgServer

__all__ = ["harness"]


def _sink(checks: list[dict[str, Any]], pipeline: str) -> dict[str, Any]:
    return next(c for c in checks if c["pipeline"] == pipeline and c["component"] == "sink")


def test_readiness_follows_the_sink_database(
    tmp_path: Path, harness: list[ApiHarness], pg_server: PgServer, pg_target_dsn: str
) -> None:
    make_source(tmp_path / "shop-src.db")
    doc = pipeline_doc(tmp_path)
    doc["sink"] = {"kind": "postgres", "dsn": pg_target_dsn, "create_tables": True}
    api = start_api(harness, tmp_path, [doc])
    pipe = api.pipeline()
    assert wait_until(lambda: caught_up(pipe), 30)
    assert pg_rows(pg_target_dsn, "SELECT count(*) FROM public.orders") == [(5,)]

    ready = api.call("GET", "/health/ready", "viewer")
    assert ready.status_code == 200, ready.text
    assert _sink(ready.json()["checks"], "shop") == {
        "pipeline": "shop",
        "component": "sink",
        "ok": True,
        "detail": None,
    }

    db = urlsplit(pg_target_dsn).path.lstrip("/")
    pg_exec(pg_server.admin_dsn, f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS false')
    try:
        down = api.call("GET", "/health/ready", "viewer")
        assert down.status_code == 503
        body = down.json()
        assert body["status"] == "unavailable"
        sink = _sink(body["checks"], "shop")
        assert sink["ok"] is False
        assert "not currently accepting connections" in sink["detail"]
        assert all(c["ok"] for c in body["checks"] if c["component"] != "sink")
        assert PG_PASSWORD not in down.text
        anonymous = api.call("GET", "/health/ready", None)
        assert anonymous.status_code == 503
        assert _sink(anonymous.json()["checks"], "shop")["detail"] is None
    finally:
        pg_exec(pg_server.admin_dsn, f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true')
    assert api.call("GET", "/health/ready", None).status_code == 200

    # a sink whose server does not answer at all (nothing listens on the port)
    gone = pipeline_doc(tmp_path, "gone")
    make_source(tmp_path / "gone-src.db")
    parts = urlsplit(pg_target_dsn)
    gone["sink"] = {
        "kind": "postgres",
        "dsn": parts._replace(netloc=f"{parts.username}:{PG_PASSWORD}@127.0.0.1:1").geturl(),
    }
    created = api.call("POST", "/api/v1/pipelines?check=false", "admin", json=gone)
    assert created.status_code == 201, created.text
    down = api.call("GET", "/health/ready", "viewer")
    assert down.status_code == 503
    assert _sink(down.json()["checks"], "shop")["ok"] is True
    detail = _sink(down.json()["checks"], "gone")["detail"]
    assert "127.0.0.1" in detail and "port 1" in detail
    assert PG_PASSWORD not in down.text
    # paused first: a delete drains the log into the sink first, for up to 10 s
    assert api.call("POST", "/api/v1/pipelines/gone/pause", "operator").status_code == 200
    assert api.call("DELETE", "/api/v1/pipelines/gone", "admin").status_code == 200
    assert api.call("GET", "/health/ready", None).status_code == 200
