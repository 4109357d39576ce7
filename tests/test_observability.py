"""Metrics, trace and JSON logs of one running `syncline run` (SQLite → SQLite, apply child).

One process runs for the whole module with ``--log-format json --metrics
127.0.0.1:0`` and monitoring on; the changes below flow through it, one of them
refused by the target (dead-lettered). The tests then read the same run three
ways: scraping ``/metrics``, ``syncline trace``, and the JSON log lines.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e_helpers import SynclineProcess, syncline, wait_until

ORDERS = "CREATE TABLE orders (id INTEGER PRIMARY KEY, qty INTEGER NOT NULL)"
ITEMS = "CREATE TABLE items (sku TEXT NOT NULL, n INTEGER NOT NULL, v TEXT, PRIMARY KEY (sku, n))"
GUARD = (
    "CREATE TRIGGER no_negative BEFORE INSERT ON orders WHEN NEW.qty < 0 "
    "BEGIN SELECT RAISE(ABORT, 'qty must not be negative'); END"
)
BAD_ID = 7

# what the changes below must add up to, per (table, op)
EXPECTED_CAPTURED = {
    ("main.orders", "c"): 20,
    ("main.orders", "u"): 5,
    ("main.orders", "d"): 3,
    ("main.items", "c"): 8,
    ("main.items", "u"): 2,
    ("main.items", "d"): 1,
}
EXPECTED_APPLIED = {**EXPECTED_CAPTURED, ("main.orders", "c"): 19}  # one dead-lettered


def sql(path: Path, *stmts: str) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        for s in stmts:
            db.execute(s)
    finally:
        db.close()


def count(path: Path, table: str) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        db.close()


class Run:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.src, self.dst = tmp / "src.db", tmp / "dst.db"
        self.config = tmp / "syncline.yaml"
        self.log = tmp / "run.log"
        self.port = 0
        self.proc: SynclineProcess | None = None

    def log_lines(self) -> list[str]:
        return [ln for ln in self.log.read_text().splitlines() if ln.strip()]

    def metrics_url(self) -> str | None:
        for line in self.log_lines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if str(rec.get("event", "")).startswith("metrics at "):
                return str(rec["event"]).removeprefix("metrics at ")
        return None

    def scrape(self) -> dict[str, list[Any]]:
        url = self.metrics_url()
        assert url is not None
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        samples: dict[str, list[Any]] = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                samples.setdefault(s.name, []).append(s)
        return samples


def by_table_op(samples: dict[str, list[Any]], name: str, pipeline: str = "shop") -> dict[Any, int]:
    return {
        (s.labels["table"], s.labels["op"]): int(s.value)
        for s in samples.get(name, [])
        if s.labels["pipeline"] == pipeline and s.value
    }


def value(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    hits = [s.value for s in samples.get(name, []) if labels.items() <= s.labels.items()]
    assert len(hits) == 1, (name, labels, hits)
    return float(hits[0])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    r = Run(tmp_path_factory.mktemp("observability"))
    sql(r.src, ORDERS, ITEMS)
    sql(r.dst, ORDERS, ITEMS, GUARD)
    r.config.write_text(
        f"""
pipelines:
  - name: shop
    source: {{kind: sqlite, path: {r.src}, tables: [orders, items]}}
    transport: {{path: {r.tmp / "log"}, partitions: 2, fsync: false}}
    sink: {{kind: sqlite, path: {r.dst}}}
    batch: {{max_events: 50, max_wait_ms: 5}}
    retry: {{initial_delay_ms: 10, max_delay_ms: 50}}
    dlq: {{max_attempts: 1}}
monitoring:
  enabled: true
  store: {{path: {r.tmp / "monitoring.db"}}}
