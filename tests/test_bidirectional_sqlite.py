"""SQLite A ↔ B: the sink hides its writes from the target's capture triggers.

Each pipeline captures one file with triggers and applies to the other; with
``suppress_capture`` (the default) the applying transaction holds a row in
``_syncline_suppress``, so the triggers skip it and nothing comes back.
"""

from __future__ import annotations

import itertools
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from syncline.config import PipelineConfig
from syncline.pipeline import Pipeline

DDL = "CREATE TABLE items (id INTEGER PRIMARY KEY, val TEXT NOT NULL, updated_at INTEGER NOT NULL)"
SELECT = "SELECT id, val, updated_at FROM items ORDER BY id"
LWW = {"items": {"conflict": {"strategy": "lww", "column": "updated_at"}}}


def wait_until(pred: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return bool(pred())


class Pair:
    """Two SQLite files and the pipelines a→b and b→a, run in this process."""

    def __init__(self, tmp: Path, suppress: bool = True, lww: bool = True) -> None:
        self.paths = {n: str(tmp / f"{n}.db") for n in ("a", "b")}
        for path in self.paths.values():
            with sqlite3.connect(path) as conn:
                conn.execute(DDL)
            conn.close()
        self.pipes: dict[str, Pipeline] = {}
        for x, y in (("a", "b"), ("b", "a")):
            name = f"{x}-to-{y}"
            cfg = PipelineConfig.model_validate(
                {
                    "name": name,
                    "source": {"kind": "sqlite", "path": self.paths[x], "tables": ["items"]},
                    "transport": {"path": str(tmp / name), "partitions": 2, "fsync": False},
                    "sink": {
                        "kind": "sqlite",
                        "path": self.paths[y],
                        "suppress_capture": suppress,
                        "tables": LWW if lww else {},
                    },
                    "batch": {"max_events": 200, "max_wait_ms": 5},
                    "apply_in": "thread",
                }
            )
            self.pipes[name] = Pipeline(cfg)

    def start(self) -> None:
        for p in self.pipes.values():
            p.start()
        assert wait_until(lambda: all(p.stats.state == "running" for p in self.pipes.values()), 20)

    def stop(self) -> None:
        for p in self.pipes.values():
            p.stop(drain=False, timeout=10)

    def captured(self) -> dict[str, int]:
        for name, p in self.pipes.items():
            assert p.failure is None, f"{name}: {p.failure}"
        return {n: p.stats.captured for n, p in self.pipes.items()}

    def settle(self, timeout: float = 30.0, quiet: float = 1.0) -> None:
        last: Any = None
        since = time.monotonic()
        deadline = since + timeout
        while time.monotonic() < deadline:
            now = (tuple(self.captured().values()), all(p.caught_up() for p in self.pipes.values()))
            if now != last or not now[1]:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
            time.sleep(0.05)
        raise AssertionError(f"no quiescence within {timeout}s: captured {self.captured()}")

    def rows(self, node: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.paths[node])
        try:
            return conn.execute(SELECT).fetchall()
        finally:
            conn.close()


@pytest.fixture
def pairs(tmp_path: Path) -> Iterator[list[Pair]]:
    made: list[Pair] = []
    yield made
    for pair in made:
        pair.stop()


def write(path: str, ops: list[tuple[str, int]], tick: Any, tag: str) -> int:
    """``(op, id)`` pairs, one transaction each; returns the row changes made."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    changed = 0
    try:
        for op, key in ops:
            t = tick()
            if op == "upsert":
                cur = conn.execute(
                    "INSERT INTO items VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE "
                    "SET val = excluded.val, updated_at = excluded.updated_at",
                    (key, f"{tag}@{t}", t),
                )
            else:
                cur = conn.execute("DELETE FROM items WHERE id = ?", (key,))
            changed += cur.rowcount
    finally:
        conn.close()
    return changed


def shared_clock() -> Any:
    counter, lock = itertools.count(1), threading.Lock()

    def tick() -> int:
        with lock:
            return next(counter)

    return tick


def test_pair_write_crosses_once(tmp_path: Path, pairs: list[Pair]) -> None:
    pair = Pair(tmp_path)
    pairs.append(pair)
    pair.start()
    tick = shared_clock()
    on_a = write(
        pair.paths["a"], [("upsert", k) for k in range(1, 31)] + [("upsert", 2)], tick, "a"
    )
    on_b = write(
        pair.paths["b"], [("upsert", k) for k in range(101, 121)] + [("delete", 105)], tick, "b"
    )
    pair.settle()
    assert pair.rows("a") == pair.rows("b")
    assert len(pair.rows("a")) == 30 + 19
    assert pair.captured() == {"a-to-b": on_a, "b-to-a": on_b} == {"a-to-b": 31, "b-to-a": 21}
    # the suppress row lives only inside the sink's transactions
    conn = sqlite3.connect(pair.paths["b"])
    assert conn.execute("SELECT count(*) FROM _syncline_suppress").fetchone() == (0,)
    conn.close()


def test_without_suppression_changes_ping_pong(tmp_path: Path, pairs: list[Pair]) -> None:
    """The control: the same pair with suppress_capture off captures its own writes."""
    pair = Pair(tmp_path, suppress=False, lww=False)  # lww would end the echo at an equal row
    pairs.append(pair)
    pair.start()
    write(pair.paths["a"], [("upsert", 1)], shared_clock(), "a")
    assert wait_until(lambda: sum(pair.captured().values()) >= 10, 20), pair.captured()


def test_other_writers_are_still_captured_while_the_sink_applies(
    tmp_path: Path, pairs: list[Pair]
) -> None:
    """Service writes on b interleave with the sink's transactions and are all captured."""
    pair = Pair(tmp_path)
    pairs.append(pair)
    pair.start()
    tick = shared_clock()
    t = threading.Thread(
        target=write, args=(pair.paths["a"], [("upsert", k) for k in range(300)], tick, "a")
    )
    t.start()
    on_b = write(pair.paths["b"], [("upsert", 1000 + k) for k in range(300)], tick, "b")
    t.join()
    pair.settle()
    assert pair.rows("a") == pair.rows("b")
    assert pair.captured() == {"a-to-b": 300, "b-to-a": on_b}


def run_concurrently(pair: Pair, plans: dict[str, list[tuple[str, int]]], tick: Any) -> int:
    counts: dict[str, int] = {}

    def run(node: str) -> None:
        counts[node] = write(pair.paths[node], plans[node], tick, node)

    threads = [threading.Thread(target=run, args=(n,)) for n in plans]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert set(counts) == set(plans)
    return sum(counts.values())


# Known to diverge rarely (1 of 4 full CI runs on 2026-11-22: one key kept an older lww
# version on one side); in the slow suite until the cause is found, see docs/bidirectional.md.
@pytest.mark.slow
@pytest.mark.parametrize(
    "kinds",
    [
        pytest.param(["upsert"], id="upserts"),
        pytest.param(["upsert", "upsert", "delete"], id="deletes"),
    ],
)
def test_concurrent_conflicting_writes_converge(
    kinds: list[str], tmp_path: Path, pairs: list[Pair]
) -> None:
    """Random writes to the same few keys on both sides at once, lww on updated_at."""
    pair = Pair(tmp_path)
    pairs.append(pair)
    pair.start()
    tick = shared_clock()
    rng = random.Random(11)
    for round_ in range(6):
        plans = {
            n: [(rng.choice(kinds), round_ * 10 + rng.randint(1, 5))
                for _ in range(rng.randint(5, 30))]
            for n in ("a", "b")
        }  # fmt: skip
        before = sum(pair.captured().values())
        changed = run_concurrently(pair, plans, tick)
        pair.settle()
        assert pair.rows("a") == pair.rows("b"), (round_, plans)
        assert sum(pair.captured().values()) - before <= changed
