"""Monitoring store on PostgreSQL, and a PostgreSQL pipeline's metrics and trace."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e_helpers import pg_exec, wait_until
from syncline.config import MonitoringConfig, parse_config
from syncline.events import now_us
from syncline.monitoring.records import Row
from syncline.monitoring.store import open_store
from syncline.monitoring.trace import find
from syncline.observability.prometheus import render
from syncline.runtime import Runtime

HOUR_US = 3600 * 1_000_000


def _row(key: str, position: str, recorded_us: int, table: str = "public.t_1", **cols: Any) -> Row:
    base: dict[str, Any] = {
        "cid": None, "op": None, "committed_us": None, "captured_us": None,
        "published_us": None, "log_partition": None, "log_offset": None, "applied_us": None,
        "target": None, "failed_us": None, "failure": None, "error": None,
    }  # fmt: skip
    base.update(cols)
    return ("p", table, key, position, *base.values(), recorded_us)  # type: ignore[return-value]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_store_merges_stages_queries_and_purges(
    kind: str, tmp_path: Path, new_pg_db: Callable[[], str]
) -> None:
    store_cfg: dict[str, str] = (
        {"kind": "postgres", "dsn": new_pg_db()}
        if kind == "postgres"
        else {"kind": "sqlite", "path": str(tmp_path / "m.db")}
    )
    cfg = MonitoringConfig.model_validate({"enabled": True, "store": store_cfg})
    now = now_us()
    store = open_store(cfg)
    try:
        key = '{"id":1,"k":"a"}'
        store.write([_row(key, "0/10#1", now, applied_us=now, target="postgres:t_1")])
        store.write(
            [
                _row(key, "0/10#1", now - 10, cid="c1", op="u", committed_us=now - 30,
                     captured_us=now - 20, published_us=now - 10, log_partition=2),
                _row(key, "0/8#4", now - 40, op="c", committed_us=now - 50,
                     failed_us=now - 40, failure="dead_lettered", error="boom"),
                _row('{"id":9}', "0/5#1", now - 2 * HOUR_US, op="c"),
                _row(key, "0/10#1", now, table="public.tx1", op="c"),
            ]
        )  # fmt: skip
        # a bare table name matches any schema; '_' is not a wildcard
        recs = find(cfg, table="t_1", key={"k": "a", "id": 1})
        assert [(r.position, r.status) for r in recs] == [
            ("0/10#1", "applied"),
            ("0/8#4", "dead_lettered"),
        ]
        assert [s.name for s in recs[0].stages] == [
            "committed", "captured", "published", "applied",
        ]  # fmt: skip
        assert recs[0].correlation_id == "c1" and recs[1].error == "boom"
        assert [r.table for r in find(cfg, table="tx1", key={"id": 1, "k": "a"})] == ["public.tx1"]
        assert [r.position for r in find(cfg, correlation_id="c1")] == ["0/10#1"]
        assert store.purge(now - HOUR_US) == 1
        assert find(cfg, table="public.t_1", key={"id": 9}) == []
    finally:
        store.close()


def test_postgres_pipeline_exports_slot_wal_and_traces_lsn_positions(
    tmp_path: Path, pg_source_dsn: str, pg_target_dsn: str
) -> None:
    ddl = "CREATE TABLE items (id int PRIMARY KEY, v text)"
    pg_exec(pg_source_dsn, ddl, "INSERT INTO items VALUES (1, 'a')")
    pg_exec(pg_target_dsn, ddl)
    name = f"obs-{uuid.uuid4().hex[:6]}"
    cfg = parse_config(
        {
            "pipelines": [
                {
                    "name": name,
                    "source": {
                        "kind": "postgres",
                        "dsn": pg_source_dsn,
                        "tables": ["items"],
                        "wal_check_interval": 0.1,
                    },
                    "transport": {"path": str(tmp_path / "log"), "partitions": 2},
                    "sink": {"kind": "postgres", "dsn": pg_target_dsn},
                    "batch": {"max_wait_ms": 5},
                }
            ],
            "monitoring": {"enabled": True, "store": {"kind": "postgres", "dsn": pg_target_dsn}},
        }
    )
    runtime = Runtime(cfg)
    assert runtime.monitor is not None
    runtime.monitor.start()
    (pipe,) = runtime.pipelines
    pipe.start()  # apply in a child process (the default)
    try:
        assert wait_until(lambda: pipe.stats.applied == 1, 30)
        pg_exec(pg_source_dsn, "UPDATE items SET v = 'b' WHERE id = 1")
        assert wait_until(lambda: pipe.stats.applied == 2, 30)
        assert wait_until(lambda: pipe.stats.slot_retained_wal_bytes is not None, 15)

        def scrape() -> dict[str, list[Any]]:
            out: dict[str, list[Any]] = {}
            text = render(runtime.metrics_registry()).decode()
            for fam in text_string_to_metric_families(text):
                for s in fam.samples:
                    out.setdefault(s.name, []).append(s)
            return out

        s = scrape()
        (wal,) = s["syncline_slot_retained_wal_bytes"]
        assert wal.labels == {"pipeline": name, "slot": f"syncline_{name.replace('-', '_')}"}
        assert wal.value >= 0
        applied = {
            (x.labels["table"], x.labels["op"]): x.value for x in s["syncline_events_applied_total"]
        }
        assert applied == {("public.items", "r"): 1, ("public.items", "u"): 1}
        assert [x.value for x in s["syncline_apply_latency_seconds_count"]] == [1]

        def traced() -> list[str]:
            return [r.status for r in find(cfg.monitoring, table="items", key={"id": 1})]

        assert wait_until(lambda: traced() == ["applied", "applied"], 30), traced()
        update, read = find(cfg.monitoring, table="items", key={"id": 1})
        assert update.op == "u" and read.op == "r"
        lsn, _, seq = update.position.partition("#")
        assert "/" in lsn and seq == "0", update.position  # first change of its transaction
        assert update.stages[-1].detail == "postgres:items"
    finally:
        runtime.shutdown(10)
