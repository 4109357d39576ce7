"""Monitoring stream and store: the bounded queue, retention, sampling, trace errors, logs."""

from __future__ import annotations

import io
import json
import logging
import sqlite3
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from e2e_helpers import wait_until
from syncline.cli import app
from syncline.config import MonitoringConfig, PipelineConfig, parse_config
from syncline.errors import ConfigError, PermanentError
from syncline.events import Change, ChangeEvent, SourceInfo, encode_key, encode_value, now_us
from syncline.metrics import LatencyHistogram, PipelineStats
from syncline.monitoring.monitor import Monitor
from syncline.monitoring.records import Row, correlation_id, position_of
from syncline.monitoring.store import SqliteTraceStore, open_store
from syncline.monitoring.trace import find, key_variants
from syncline.observability.logs import bind_log_context, setup_logging
from syncline.transports.base import Record

runner = CliRunner()
HOUR_US = 3600 * 1_000_000


def mcfg(tmp_path: Path, **kw: object) -> MonitoringConfig:
    return MonitoringConfig.model_validate(
        {"enabled": True, "store": {"path": str(tmp_path / "mon.db")}, **kw}
    )


def pcfg(tmp_path: Path) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "name": "shop",
            "source": {"kind": "sqlite", "path": str(tmp_path / "src.db"), "tables": ["t"]},
            "transport": {"path": str(tmp_path / "log"), "partitions": 4},
            "sink": {"kind": "sqlite", "path": str(tmp_path / "dst.db")},
        }
    )


def row(key: int, recorded_us: int, pipeline: str = "shop") -> Row:
    k = f'{{"id":{key}}}'
    return (pipeline, "main.t", k, f"#{key}", "cid", "c", recorded_us, recorded_us, None,
            None, None, None, None, None, None, None, recorded_us)  # fmt: skip


def change(i: int) -> tuple[Change, Record]:
    src = SourceInfo(
        connector="sqlite", name="shop", ts_ms=1, ts_us=1000 + i, db="d", schema="main",
        table="t", seq=i,
    )  # fmt: skip
    ch = Change({"id": i}, ChangeEvent(after={"id": i}, source=src, op="c", ts_ms=1))
    return ch, Record("main.t", encode_key(ch.key), encode_value(ch.event))


# ---- the queue ------------------------------------------------------------------------


