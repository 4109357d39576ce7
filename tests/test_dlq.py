"""Dead-letter queue: bad events set aside, their keys held in order, replay and purge.

SQLite → SQLite pipelines in this process; the target refuses rows through a
trigger that a test drops to "fix the cause".
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from e2e_helpers import caught_up, wait_until
from e2e_helpers import sqlite_exec as sql
from e2e_helpers import start_pipeline as start
from syncline.cli import app
from syncline.config import PipelineConfig, load_config
from syncline.dispatcher import Dispatcher
from syncline.dlq import DeadLetterStore, NewDeadLetter
from syncline.errors import ConfigError, DataError, PermanentError
from syncline.events import (
    Change,
    ChangeEvent,
    SourceInfo,
    decode_key,
    decode_value,
    encode_key,
    encode_value,
)
from syncline.metrics import PipelineStats
from syncline.pipeline import Pipeline
from syncline.schema import Column, TableSchema
from syncline.sinks.leases import replay_mark
from syncline.sinks.sqlite import SqliteSink
from syncline.transforms import build_chain
from syncline.transports.base import Record
from syncline.transports.embedded import EmbeddedTransport

runner = CliRunner()

GUARD = (
    "CREATE TRIGGER no_negative_{op} BEFORE {op} ON orders WHEN NEW.qty < 0 "
    "BEGIN SELECT RAISE(ABORT, 'qty must not be negative'); END"
)


def rows(path: Path, query: str = "SELECT id, qty FROM orders ORDER BY id") -> list[Any]:
    db = sqlite3.connect(path)
    try:
        return list(db.execute(query))
    finally:
        db.close()


def write_config(tmp_path: Path, **dlq: Any) -> Path:
    dlq = {"max_attempts": 2, **dlq}
    extra = "".join(f"\n      {k}: {v}" for k, v in dlq.items())
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
    dlq:{extra}
"""
    )
    return path


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    """Source and target with a guard trigger in the target, ids 1..5 with qty = id."""
    src, dst = tmp_path / "src.db", tmp_path / "dst.db"
    ddl = "CREATE TABLE orders (id INTEGER PRIMARY KEY, qty INTEGER NOT NULL)"
    sql(src, ddl, "INSERT INTO orders VALUES (1, 1), (2, 2), (3, 3), (4, 4), (5, 5)")
    sql(dst, ddl, GUARD.format(op="INSERT"), GUARD.format(op="UPDATE"))
    return tmp_path


def cli(*args: str) -> Any:
    return runner.invoke(app, list(args))


def test_bad_event_is_dead_lettered_its_key_held_and_replay_applies_in_order(
    shop: Path, pipes: list[Pipeline]
) -> None:
    config = write_config(shop)
    src, dst = shop / "src.db", shop / "dst.db"
    pipe = start(pipes, config)
    assert wait_until(lambda: caught_up(pipe) and len(rows(dst)) == 5, 30)

    sql(src, "UPDATE orders SET qty = -2 WHERE id = 2")  # the target refuses this one
    assert wait_until(lambda: pipe.stats.dead_lettered == 1, 30)
    # later events: of key 2 (held, in order), of other keys (applied)
    sql(src, "UPDATE orders SET qty = 20 WHERE id = 2", "UPDATE orders SET qty = 30 WHERE id = 3")
    sql(src, "UPDATE orders SET qty = 21 WHERE id = 2", "INSERT INTO orders VALUES (6, 6)")
    assert wait_until(lambda: caught_up(pipe) and pipe.stats.held == 2, 30)
    assert rows(dst) == [(1, 1), (2, 2), (3, 30), (4, 4), (5, 5), (6, 6)]
    assert pipe.failure is None

    listing = cli("dlq", "list", str(config))
    assert listing.exit_code == 0, listing.output
    lines = listing.output.splitlines()
    assert lines[0].split()[:5] == ["ID", "PIPELINE", "TABLE", "KEY", "STATUS"]
    assert len(lines) == 4
    assert "dead" in lines[1] and "DataError: applying changes to orders" in lines[1]
    assert '{"id":2}' in lines[1]
    assert "held (behind #1)" in lines[2] and "held (behind #1)" in lines[3]

    shown = cli("dlq", "show", str(config), "1")
    assert shown.exit_code == 0, shown.output
    assert "entry 1: dead" in shown.output
    assert "error: DataError:" in shown.output and "qty must not be negative" in shown.output
    assert "attempts 2" in shown.output
    assert '"qty": -2' in shown.output  # the original event

    # replay before the cause is fixed: fails again, nothing else moves
    again = cli("dlq", "replay", str(config), "1")
    assert again.exit_code == 1, again.output
    assert "replayed 0 of 3" in again.output and "#1 failed again" in again.output
    assert rows(dst)[1] == (2, 2)

    sql(dst, "DROP TRIGGER no_negative_UPDATE", "DROP TRIGGER no_negative_INSERT")  # the fix
    done = cli("dlq", "replay", str(config), "--all")
    assert done.exit_code == 0, done.output
    assert "replayed 3 of 3 entries of pipeline shop" in done.output
    assert rows(dst) == rows(src)  # -2, then 20, then 21: the last image wins
    assert pipe.stats.replayed == 3

    # the key flows again
    sql(src, "UPDATE orders SET qty = 22 WHERE id = 2")
    assert wait_until(lambda: caught_up(pipe) and rows(dst) == rows(src), 30)
    assert cli("dlq", "list", str(config)).output.strip() == "the dead-letter queue is empty"
    history = cli("dlq", "list", str(config), "--all").output
    assert history.count("replayed") == 3


