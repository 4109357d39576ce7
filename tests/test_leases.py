"""Partition leases: the fair-share plan, and the ownership fence in a real SQLite target."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from syncline.config import SqliteSinkConfig
from syncline.errors import TransientError
from syncline.sinks.leases import Slot, mark_partition, plan, replay_mark
from syncline.sinks.sqlite import SqliteSink


def slots(owners: dict[int, str | None], expired: set[int] = frozenset()) -> list[Slot]:  # type: ignore[assignment]
    return [Slot(p, o, p not in expired) for p, o in owners.items()]


def test_one_worker_takes_everything() -> None:
    keep, release = plan("a", [], slots(dict.fromkeys(range(8))), 8)
    assert keep == set(range(8)) and release == set()


def test_shares_are_fair_and_deterministic() -> None:
    free = slots(dict.fromkeys(range(8)))
    got = {w: plan(w, ["a", "b", "c"], free, 8)[0] for w in "abc"}
    assert [len(got[w]) for w in "abc"] == [3, 3, 2]


def test_nobody_steals_from_a_live_owner_who_gives_back_on_its_heartbeat() -> None:
    owned_by_a = slots(dict.fromkeys(range(4), "a"))
    keep_b, _ = plan("b", ["a", "b"], owned_by_a, 4)
    assert keep_b == set()  # a still holds them
    keep_a, release_a = plan("a", ["a", "b"], owned_by_a, 4)
    assert keep_a == {0, 1} and release_a == {2, 3}
    after = slots({0: "a", 1: "a", 2: None, 3: None})
    assert plan("b", ["a", "b"], after, 4)[0] == {2, 3}


def test_partitions_of_a_dead_or_lapsed_worker_are_free() -> None:
    state = slots({0: "a", 1: "a", 2: "gone", 3: "b"}, expired={3})
    keep, _ = plan("a", ["a"], state, 4)  # gone is not live, b's lease ran out
    assert keep == {0, 1, 2, 3}


def test_replay_marks_map_to_their_partition() -> None:
    assert mark_partition(replay_mark(0)) == 0
    assert mark_partition(replay_mark(17)) == 17
    assert mark_partition(5) is None and mark_partition(-1) is None


def _sink(path: Path) -> SqliteSink:
    sink = SqliteSink(SqliteSinkConfig(kind="sqlite", path=str(path)), "p")
    sink.open("p")
    return sink


def test_sqlite_workers_split_and_a_worker_without_the_lease_cannot_write(
    tmp_path: Path,
) -> None:
    a, b = _sink(tmp_path / "t.db"), _sink(tmp_path / "t.db")
    assert a.rebalance("a", 4, lease_s=60) == {0, 1, 2, 3}
    assert b.rebalance("b", 4, lease_s=60) == set()  # a holds them, live
    assert a.rebalance("a", 4, lease_s=60) == {0, 1}  # a sees b, gives half back
    assert b.rebalance("b", 4, lease_s=60) == {2, 3}
    a.positions()
    b.positions()
    a.apply([], {0: 5, 1: 7})
    b.apply([], {2: 1})
    with pytest.raises(
        TransientError, match="partition 2 of pipeline p is no longer leased to worker a"
    ):
        a.apply([], {2: 9})
    assert a.positions() == {0: 5, 1: 7, 2: 1, 3: 0}

    # a lease that ran out: the worker's next write is refused until it re-balances
    c = _sink(tmp_path / "t.db")
    assert c.rebalance("c", 4, lease_s=0.5) == set()
    a.rebalance("a", 4, lease_s=0.5, leaving=True)
    b.rebalance("b", 4, lease_s=0.5, leaving=True)
    c.rebalance("c", 4, lease_s=0.5)
    assert c.rebalance("c", 4, lease_s=0.5) == {0, 1, 2, 3}
    c.positions()
    time.sleep(0.6)
    with pytest.raises(TransientError, match="no longer leased"):
        c.apply([], {0: 6})
    assert c.rebalance("c", 4, lease_s=0.5) == {0, 1, 2, 3}
    c.apply([], {0: 6})
    for s in (a, b, c):
        s.close()
