"""Prometheus export of a pipeline applying in a thread; the ASGI app; --metrics errors."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e_helpers import syncline, wait_until
from syncline.config import load_config
from syncline.monitoring.trace import find
from syncline.observability.prometheus import asgi_app, build_registry, render
from syncline.pipeline import Pipeline
from syncline.runtime import Runtime


def sql(path: Path, *stmts: str) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        for s in stmts:
            db.execute(s)
    finally:
        db.close()


def samples(text: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


@pytest.fixture
def config(tmp_path: Path) -> Path:
    ddl = "CREATE TABLE orders (id INTEGER PRIMARY KEY, qty INTEGER NOT NULL)"
    sql(tmp_path / "src.db", ddl, "INSERT INTO orders VALUES (1, 1), (2, 2), (3, 3)")
    sql(
        tmp_path / "dst.db",
        ddl,
        "CREATE TRIGGER guard BEFORE UPDATE ON orders WHEN NEW.qty < 0 "
        "BEGIN SELECT RAISE(ABORT, 'qty must not be negative'); END",
    )
    path = tmp_path / "syncline.yaml"
    path.write_text(
        f"""
pipelines:
  - name: shop
    source: {{kind: sqlite, path: {tmp_path / "src.db"}, tables: [orders]}}
    transport: {{path: {tmp_path / "log"}, partitions: 2, fsync: false}}
    sink: {{kind: sqlite, path: {tmp_path / "dst.db"}}}
    batch: {{max_events: 100, max_wait_ms: 5}}
    apply_in: thread
    retry: {{initial_delay_ms: 10, max_delay_ms: 50}}
    dlq: {{max_attempts: 1}}
monitoring: {{enabled: true, store: {{path: {tmp_path / "mon.db"}}}}}
"""
    )
    return path


@pytest.fixture
def runtime(config: Path) -> Iterator[Runtime]:
    rt = Runtime(load_config(config))
    assert rt.monitor is not None
    rt.monitor.flush_interval = 0.02
    rt.monitor.start()
    for p in rt.pipelines:
        p.start()
    yield rt
    rt.shutdown(5)


def test_thread_apply_counts_snapshot_reads_dead_letters_and_held_changes(
    config: Path, runtime: Runtime
) -> None:
    (pipe,) = runtime.pipelines
    src = config.parent / "src.db"
    assert wait_until(lambda: pipe.stats.applied_by.get(("main.orders", "r")) == 3, 30)
    sql(src, "UPDATE orders SET qty = -1 WHERE id = 2")  # refused: dead-lettered
    # (after it failed: in one batch the two would fold into one good update)
    assert wait_until(lambda: pipe.stats.dead_lettered == 1, 30)
    sql(src, "UPDATE orders SET qty = 5 WHERE id = 2")  # same key: held behind it
    sql(src, "UPDATE orders SET qty = 7 WHERE id = 3")
    assert wait_until(lambda: pipe.stats.held == 1 and pipe.caught_up(), 30)
    s = samples(render(runtime.metrics_registry()).decode())

    def by(name: str) -> dict[Any, float]:
        return {(x.labels["table"], x.labels["op"]): x.value for x in s[name]}

    assert by("syncline_events_captured_total") == {
        ("main.orders", "r"): 3,
        ("main.orders", "u"): 3,
    }
    assert by("syncline_events_applied_total") == {("main.orders", "r"): 3, ("main.orders", "u"): 1}
    assert by("syncline_events_dead_lettered_total") == {("main.orders", "u"): 1}
    assert [x.value for x in s["syncline_events_held_total"]] == [1]
    assert [x.value for x in s["syncline_dlq_open"]] == [2]
    assert [x.value for x in s["syncline_snapshot_rows"]] == [3]
    # snapshot reads have no commit time to measure from: one latency sample, the update
    assert [x.value for x in s["syncline_apply_latency_seconds_count"]] == [1]
    assert {x.labels["partition"]: x.value for x in s["syncline_transport_lag_events"]} == {
        "0": 0,
        "1": 0,
    }
    # the held change is traced as held, behind the dead-lettered one
    assert runtime.monitor is not None
    cfg = runtime.monitor.cfg
    assert wait_until(lambda: len(find(cfg, table="orders", key={"id": 2})) == 3, 10)
    held, dead, read = find(cfg, table="orders", key={"id": 2})
    assert (held.status, dead.status, read.status) == ("held", "dead_lettered", "applied")
    assert "qty must not be negative" in (dead.error or "")


def test_asgi_app_serves_the_registry(config: Path) -> None:
    pipe = Pipeline(load_config(config).pipelines[0])
    pipe.stats.applied_by[("main.orders", "c")] = 4
    app = asgi_app(build_registry(lambda: [pipe]))
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/metrics",
        "headers": [],
        "query_string": b"",
    }
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 200
    body = b"".join(m.get("body", b"") for m in sent[1:]).decode()
    assert 'syncline_events_applied_total{op="c",pipeline="shop",table="main.orders"} 4.0' in body
    pipe.transport.close()


def test_bad_metrics_address_is_one_line(config: Path) -> None:
    result = syncline("run", str(config), "--metrics", "localhost:http")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "syncline: error: --metrics: 'localhost:http' is not HOST:PORT (port 0-65535; 0 picks a free one)"
    ]


def test_dashboard_and_scrape_config_use_exported_metric_names(config: Path) -> None:
    """deploy/grafana/syncline.json must not query a metric the collector does not export."""
    import json
    import re

    import yaml

    from e2e_helpers import REPO

    pipe = Pipeline(load_config(config).pipelines[0])
    text = render(build_registry(lambda: [pipe])).decode()
    pipe.transport.close()
    # every family is described even before it has samples; histograms add their series
    families = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    exported = families | {
        f"{f}{sfx}" for f in families for sfx in ("_bucket", "_count", "_sum", "_total")
    }
    dashboard = json.loads((REPO / "deploy/grafana/syncline.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\bsyncline_[a-z_]+", e)}
    assert len(used) >= 15
    assert used <= exported, used - exported
    prom = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    assert prom["scrape_configs"][0]["metrics_path"] == "/metrics"