def test_skip_mode_lets_later_events_of_the_key_through(shop: Path, pipes: list[Pipeline]) -> None:
    config = write_config(shop, on_blocked_key="skip")
    src, dst = shop / "src.db", shop / "dst.db"
    pipe = start(pipes, config)
    assert wait_until(lambda: caught_up(pipe) and len(rows(dst)) == 5, 30)
    sql(src, "UPDATE orders SET qty = -2 WHERE id = 2")
    assert wait_until(lambda: pipe.stats.dead_lettered == 1, 30)
    sql(src, "UPDATE orders SET qty = 20 WHERE id = 2")
    assert wait_until(lambda: caught_up(pipe) and rows(dst) == rows(src), 30)
    assert pipe.stats.held == 0


def test_purge_drops_the_entry_and_releases_the_events_held_behind_it(
    shop: Path, pipes: list[Pipeline]
) -> None:
    config = write_config(shop)
    src, dst = shop / "src.db", shop / "dst.db"
    pipe = start(pipes, config)
    assert wait_until(lambda: caught_up(pipe) and len(rows(dst)) == 5, 30)
    sql(src, "UPDATE orders SET qty = -2 WHERE id = 2")
    assert wait_until(lambda: pipe.stats.dead_lettered == 1, 30)
    sql(src, "UPDATE orders SET qty = 20 WHERE id = 2")
    assert wait_until(lambda: caught_up(pipe) and pipe.stats.held == 1, 30)

    refused = runner.invoke(app, ["dlq", "purge", str(config), "1"], input="n\n")
    assert refused.exit_code == 1
    purged = cli("dlq", "purge", str(config), "1", "--yes")
    assert purged.exit_code == 0, purged.output
    assert "purged 1 entries" in purged.output and "1 held events" in purged.output
    assert wait_until(lambda: rows(dst) == rows(src), 30)  # -2 dropped, 20 applied
    assert pipe.stats.replayed == 1


def test_replay_queued_while_stopped_runs_at_the_next_start(
    shop: Path, pipes: list[Pipeline]
) -> None:
    config = write_config(shop)
    src, dst = shop / "src.db", shop / "dst.db"
    pipe = start(pipes, config)
    sql(src, "UPDATE orders SET qty = -1 WHERE id = 1", "UPDATE orders SET qty = -3 WHERE id = 3")
    assert wait_until(lambda: caught_up(pipe) and pipe.stats.dead_lettered == 2, 30)
    pipe.stop()
    sql(dst, "DROP TRIGGER no_negative_UPDATE", "DROP TRIGGER no_negative_INSERT")

    queued = cli("dlq", "replay", str(config), "--table", "orders")
    assert queued.exit_code == 0, queued.output
    assert "queued 2 entries of pipeline shop for replay" in queued.output
    pipe = start(pipes, config)
    assert wait_until(lambda: rows(dst) == rows(src), 30)
    assert pipe.stats.replayed == 2


def test_undecodable_record_is_dead_lettered_and_the_rest_flows(
    shop: Path, pipes: list[Pipeline]
) -> None:
    config = write_config(shop)
    cfg = load_config(config).pipelines[0]
    src, dst = shop / "src.db", shop / "dst.db"
    pipe = start(pipes, config)
    assert wait_until(lambda: caught_up(pipe) and len(rows(dst)) == 5, 30)
    pipe.stop()
    transport = EmbeddedTransport(cfg.transport, cfg.name)
    producer = transport.producer()
    checkpoint = producer.checkpoint()
    producer.publish([Record("main.orders", b'{"id":9}', b"\xff not json")], checkpoint)
    producer.close()
    transport.close()
    sql(src, "UPDATE orders SET qty = 40 WHERE id = 4")
    pipe = start(pipes, config)
    assert wait_until(lambda: pipe.stats.dead_lettered == 1 and rows(dst) == rows(src), 30)
    shown = cli("dlq", "show", str(config), "1").output
    assert "undecodable event" in shown and 'key {"id":9}' in shown


