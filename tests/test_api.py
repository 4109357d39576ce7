"""The management API end to end on SQLite → SQLite pipelines in this process.

Each test drives real pipelines through the HTTP API (FastAPI's TestClient) and
checks the effect in the target database.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from api_helpers import (
    GUARD,
    ApiHarness,
    caught_up,
    harness,
    make_source,
    pipeline_doc,
    rows,
    sql,
    start_api,
)
from e2e_helpers import wait_until

__all__ = ["harness"]  # the fixture, used by name


def test_list_show_and_status(tmp_path: Path, harness: list[ApiHarness]) -> None:
    make_source(tmp_path / "shop-src.db")
    api = start_api(harness, tmp_path, [pipeline_doc(tmp_path)])
    pipe = api.pipeline()
    assert wait_until(lambda: caught_up(pipe) and len(rows(tmp_path / "shop-dst.db")) == 5, 30)

    listed = api.call("GET", "/api/v1/pipelines", "viewer")
    assert listed.status_code == 200
    assert listed.json() == [
        {"name": "shop", "state": "running", "error": None, "source": "sqlite", "sink": "sqlite"}
    ]
    shown = api.call("GET", "/api/v1/pipelines/shop", "viewer").json()
    assert shown["config"]["source"]["tables"] == ["orders"]
    assert shown["config"]["transport"]["partitions"] == 2

    sql(tmp_path / "shop-src.db", "UPDATE orders SET qty = 10 WHERE id = 1")
    assert wait_until(lambda: caught_up(pipe) and rows(tmp_path / "shop-dst.db")[0] == (1, 10))
    status = api.call("GET", "/api/v1/pipelines/shop/status", "viewer").json()
    assert status["state"] == "running"
    assert status["captured"] == 6 and status["applied"] == 6
    assert status["worker_id"] == pipe.worker_id and status["role"] == "all"
    assert status["owned_partitions"] == [0, 1]
    assert status["source_position"]["seq"] >= 1
    lag = status["transport_lag"]
    assert lag["total"] == 0
    assert sum(p["end_offset"] for p in lag["partitions"]) == 6
    assert all(p["applied_offset"] == p["end_offset"] for p in lag["partitions"])
    assert status["apply_latency"]["p99_ms"] >= status["apply_latency"]["p50_ms"] >= 0
    assert status["dlq"] == {
        "dead_lettered": 0,
        "held": 0,
        "replayed": 0,
        "open": 0,
        "entries": {},
    }


def test_pause_stops_applying_and_resume_catches_up(
    tmp_path: Path, harness: list[ApiHarness]
) -> None:
    src, dst = make_source(tmp_path / "shop-src.db"), tmp_path / "shop-dst.db"
    api = start_api(harness, tmp_path, [pipeline_doc(tmp_path)])
    pipe = api.pipeline()
    assert wait_until(lambda: caught_up(pipe) and len(rows(dst)) == 5, 30)

    paused = api.call("POST", "/api/v1/pipelines/shop/pause", "operator")
    assert paused.status_code == 200, paused.text
    assert paused.json()["state"] == "paused"
    assert not pipe.alive  # both workers ended: nothing can capture or apply now
    captured = pipe.stats.captured
    sql(src, "INSERT INTO orders VALUES (6, 6)", "UPDATE orders SET qty = 20 WHERE id = 2")
    time.sleep(0.5)  # what a running pipeline would need to apply them
    assert rows(dst) == [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]
    status = api.call("GET", "/api/v1/pipelines/shop/status", "viewer").json()
    assert status["state"] == "paused" and status["captured"] == captured
    assert api.call("POST", "/api/v1/pipelines/shop/pause", "operator").is_success  # idempotent

    resumed = api.call("POST", "/api/v1/pipelines/shop/resume", "operator")
    assert resumed.status_code == 200, resumed.text
    assert wait_until(lambda: rows(dst) == rows(src), 30)
    assert wait_until(lambda: caught_up(pipe), 30)
    status = api.call("GET", "/api/v1/pipelines/shop/status", "viewer").json()
    assert status["state"] == "running"
    assert status["captured"] == captured + 2  # nothing captured twice
    assert status["transport_lag"]["total"] == 0
    assert api.call("POST", "/api/v1/pipelines/shop/resume", "operator").is_success  # no-op


def test_lag_counts_the_events_waiting_for_the_sink(
    tmp_path: Path, harness: list[ApiHarness]
) -> None:
    src, dst = make_source(tmp_path / "shop-src.db"), tmp_path / "shop-dst.db"
    api = start_api(harness, tmp_path, [pipeline_doc(tmp_path)])
    pipe = api.pipeline()
    assert wait_until(lambda: caught_up(pipe) and len(rows(dst)) == 5, 30)

    blocker = sqlite3.connect(dst, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the sink cannot write until this ends
    try:
        sql(src, *(f"INSERT INTO orders VALUES ({i}, {i})" for i in range(6, 16)))
        assert wait_until(lambda: pipe.stats.captured == 15, 30)

        def lag() -> int | None:
            status = api.call("GET", "/api/v1/pipelines/shop/status", "viewer").json()
            total: int | None = status["transport_lag"]["total"]
            return total

        assert lag() == 10
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert wait_until(lambda: lag() == 0, 30)
    assert rows(dst) == rows(src)


def test_restart_brings_a_failed_pipeline_back_once_the_cause_is_fixed(
    tmp_path: Path, harness: list[ApiHarness]
) -> None:
    src, dst = make_source(tmp_path / "shop-src.db"), tmp_path / "shop-dst.db"
    sql(dst, "CREATE TABLE orders (id INTEGER PRIMARY KEY, qty INTEGER NOT NULL)")
    sql(dst, GUARD.format(op="INSERT"), GUARD.format(op="UPDATE"))
    doc = pipeline_doc(tmp_path, dlq={"enabled": False, "max_attempts": 1})
    api = start_api(harness, tmp_path, [doc])
    pipe = api.pipeline()
    assert wait_until(lambda: caught_up(pipe) and len(rows(dst)) == 5, 30)

    sql(src, "UPDATE orders SET qty = -3 WHERE id = 3")  # the target refuses it
    assert wait_until(lambda: pipe.stats.state == "failed", 30)
    listed = api.call("GET", "/api/v1/pipelines", "viewer").json()
    assert listed[0]["state"] == "failed" and "qty must not be negative" in listed[0]["error"]

    sql(dst, "DROP TRIGGER no_negative_UPDATE", "DROP TRIGGER no_negative_INSERT")  # the fix
    restarted = api.call("POST", "/api/v1/pipelines/shop/restart", "operator")
    assert restarted.status_code == 200, restarted.text
    assert wait_until(lambda: rows(dst) == rows(src), 30)
    assert pipe.failure is None and pipe.stats.state == "running"
    audit = [e for e in api.audit() if e["action"] == "pipeline.restart"]
    assert audit[-1]["detail"] == {"previous_state": "failed"}


def test_restart_of_a_running_pipeline_goes_on_without_loss(
    tmp_path: Path, harness: list[ApiHarness]
) -> None:
    src, dst = make_source(tmp_path / "shop-src.db"), tmp_path / "shop-dst.db"
    api = start_api(harness, tmp_path, [pipeline_doc(tmp_path)])
    pipe = api.pipeline()
    assert wait_until(lambda: caught_up(pipe) and len(rows(dst)) == 5, 30)
    for i in range(6, 56):
        sql(src, f"INSERT INTO orders VALUES ({i}, {i})")
        if i == 20:
            assert api.call("POST", "/api/v1/pipelines/shop/restart", "operator").is_success
    assert wait_until(lambda: rows(dst) == rows(src), 30)
    assert pipe.stats.state == "running"


def test_create_update_and_delete_a_pipeline(tmp_path: Path, harness: list[ApiHarness]) -> None:
    make_source(tmp_path / "shop-src.db")
    api = start_api(harness, tmp_path, [pipeline_doc(tmp_path)])
    src, dst = make_source(tmp_path / "billing-src.db", 3), tmp_path / "billing-dst.db"
    doc = pipeline_doc(tmp_path, "billing")

    created = api.call("POST", "/api/v1/pipelines", "admin", json=doc)
    assert created.status_code == 201, created.text
    assert created.json()["name"] == "billing"
    assert wait_until(lambda: rows(dst) == [(1, 1), (2, 2), (3, 3)], 30)
    names = [p["name"] for p in api.call("GET", "/api/v1/pipelines", "viewer").json()]
    assert names == ["shop", "billing"]
    again = api.call("POST", "/api/v1/pipelines", "admin", json=doc)
    assert again.status_code == 409
    assert again.json() == {
        "error": "pipeline billing exists; PUT /api/v1/pipelines/billing replaces it"
    }

    # update: the same source, now into another target table
    doc["sink"]["tables"] = {"main.orders": {"target": "orders_copy"}}
    updated = api.call("PUT", "/api/v1/pipelines/billing", "admin", json=doc)
    assert updated.status_code == 200, updated.text
    assert updated.json()["config"]["sink"]["tables"] == {
        "main.orders": {"target": "orders_copy", "conflict": None, "missing_columns": "error"}
    }
    sql(src, "INSERT INTO orders VALUES (4, 4)")
    assert wait_until(lambda: rows(dst, "SELECT id, qty FROM orders_copy") == [(4, 4)], 30)
    assert rows(dst) == [(1, 1), (2, 2), (3, 3)]  # the old target table is left alone
    mismatch = api.call("PUT", "/api/v1/pipelines/other", "admin", json=doc)
    assert mismatch.status_code == 422
    assert mismatch.json() == {
        "error": "name: 'billing' in the body differs from 'other' in the path"
    }

    deleted = api.call("DELETE", "/api/v1/pipelines/billing", "admin")
    assert deleted.status_code == 200 and deleted.json() == {"name": "billing", "deleted": True}
    assert api.call("GET", "/api/v1/pipelines/billing", "viewer").status_code == 404
    assert [p["name"] for p in api.call("GET", "/api/v1/pipelines", "viewer").json()] == ["shop"]
    sql(src, "INSERT INTO orders VALUES (5, 5)")
    time.sleep(0.5)  # a deleted pipeline has no workers left to apply this
    assert rows(dst, "SELECT id FROM orders_copy") == [(4,)]

    # PUT of an unknown name creates it: the log and positions are still there, so it
    # goes on where the deleted one stopped
    created_again = api.call("PUT", "/api/v1/pipelines/billing", "admin", json=doc)
    assert created_again.status_code == 201, created_again.text
    assert wait_until(lambda: rows(dst, "SELECT id FROM orders_copy") == [(4,), (5,)], 30)

    actions = [(e["action"], e["target"], e["outcome"]) for e in api.audit()]
    assert actions == [
        ("pipeline.create", "pipeline billing", "ok"),
        ("pipeline.create", "pipeline billing", "failed"),
        ("pipeline.update", "pipeline billing", "ok"),
        ("pipeline.update", "pipeline other", "failed"),
        ("pipeline.delete", "pipeline billing", "ok"),
        ("pipeline.update", "pipeline billing", "ok"),
    ]


def test_create_checks_connections_unless_told_not_to(
    tmp_path: Path, harness: list[ApiHarness]
) -> None:
    make_source(tmp_path / "shop-src.db")
    api = start_api(harness, tmp_path, [pipeline_doc(tmp_path)])
    doc = pipeline_doc(tmp_path, "ghost")  # its source database does not exist
    refused = api.call("POST", "/api/v1/pipelines", "admin", json=doc)
    assert refused.status_code == 400
    assert "ghost-src.db" in refused.json()["error"]
    assert api.runtime.find("ghost") is None

    invalid = api.call("POST", "/api/v1/pipelines", "admin", json={**doc, "batch": {"max": 1}})
    assert invalid.status_code == 422
    assert invalid.json() == {"error": "batch.max: unknown key (check the spelling)"}


def test_dlq_list_show_replay_and_purge(tmp_path: Path, harness: list[ApiHarness]) -> None:
    src, dst = make_source(tmp_path / "shop-src.db"), tmp_path / "shop-dst.db"
    sql(dst, "CREATE TABLE orders (id INTEGER PRIMARY KEY, qty INTEGER NOT NULL)")
    sql(dst, GUARD.format(op="INSERT"), GUARD.format(op="UPDATE"))
    api = start_api(harness, tmp_path, [pipeline_doc(tmp_path)])
    pipe = api.pipeline()
    assert wait_until(lambda: caught_up(pipe) and len(rows(dst)) == 5, 30)
    assert api.call("GET", "/api/v1/pipelines/shop/dlq", "viewer").json() == []

    sql(src, "UPDATE orders SET qty = -2 WHERE id = 2")  # refused by the target
    assert wait_until(lambda: pipe.stats.dead_lettered == 1, 30)
    sql(src, "UPDATE orders SET qty = 20 WHERE id = 2", "UPDATE orders SET qty = -4 WHERE id = 4")
    assert wait_until(lambda: caught_up(pipe) and pipe.stats.dead_lettered == 2, 30)

    listed = api.call("GET", "/api/v1/pipelines/shop/dlq", "viewer").json()
    assert [(e["id"], e["key"], e["status"], e["blocked_by"]) for e in listed] == [
        (1, '{"id":2}', "dead", None),
        (2, '{"id":2}', "held", 1),
        (3, '{"id":4}', "dead", None),
    ]
    assert "qty must not be negative" in listed[0]["error"]
    assert listed[0]["table"] == "main.orders" and listed[0]["attempts"] == 2
    only_dead = api.call("GET", "/api/v1/pipelines/shop/dlq?status=dead&table=orders", "viewer")
    assert [e["id"] for e in only_dead.json()] == [1, 3]
    shown = api.call("GET", "/api/v1/pipelines/shop/dlq/1", "viewer").json()
    assert shown["event"]["after"] == {"id": 2, "qty": -2} and shown["event"]["op"] == "u"
    assert api.call("GET", "/api/v1/pipelines/shop/dlq/99", "viewer").status_code == 404
    status = api.call("GET", "/api/v1/pipelines/shop/status", "viewer").json()
    assert status["dlq"]["entries"] == {"dead": 2, "held": 1}

    # replay before the fix: fails again, nothing moves
    again = api.call(
        "POST", "/api/v1/pipelines/shop/dlq/replay", "operator", json={"ids": [1], "wait": 30}
    )
    assert again.status_code == 200, again.text
    result = again.json()
    assert result["queued"] == [1, 2] and result["worker_running"] is True
    assert [(e["id"], e["status"]) for e in result["entries"]] == [(1, "dead"), (2, "held")]
    assert "qty must not be negative" in result["entries"][0]["error"]
    assert rows(dst)[1] == (2, 2)

    sql(dst, "DROP TRIGGER no_negative_UPDATE", "DROP TRIGGER no_negative_INSERT")  # the fix
    done = api.call(
        "POST", "/api/v1/pipelines/shop/dlq/replay", "operator", json={"ids": [1], "wait": 30}
    ).json()
    assert [(e["id"], e["status"]) for e in done["entries"]] == [(1, "replayed"), (2, "replayed")]
    assert rows(dst)[1] == (2, 20)

    # purge entry 3 (id 4 keeps the target's row)
    purged = api.call("POST", "/api/v1/pipelines/shop/dlq/purge", "operator", json={"ids": [3]})
    assert purged.status_code == 200 and purged.json() == {"deleted": 1, "released": []}
    assert api.call("GET", "/api/v1/pipelines/shop/dlq", "viewer").json() == []
    history = api.call("GET", "/api/v1/pipelines/shop/dlq?status=all", "viewer").json()
    assert [e["status"] for e in history] == ["replayed", "replayed"]
    cleared = api.call(
        "POST", "/api/v1/pipelines/shop/dlq/purge", "operator", json={"replayed": True}
    )
    assert cleared.json()["deleted"] == 2
    assert rows(dst) == [(1, 1), (2, 20), (3, 3), (4, 4), (5, 5)]

    bad = api.call("POST", "/api/v1/pipelines/shop/dlq/replay", "operator", json={})
    assert bad.status_code == 422
    assert bad.json() == {"error": "say which entries: ids, table or all: true"}
    audit = [(e["action"], e["outcome"], e.get("detail")) for e in api.audit()]
    assert audit[:2] == [
        ("dlq.replay", "ok", {"ids": [1], "wait": 30.0, "queued": [1, 2]}),
        ("dlq.replay", "ok", {"ids": [1], "wait": 30.0, "queued": [1, 2]}),
    ]
    assert audit[2] == ("dlq.purge", "ok", {"ids": [3]})


def test_dlq_replay_all_applies_once_the_cause_is_fixed(
    tmp_path: Path, harness: list[ApiHarness]
) -> None:
    src, dst = make_source(tmp_path / "shop-src.db"), tmp_path / "shop-dst.db"
    sql(dst, "CREATE TABLE orders (id INTEGER PRIMARY KEY, qty INTEGER NOT NULL)")
    sql(dst, GUARD.format(op="INSERT"), GUARD.format(op="UPDATE"))
    api = start_api(harness, tmp_path, [pipeline_doc(tmp_path)])
    pipe = api.pipeline()
    assert wait_until(lambda: caught_up(pipe) and len(rows(dst)) == 5, 30)
    sql(src, "INSERT INTO orders VALUES (6, -6)", "UPDATE orders SET qty = -1 WHERE id = 1")
    assert wait_until(lambda: caught_up(pipe) and pipe.stats.dead_lettered == 2, 30)

    sql(dst, "DROP TRIGGER no_negative_UPDATE", "DROP TRIGGER no_negative_INSERT")
    res = api.call(
        "POST", "/api/v1/pipelines/shop/dlq/replay", "operator", json={"all": True, "wait": 30}
    )
    assert res.status_code == 200, res.text
    assert {e["status"] for e in res.json()["entries"]} == {"replayed"}
    assert rows(dst) == rows(src)
    assert pipe.stats.replayed == 2


def test_conflicts_list_show_and_resolve(tmp_path: Path, harness: list[ApiHarness]) -> None:
    src, dst = make_source(tmp_path / "shop-src.db", 3), tmp_path / "shop-dst.db"
    doc = pipeline_doc(
        tmp_path, sink={**pipeline_doc(tmp_path)["sink"], "tables": {"orders": None}}
    )
    doc["sink"]["tables"] = {"main.orders": {"conflict": {"strategy": "manual"}}}
    api = start_api(harness, tmp_path, [doc])
    pipe = api.pipeline()
    assert wait_until(lambda: caught_up(pipe) and len(rows(dst)) == 3, 30)

    sql(dst, "UPDATE orders SET qty = 200 WHERE id = 2")  # a local change in the target
    sql(src, "UPDATE orders SET qty = 21 WHERE id = 2", "UPDATE orders SET qty = 31 WHERE id = 3")
    assert wait_until(lambda: caught_up(pipe) and rows(dst)[2] == (3, 31), 30)
    assert rows(dst)[1] == (2, 200)  # parked, not applied

    listed = api.call("GET", "/api/v1/pipelines/shop/conflicts", "viewer").json()
    assert [(c["id"], c["key"], c["op"], c["status"]) for c in listed] == [
        (1, {"id": 2}, "u", "open")
    ]
    shown = api.call("GET", "/api/v1/pipelines/shop/conflicts/1", "viewer").json()
    assert shown["current"]["qty"] == 200 and shown["incoming"]["after"]["qty"] == 21
    assert api.call("GET", "/api/v1/pipelines/shop/conflicts/7", "viewer").status_code == 404

    wrong = api.call(
        "POST", "/api/v1/pipelines/shop/conflicts/1/resolve", "operator", json={"use": "mine"}
    )
    assert wrong.status_code == 422
    assert wrong.json() == {"error": "use: Input should be 'incoming' or 'current' (got 'mine')"}
    res = api.call(
        "POST", "/api/v1/pipelines/shop/conflicts/1/resolve", "operator", json={"use": "incoming"}
    )
    assert res.status_code == 200, res.text
    assert res.json() == {"id": 1, "use": "incoming", "resolved": [1]}
    assert rows(dst)[1] == (2, 21)
    assert api.call("GET", "/api/v1/pipelines/shop/conflicts", "viewer").json() == []
    every = api.call("GET", "/api/v1/pipelines/shop/conflicts?all=true", "viewer").json()
    assert every[0]["status"] == "resolved" and every[0]["resolution"] == "incoming"


def test_config_validate(tmp_path: Path, harness: list[ApiHarness]) -> None:
    make_source(tmp_path / "shop-src.db")
    api = start_api(harness, tmp_path, [pipeline_doc(tmp_path)])
    ok = api.call(
        "POST", "/api/v1/config/validate", "viewer", json={"pipelines": [pipeline_doc(tmp_path)]}
    )
    assert ok.status_code == 200 and ok.json() == {
        "valid": True,
        "error": None,
        "pipelines": ["shop"],
    }
    one = api.call("POST", "/api/v1/config/validate", "viewer", json=pipeline_doc(tmp_path, "x"))
    assert one.json() == {"valid": True, "error": None, "pipelines": ["x"]}

    yaml_doc = (
        "pipelines:\n  - name: a\n    source: {kind: mysql, dsn: x}\n"
        "    sink: {kind: sqlite, path: t.db}\n"
    )
    bad = api.call(
        "POST",
        "/api/v1/config/validate",
        "viewer",
        content=yaml_doc,
        headers={"Content-Type": "application/yaml"},
    )
    assert bad.status_code == 200
    assert bad.json() == {
        "valid": False,
        "error": "config: pipelines[0].source: unknown kind 'mysql'; "
        "expected one of 'postgres', 'sqlite'",
        "pipelines": [],
    }
    broken = api.call(
        "POST",
        "/api/v1/config/validate",
        "viewer",
        content="pipelines: [",
        headers={"Content-Type": "application/yaml"},
    )
    assert broken.json()["valid"] is False
    assert broken.json()["error"].startswith("invalid YAML at line 1")
    pipeline_error = api.call(
        "POST", "/api/v1/config/validate", "viewer", json={"name": "Bad Name"}
    ).json()
    assert pipeline_error["valid"] is False
    assert pipeline_error["error"].startswith("pipeline: name: use lowercase letters, digits")
    assert "source: Field required" in pipeline_error["error"]


def test_openapi_and_docs_are_served(tmp_path: Path, harness: list[ApiHarness]) -> None:
    make_source(tmp_path / "shop-src.db")
    api = start_api(harness, tmp_path, [pipeline_doc(tmp_path)])
    spec = api.call("GET", "/openapi.json", None)
    assert spec.status_code == 200
    paths = spec.json()["paths"]
    for path in (
        "/api/v1/pipelines",
        "/api/v1/pipelines/{name}",
        "/api/v1/pipelines/{name}/status",
        "/api/v1/pipelines/{name}/pause",
        "/api/v1/pipelines/{name}/dlq/replay",
        "/api/v1/pipelines/{name}/conflicts/{conflict_id}/resolve",
        "/api/v1/config/validate",
        "/health/ready",
    ):
        assert path in paths, path
    assert "HTTPBearer" in spec.json()["components"]["securitySchemes"]
    docs = api.call("GET", "/docs", None)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_health_live_and_ready(tmp_path: Path, harness: list[ApiHarness]) -> None:
    make_source(tmp_path / "shop-src.db")
    api = start_api(harness, tmp_path, [pipeline_doc(tmp_path)])
    pipe = api.pipeline()
    assert wait_until(lambda: caught_up(pipe), 30)
    live = api.call("GET", "/health/live", None)
    assert live.status_code == 200 and live.json()["status"] == "ok"
    ready = api.call("GET", "/health/ready", None)
    assert ready.status_code == 200, ready.text
    assert {(c["component"], c["ok"]) for c in ready.json()["checks"]} == {
        ("source", True),
        ("transport", True),
        ("sink", True),
    }

    (tmp_path / "shop-src.db").rename(tmp_path / "moved.db")  # the source goes away
    down = api.call("GET", "/health/ready", None)
    assert down.status_code == 503
    failed = [c for c in down.json()["checks"] if not c["ok"]]
    assert [(c["component"], c["detail"]) for c in failed] == [("source", None)]  # no token
    detailed = api.call("GET", "/health/ready", "viewer").json()
    source = next(c for c in detailed["checks"] if c["component"] == "source")
    assert "shop-src.db does not exist" in source["detail"]
    (tmp_path / "moved.db").rename(tmp_path / "shop-src.db")
    assert api.call("GET", "/health/ready", None).status_code == 200