"""
    )
    r.proc = SynclineProcess(r.config, r.log, ("--log-format", "json", "--metrics", "127.0.0.1:0"))
    try:
        assert wait_until(lambda: r.metrics_url() is not None, 30), r.log.read_text()
        assert wait_until(lambda: "started" in r.log.read_text(), 30)
        values = ", ".join(f"({i}, {-1 if i == BAD_ID else i})" for i in range(1, 21))
        sql(r.src, f"INSERT INTO orders VALUES {values}")
        for i in range(1, 6):
            sql(r.src, f"UPDATE orders SET qty = qty + 100 WHERE id = {i}")
        sql(r.src, "DELETE FROM orders WHERE id IN (10, 11, 12)")
        for i in range(8):
            sql(r.src, f"INSERT INTO items VALUES ('sku-{i % 3}', {i}, 'v{i}')")
        sql(r.src, "UPDATE items SET v = 'w' WHERE n IN (1, 2)", "DELETE FROM items WHERE n = 0")
        assert wait_until(
            lambda: count(r.dst, "orders") == 16 and count(r.dst, "items") == 7, 60
        ), r.log.read_text()[-3000:]
        yield r
    finally:
        if r.proc.alive():
            r.proc.terminate()


def test_metrics_count_what_was_captured_published_and_applied_by_table_and_op(run: Run) -> None:
    def settled() -> bool:
        s = run.scrape()
        return by_table_op(s, "syncline_events_applied_total") == EXPECTED_APPLIED

    assert wait_until(settled, 30), by_table_op(run.scrape(), "syncline_events_applied_total")
    s = run.scrape()
    assert by_table_op(s, "syncline_events_captured_total") == EXPECTED_CAPTURED
    assert by_table_op(s, "syncline_events_published_total") == EXPECTED_CAPTURED
    assert by_table_op(s, "syncline_events_dead_lettered_total") == {("main.orders", "c"): 1}
    assert value(s, "syncline_dlq_open", pipeline="shop") == 1
    # every applied change (no snapshot reads here) has one latency sample
    applied = sum(EXPECTED_APPLIED.values())
    assert value(s, "syncline_apply_latency_seconds_count", pipeline="shop") == applied
    assert value(s, "syncline_apply_latency_seconds_bucket", pipeline="shop", le="+Inf") == applied
    assert value(s, "syncline_apply_latency_seconds_sum", pipeline="shop") > 0
    assert value(s, "syncline_pipeline_state", pipeline="shop", state="running") == 1
    assert value(s, "syncline_monitoring_dropped_total", pipeline="shop") == 0


def test_lag_returns_to_zero_on_every_partition(run: Run) -> None:
    def lags() -> dict[str, float]:
        return {
            x.labels["partition"]: x.value
            for x in run.scrape().get("syncline_transport_lag_events", [])
        }

    assert wait_until(lambda: set(lags().values()) == {0.0}, 30), lags()
    assert sorted(lags()) == ["0", "1"]


def trace(run: Run, *args: str) -> list[dict[str, Any]]:
    result = syncline("trace", str(run.config), *args, "--json")
    assert result.returncode == 0, result.stderr
    out: list[dict[str, Any]] = json.loads(result.stdout)
    return out


def test_trace_shows_captured_published_applied_in_order(run: Run) -> None:
    def traced() -> list[dict[str, Any]]:
        return trace(run, "--table", "orders", "--key", '{"id": 3}')

    assert wait_until(lambda: [r["status"] for r in traced()] == ["applied", "applied"], 30)
    update, insert = traced()  # newest first
    assert (update["op"], insert["op"]) == ("u", "c")
    for rec in (update, insert):
        stages = [st["stage"] for st in rec["stages"]]
        assert stages == ["committed", "captured", "published", "applied"], rec
        times = [st["at_us"] for st in rec["stages"]]
        assert times == sorted(times)
        assert rec["key"] == {"id": 3} and rec["table"] == "main.orders"
        assert rec["stages"][-1]["detail"] == "sqlite:orders"
    # a composite key matches in any column order; the human form prints the stages
    rows = trace(run, "--table", "main.items", "--key", '{"n": 2, "sku": "sku-2"}')
    assert [r["op"] for r in rows] == ["u", "c"]
    human = syncline("trace", str(run.config), "-t", "orders", "-k", '{"id": 3}', "--limit", "1")
    assert human.returncode == 0
    lines = human.stdout.splitlines()
    assert lines[0].startswith('main.orders {"id":3} op=u') and "[applied]" in lines[0]
    assert [ln.split()[0] for ln in lines[1:]] == ["committed", "captured", "published", "applied"]


def test_dead_lettered_change_traces_to_its_error_and_log_line(run: Run) -> None:
    def dead() -> list[dict[str, Any]]:
        return trace(run, "--table", "orders", "--key", f'{{"id": {BAD_ID}}}')

    assert wait_until(lambda: [r["status"] for r in dead()] == ["dead_lettered"], 30)
    (rec,) = dead()
    assert "qty must not be negative" in rec["error"]
    stages = [st["stage"] for st in rec["stages"]]
    assert stages == ["committed", "captured", "published", "dead_lettered"]
    cid = rec["correlation_id"]
    # the capture side wrote this record (captured and published times) under the same id
    # that the apply side, in its child process, put on its log line
    assert len(cid) == 16
    logged = [json.loads(ln) for ln in run.log_lines()]
    hits = [x for x in logged if x.get("cid") == cid]
    assert len(hits) == 1, hits
    line = hits[0]
    assert line["level"] == "error" and "dead-lettered" in line["event"]
    assert line["pipeline"] == "shop" and line["table"] == "main.orders"
    assert line["key"] == '{"id":7}' and line["position"] == rec["position"]
    assert trace(run, "--id", cid)[0]["key"] == {"id": BAD_ID}


def test_every_log_line_is_json_with_level_time_event(run: Run) -> None:
    lines = run.log_lines()
    assert len(lines) >= 3
    for line in lines:
        rec = json.loads(line)
        assert {"level", "time", "event"} <= rec.keys(), rec
    assert any(json.loads(ln).get("batch") for ln in lines), "batch-level lines carry a batch id"