def test_full_queue_drops_and_counts_and_never_waits_for_a_stuck_store(tmp_path: Path) -> None:
    cfg = mcfg(tmp_path, queue_size=10)
    SqliteTraceStore(str(tmp_path / "mon.db")).close()
    # another connection holds the store's write lock: the writer thread is stuck in write()
    locker = sqlite3.connect(tmp_path / "mon.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    monitor = Monitor(cfg, flush_interval=0.01)
    stats = PipelineStats("shop")
    monitor.start()
    try:
        assert monitor.offer([row(i, now_us()) for i in range(4)], stats)
        assert wait_until(lambda: monitor.pending == 0, 10), "the writer took the first batch"
        # the writer is now blocked on the lock; the data path keeps offering
        results = [monitor.offer([row(i, now_us()) for i in range(4)], stats) for _ in range(5)]
        assert results == [True, True, False, False, False]  # 8 fit under queue_size=10
        assert monitor.pending == 8
        assert monitor.dropped == 12 and stats.monitoring_dropped == 12
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert wait_until(lambda: monitor.written == 4 + 8, 40)
    assert monitor.offer([row(99, now_us())], stats), "room again once written"
    monitor.close()
    store = SqliteTraceStore(str(tmp_path / "mon.db"), create=False)
    assert len(store.query(table="t", limit=100)) == 5  # keys 0-3 and 99 (upserted)
    store.close()


def test_offer_is_bounded_without_a_writer(tmp_path: Path) -> None:
    monitor = Monitor(mcfg(tmp_path, queue_size=3))
    assert monitor.offer([row(1, 1), row(2, 1), row(3, 1)])
    assert not monitor.offer([row(4, 1)])
    assert (monitor.pending, monitor.dropped) == (3, 1)


def test_unreachable_store_drops_and_counts(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    cfg = MonitoringConfig.model_validate(
        {"enabled": True, "store": {"path": str(tmp_path / "file" / "mon.db")}}
    )
    monitor = Monitor(cfg, flush_interval=0.01)
    stats = monitor.for_pipeline(pcfg(tmp_path), PipelineStats("shop")).stats
    monitor.offer([row(1, 1)])
    monitor.start()
    assert wait_until(lambda: monitor.dropped == 1, 10)
    assert stats.monitoring_dropped == 1
    monitor.close()


# ---- store, retention, sampling -----------------------------------------------------------


def test_retention_purges_old_records(tmp_path: Path) -> None:
    now = now_us()
    store = SqliteTraceStore(str(tmp_path / "mon.db"))
    store.write([row(1, now - 3 * HOUR_US), row(2, now - HOUR_US // 2), row(3, now)])
    store.close()
    monitor = Monitor(mcfg(tmp_path, retention_hours=1), flush_interval=0.01)
    monitor.start()  # the writer purges on its first round

    def keys() -> list[str]:
        store = SqliteTraceStore(str(tmp_path / "mon.db"), create=False)
        try:
            return sorted(r["key"] for r in store.query(table="t", limit=10))
        finally:
            store.close()

    assert wait_until(lambda: keys() == ['{"id":2}', '{"id":3}'], 10), keys()
    monitor.close()
    assert find(monitor.cfg, table="t", key={"id": 1}) == []


def test_stages_from_two_writers_merge_into_one_record(tmp_path: Path) -> None:
    monitor = Monitor(mcfg(tmp_path), flush_interval=0.01)
    pm = monitor.for_pipeline(pcfg(tmp_path), PipelineStats("shop"))
    ch, rec = change(5)
    monitor.start()
    pm.failed("main.t", rec.key, ch, "DataError: boom")  # apply side first, then capture
    pm.published([ch], [rec], 2000, 3000)
    assert wait_until(lambda: monitor.written == 2, 10)
    monitor.close()
    (tr,) = find(monitor.cfg, table="main.t", key='{"id": 5}')
    assert tr.status == "dead_lettered" and tr.error == "DataError: boom"
    assert [s.name for s in tr.stages] == ["committed", "captured", "published", "dead_lettered"]
    assert tr.correlation_id == correlation_id(
        "shop", "main.t", rec.key, position_of(ch.event.source)
    )


def test_sample_keeps_a_stable_share_of_keys(tmp_path: Path) -> None:
    stats = PipelineStats("shop")
    none = Monitor(mcfg(tmp_path, sample=0.0)).for_pipeline(pcfg(tmp_path), stats)
    half = Monitor(mcfg(tmp_path, sample=0.5)).for_pipeline(pcfg(tmp_path), stats)
    keys = [encode_key({"id": i}) for i in range(2000)]
    assert not any(none.sampled(k) for k in keys)
    kept = [k for k in keys if half.sampled(k)]
    assert 800 < len(kept) < 1200
    assert kept == [k for k in keys if half.sampled(k)], "the same keys every time"
    changes = [change(i) for i in range(100)]
    half.published([c for c, _ in changes], [r for _, r in changes], 1, 2)
    assert half.monitor.pending == sum(half.sampled(r.key) for _, r in changes)


def test_key_variants_cover_every_column_order() -> None:
    assert key_variants('{"id": 5}') == ['{"id":5}']
    assert sorted(key_variants({"a": 1, "b": "x"})) == ['{"a":1,"b":"x"}', '{"b":"x","a":1}']
    for bad in ("{id: 5}", "[1]", "{}"):
        with pytest.raises(ConfigError, match="--key"):
            key_variants(bad)


def test_trace_cli_errors_are_one_line(tmp_path: Path) -> None:
    base = (
        f"pipelines: [{{name: shop, source: {{kind: sqlite, path: {tmp_path}/s.db, tables: [t]}},"
        f" sink: {{kind: sqlite, path: {tmp_path}/d.db}}}}]\n"
    )
    off = tmp_path / "off.yaml"
    off.write_text(base)
    on = tmp_path / "on.yaml"
    on.write_text(base + f"monitoring: {{enabled: true, store: {{path: {tmp_path}/m.db}}}}\n")
    cases = [
        ((str(off), "-t", "t", "-k", '{"id": 1}'), 2, "monitoring is not enabled"),
        ((str(on), "-t", "t", "-k", "{id: 1}"), 2, "--key must be a JSON object"),
        ((str(on), "-t", "t"), 2, "needs --table and --key, or --id"),
        ((str(on), "-t", "t", "-k", '{"id": 1}', "-p", "nope"), 2, "no pipeline named 'nope'"),
        ((str(on), "-t", "t", "-k", '{"id": 1}'), 1, "no monitoring records at"),
    ]
    for args, code, text in cases:
        result = runner.invoke(app, ["trace", *args])
        assert result.exit_code == code, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and text in lines[0], (args, result.output)
    SqliteTraceStore(str(tmp_path / "m.db")).close()
    result = runner.invoke(app, ["trace", str(on), "-t", "t", "-k", '{"id": 1}'])
    assert result.exit_code == 1 and "no recorded changes" in result.output


def test_monitoring_config_is_validated() -> None:
    base = {
        "pipelines": [
            {"name": "a", "source": {"kind": "sqlite", "path": "x", "tables": ["t"]},
             "sink": {"kind": "sqlite", "path": "y"}}
        ]
    }  # fmt: skip
    cfg = parse_config(base)
    assert not cfg.monitoring.enabled and cfg.monitoring.store.kind == "sqlite"
    assert cfg.metrics.listen is None
    for bad, text in (
        ({"monitoring": {"sample": 2}}, "monitoring.sample"),
        ({"monitoring": {"store": {"kind": "redis"}}}, "monitoring.store: unknown kind 'redis'"),
        ({"monitoring": {"store": {"kind": "postgres"}}}, "monitoring.store.dsn: Field required"),
        ({"metrics": {"listen": "host:http"}}, "metrics.listen: 'host:http' is not HOST:PORT"),
    ):
        with pytest.raises(ConfigError, match=text):
            parse_config({**base, **bad})
    with pytest.raises(PermanentError, match="no monitoring records"):
        open_store(
            MonitoringConfig.model_validate({"store": {"path": "/nonexistent/m.db"}}), create=False
        )


# ---- metrics building blocks and logs -----------------------------------------------------


def test_latency_histogram_bins_on_upper_bounds() -> None:
    h = LatencyHistogram((1, 10))
    h.observe_many([0.5, 1.0, 1.5, 10.0, 11.0, 99.0])
    counts, total, n = h.snapshot()
    assert counts == [2, 2, 2] and n == 6 and total == pytest.approx(123.0)
    h.observe_many([])
    assert h.count == 6


def test_child_totals_add_to_what_the_parent_had() -> None:
    parent, child = PipelineStats("p"), PipelineStats("p")
    parent.applied_by[("main.t", "c")] = 5
    parent.conflicts = 2
    parent.monitoring_dropped = 3  # the parent's own capture side
    base = parent.child_base()
    child.monitoring_dropped = 2
    child.applied_by.update({("main.t", "c"): 3, ("main.u", "d"): 1})
    child.dead_lettered_by[("main.t", "c")] = 1
    child.conflicts = 4
    parent.absorb_child(child.child_report(), base)
    parent.absorb_child(child.child_report(), base)  # reports carry totals: idempotent
    assert parent.applied_by == {("main.t", "c"): 8, ("main.u", "d"): 1}
    assert parent.dead_lettered_by == {("main.t", "c"): 1}
    assert parent.conflicts == 6
    assert (parent.monitoring_dropped, parent.monitoring_dropped_child) == (3, 2)


def test_json_logs_carry_context_and_change_fields() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    out = io.StringIO()
    setup_logging("info", "json", out)
    try:
        seen: list[str] = []

        def in_pipeline_thread() -> None:
            bind_log_context(pipeline="shop")
            logging.getLogger("syncline.test").warning(
                "x %s", 1, extra={"cid": "abc", "table": "main.t"}
            )
            seen.append("done")

        t = threading.Thread(target=in_pipeline_thread)
        t.start()
        t.join()
        logging.getLogger("syncline.test").info("outside")
        first, second = (json.loads(ln) for ln in out.getvalue().splitlines())
        assert first["event"] == "x 1" and first["level"] == "warning"
        assert (first["pipeline"], first["cid"], first["table"]) == ("shop", "abc", "main.t")
        assert "time" in first and first["logger"] == "syncline.test"
        assert "pipeline" not in second, "the context belongs to the thread that bound it"
        text = io.StringIO()
        setup_logging("info", "text", text)
        logging.getLogger("syncline.test").error("y", extra={"cid": "abc"})
        assert text.getvalue().rstrip().endswith("syncline.test: y [cid=abc]")
        with pytest.raises(ConfigError, match="--log-format must be one of text, json"):
            setup_logging("info", "xml")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_check_opens_the_monitoring_store(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "s.db").execute("CREATE TABLE t (id INTEGER PRIMARY KEY)").close()
    base = (
        f"pipelines: [{{name: shop, source: {{kind: sqlite, path: {tmp_path}/s.db, tables: [t]}},"
        f" transport: {{path: {tmp_path}/log}}, sink: {{kind: sqlite, path: {tmp_path}/d.db}}}}]\n"
    )
    good = tmp_path / "good.yaml"
    good.write_text(base + f"monitoring: {{enabled: true, store: {{path: {tmp_path}/m/m.db}}}}\n")
    result = runner.invoke(app, ["check", str(good)])
    assert result.exit_code == 0, result.output
    assert "monitoring store (sqlite): ok" in result.output
    (tmp_path / "file").write_text("x")
    bad = tmp_path / "bad.yaml"
    bad.write_text(base + f"monitoring: {{enabled: true, store: {{path: {tmp_path}/file/m.db}}}}\n")
    result = runner.invoke(app, ["check", str(bad)])
    assert result.exit_code == 1
    assert "syncline: error: monitoring store:" in result.output