def test_dlq_disabled_stops_the_pipeline_with_one_line(shop: Path, pipes: list[Pipeline]) -> None:
    pipe = start(pipes, write_config(shop, enabled="false"))
    sql(shop / "src.db", "UPDATE orders SET qty = -2 WHERE id = 2")
    assert pipe.wait(30)
    assert isinstance(pipe.failure, DataError)
    assert "qty must not be negative" in str(pipe.failure)
    assert "\n" not in str(pipe.failure)


def test_cli_bad_input_is_one_line(shop: Path, pipes: list[Pipeline]) -> None:
    config = write_config(shop)
    empty = cli("dlq", "list", str(config))
    assert empty.output.strip() == "the dead-letter queue is empty"
    missing = cli("dlq", "show", str(config), "7")
    assert missing.exit_code == 2
    assert missing.output.startswith("syncline: error: pipeline shop has no dead-letter queue")

    pipe = start(pipes, config)
    sql(shop / "src.db", "UPDATE orders SET qty = -2 WHERE id = 2")
    assert wait_until(lambda: pipe.stats.dead_lettered == 1, 30)
    sql(shop / "src.db", "UPDATE orders SET qty = -3 WHERE id = 2")
    assert wait_until(lambda: caught_up(pipe) and pipe.stats.held == 1, 30)
    cases = {
        ("show", "7"): "no dead-letter entry #7",
        ("replay", "2"): "entry #2 is held behind #1 (same key); replay or purge #1 instead",
        ("replay",): "say which entries: ids, --table TABLE or --all",
        ("replay", "1", "--all"): "give entry ids, or --all / --table, not both",
        ("purge", "--replayed", "1"): "--replayed takes no ids, --all or --table",
        ("list", "-p", "nope"): "no pipeline named 'nope' (have: shop)",
    }
    for args, message in cases.items():
        out = cli("dlq", args[0], str(config), *args[1:])
        assert out.exit_code == 2, (args, out.output)
        assert out.output.startswith(f"syncline: error: {message}"), (args, out.output)
        assert out.output.count("\n") == 1, args


# ---- exactly once across a crash in the middle of a replay ------------------------------


def _event(key: int, qty: int) -> tuple[bytes, bytes]:
    event = ChangeEvent(
        op="u",
        after={"id": key, "qty": qty},
        source=SourceInfo(
            connector="sqlite", name="t", db="main", schema="main", table="orders", ts_ms=1
        ),
        ts_ms=1,
    )
    return encode_key({"id": key}), encode_value(event)


def test_a_replay_committed_in_the_target_is_not_repeated_after_a_crash(tmp_path: Path) -> None:
    dst = tmp_path / "dst.db"
    sql(dst, "CREATE TABLE orders (id INTEGER PRIMARY KEY, qty INTEGER NOT NULL)")
    # count applies: a repeated replay would count twice
    sql(
        dst,
        "CREATE TABLE applies (n INTEGER)",
        "INSERT INTO applies VALUES (0)",
        "CREATE TRIGGER count_ins AFTER INSERT ON orders BEGIN UPDATE applies SET n = n + 1; END",
        "CREATE TRIGGER count_upd AFTER UPDATE ON orders BEGIN UPDATE applies SET n = n + 1; END",
    )
    cfg = PipelineConfig.model_validate(
        {
            "name": "shop",
            "source": {"kind": "sqlite", "path": str(tmp_path / "src.db"), "tables": ["orders"]},
            "transport": {"path": str(tmp_path / "log")},
            "sink": {"kind": "sqlite", "path": str(dst)},
        }
    )
    schema = {
        "main.orders": TableSchema(
            "main",
            "orders",
            (Column("id", "INTEGER", False), Column("qty", "INTEGER", False)),
            ("id",),
            "sqlite",
        )
    }
    store = DeadLetterStore(cfg.dlq_dir, cfg.name)
    key, value = _event(1, 7)
    store.add(
        [NewDeadLetter(0, 0, "main.orders", key, value, "DataError", "x", 3)], hold_open_keys=True
    )
    (entry_id,) = store.request_replay([1])

    def open_dispatcher() -> tuple[SqliteSink, Dispatcher]:
        sink = SqliteSink(cfg.sink, cfg.name)  # type: ignore[arg-type]
        sink.open(cfg.name)
        sink.prepare(schema)
        chain = build_chain([], cfg.name)
        return sink, Dispatcher(cfg, sink, chain, PipelineStats("shop"), store, _never())

    # the crash: the target committed the replay (and its sequence number) ...
    sink, _ = open_dispatcher()
    seq = store.begin_replay(entry_id)
    sink.apply([Change(decode_key(key), decode_value(value))], {replay_mark(0): seq})
    sink.close()
    # ... but the queue still says "replaying"
    assert store.get(entry_id).status == "replaying"

    sink, dispatcher = open_dispatcher()
    positions = dispatcher.open({0, 1})
    assert positions == {}  # replay marks are not log partitions
    assert store.get(entry_id).status == "replayed"
    assert rows(dst, "SELECT n FROM applies") == [(1,)]
    assert rows(dst) == [(1, 7)]
    store.release_worker_lock()

    # a replay that did not reach the target is queued again and applied once
    key2, value2 = _event(2, 8)
    store.add(
        [NewDeadLetter(0, 1, "main.orders", key2, value2, "DataError", "x", 3)], hold_open_keys=True
    )
    (second,) = store.request_replay([2])
    store.begin_replay(second)  # crash before the target transaction
    sink.close()
    sink, dispatcher = open_dispatcher()
    dispatcher.open({0, 1})
    assert store.get(second).status == "replayed"
    assert rows(dst) == [(1, 7), (2, 8)]
    assert rows(dst, "SELECT n FROM applies") == [(2,)]
    sink.close()
    store.close()


def _never() -> Any:
    import threading

    return threading.Event()


def test_store_keeps_one_entry_per_log_position(tmp_path: Path) -> None:
    store = DeadLetterStore(str(tmp_path), "p")
    key, value = _event(1, 1)
    entry = NewDeadLetter(3, 42, "main.orders", key, value, "DataError", "boom", 1)
    assert store.add([entry], hold_open_keys=True) == [1]
    assert store.add([entry], hold_open_keys=True) == []  # redelivered after a crash
    assert len(store.entries()) == 1
    assert store.stored_positions({3: 40}) == {(3, 42)}
    assert store.stored_positions({3: 43}) == set()
    store.close()


def test_store_on_an_unwritable_path_is_a_one_line_storage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(
        PermanentError, match=r"dead-letter queue directory .*/file is a file, not a directory"
    ):
        DeadLetterStore(str(tmp_path / "file"), "p")
    with pytest.raises(ConfigError, match="pipeline q has no dead-letter queue"):
        DeadLetterStore(str(tmp_path), "q", create=False)


def test_transient_failures_give_up_only_when_configured(
    tmp_path: Path, pipes: list[Pipeline]
) -> None:
    cfg = PipelineConfig.model_validate(
        {
            "name": "shop",
            "source": {  # nothing listens on port 1: connection refused, a transient error
                "kind": "postgres",
                "dsn": "postgresql://u:secret@127.0.0.1:1/db",
                "tables": ["orders"],
            },
            "transport": {"path": str(tmp_path / "log")},
            "sink": {"kind": "sqlite", "path": str(tmp_path / "dst.db")},
            "apply_in": "thread",
            "retry": {"initial_delay_ms": 1, "max_delay_ms": 2, "max_attempts": 3},
        }
    )
    pipe = Pipeline(cfg)
    pipes.append(pipe)
    pipe.start()
    assert pipe.wait(30)
    assert pipe.failure is not None
    assert str(pipe.failure).startswith("capture: gave up after 3 attempts (retry.max_attempts)")
    assert pipe.stats.retries == 3
    assert "secret" not in str(pipe.failure)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bisection_isolates_exactly_the_bad_events(
    tmp_path: Path, pipes: list[Pipeline], seed: int
) -> None:
    import random

    rng = random.Random(seed)
    bad = set(rng.sample(range(1, 301), rng.randint(1, 12)))
    src, dst = tmp_path / "src.db", tmp_path / "dst.db"
    ddl = "CREATE TABLE orders (id INTEGER PRIMARY KEY, qty INTEGER NOT NULL)"
    sql(src, ddl)
    sql(dst, ddl, GUARD.format(op="INSERT"), GUARD.format(op="UPDATE"))
    pipe = start(pipes, write_config(tmp_path, max_attempts=1))
    values = ", ".join(f"({i}, {-i if i in bad else i})" for i in range(1, 301))
    sql(src, f"INSERT INTO orders VALUES {values}")
    assert wait_until(lambda: caught_up(pipe) and pipe.stats.dead_lettered == len(bad), 30)
    assert rows(dst) == [(i, i) for i in range(1, 301) if i not in bad]
    store = DeadLetterStore(str(tmp_path / "log"), "shop")
    assert sorted(int(e.key_text[6:-1]) for e in store.entries()) == sorted(bad)
    store.close()
