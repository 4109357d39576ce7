"""The transport contract: every backend subclasses ``TransportContract`` in a few lines.

A subclass provides ``make_transport(tmp_path, partitions)``; calling it again
with the same ``tmp_path`` must reach the same log (the reopen tests rely on it).
A backend is done when it passes this suite.
"""

from __future__ import annotations

import abc
import os
import threading
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncline.events import encode_key
from syncline.transports.base import Consumer, Delivered, Record, Transport, partition_for

TABLE = "public.orders"


def rec(key: int, value: bytes | str) -> Record:
    return Record(
        TABLE, encode_key({"id": key}), value.encode() if isinstance(value, str) else value
    )


def drain(consumer: Consumer, expected: int, timeout: float = 15.0) -> list[Delivered]:
    """Poll until ``expected`` records arrived, then make sure nothing more comes."""
    out: list[Delivered] = []
    deadline = time.monotonic() + timeout
    while len(out) < expected and time.monotonic() < deadline:
        out.extend(consumer.poll(97, 0.5))
    out.extend(consumer.poll(1000, 0.2))
    return out


def by_partition(records: list[Delivered]) -> dict[int, list[Delivered]]:
    out: dict[int, list[Delivered]] = defaultdict(list)
    for r in records:
        out[r.partition].append(r)
    return out


def next_positions(records: list[Delivered]) -> dict[int, int]:
    """What a sink would store after applying ``records``: next offset per partition."""
    pos: dict[int, int] = {}
    for r in records:
        pos[r.partition] = r.offset + 1
    return pos


class TransportContract(abc.ABC):
    @abc.abstractmethod
    def make_transport(self, tmp_path: Path, partitions: int) -> Transport: ...

    def age_out(self, transport: Transport) -> None:
        """Make everything in the log older than its retention, and let retention run.

        Each backend says how (the embedded log: ``enforce_retention`` with a clock two
        retention periods ahead; NATS: the stream's ``max_age`` lowered for a moment).
        """
        pytest.skip("this backend has no way to age its log in a test")

    @pytest.fixture(autouse=True)
    def _close_opened(self) -> Iterator[None]:
        self._opened: list[Transport] = []
        yield
        for t in reversed(self._opened):
            t.close()

    def open(self, tmp_path: Path, partitions: int = 4) -> Transport:
        t = self.make_transport(tmp_path, partitions)
        self._opened.append(t)
        return t

    def test_per_key_order_across_partitions(self, tmp_path: Path) -> None:
        t = self.open(tmp_path, 4)
        prod = t.producer()
        keys, updates = 50, 40
        stream = [rec(i % keys, str(i // keys)) for i in range(keys * updates)]
        for start in range(0, len(stream), 97):
            prod.publish(stream[start : start + 97], {"n": start})
        cons = t.consumer("order")
        cons.seek(dict.fromkeys(range(4), 0))
        got = drain(cons, len(stream))
        assert len(got) == len(stream)
        seqs: dict[bytes, list[int]] = defaultdict(list)
        homes: dict[bytes, set[int]] = defaultdict(set)
        for r in got:
            seqs[r.key].append(int(r.value))
            homes[r.key].add(r.partition)
        assert len(seqs) == keys
        assert all(s == list(range(updates)) for s in seqs.values())
        assert all(len(h) == 1 for h in homes.values())  # a key never spans partitions
        assert len({p for h in homes.values() for p in h}) > 1  # and keys do spread
        for rs in by_partition(got).values():
            offsets = [r.offset for r in rs]
            assert offsets == sorted(set(offsets))

    def test_partition_is_partition_for_of_the_key(self, tmp_path: Path) -> None:
        t = self.open(tmp_path, 5)
        t.producer().publish([rec(i, str(i)) for i in range(300)], {"n": 300})
        got = drain(t.consumer("where"), 300)
        assert sorted(int(r.value) for r in got) == list(range(300))
        assert all(r.partition == partition_for(r.key, 5) for r in got)

    def test_every_record_once_per_seek_from_zero(self, tmp_path: Path) -> None:
        t = self.open(tmp_path, 3)
        prod = t.producer()
        values = [f"v{i}" for i in range(1000)]
        for start in range(0, 1000, 250):
            prod.publish([rec(i, values[i]) for i in range(start, start + 250)], {"n": start})
        cons = t.consumer("once")
        for _ in range(2):  # a second seek from zero hands everything out again, once
            cons.seek(dict.fromkeys(range(3), 0))
            batch = cons.poll(7, 5.0)
            assert 0 < len(batch) <= 7
            got = batch + drain(cons, 1000 - len(batch))
            assert sorted(r.value.decode() for r in got) == sorted(values)
            assert all(r.table == TABLE for r in got)
        end = t.end_offsets()
        assert set(end) == {0, 1, 2}
        for p, rs in by_partition(got).items():
            assert end[p] > rs[-1].offset
        # What a sink stores after applying everything is where the log ends: a drain waits
        # for exactly this. (Offsets only increase; a log may skip some, e.g. Kafka's markers.)
        assert end == next_positions(got)

    def test_checkpoint_round_trips_and_survives_reopen(self, tmp_path: Path) -> None:
        t = self.open(tmp_path, 2)
        prod = t.producer()
        assert prod.checkpoint() is None
        first = {"lsn": 2**40, "slot": "s", "tables": ["public.a"], "snapshot": {"done": False}}
        prod.publish([], first)  # a checkpoint alone (e.g. heartbeat) is stored too
        assert prod.checkpoint() == first
        second = {"lsn": 2**40 + 9, "slot": "s", "tables": ["public.a"], "snapshot": None}
        prod.publish([rec(1, "a"), rec(2, "b")], second)
        assert prod.checkpoint() == second
        prod.close()
        t.close()
        again = self.open(tmp_path, 2)
        prod2 = again.producer()
        assert prod2.checkpoint() == second
        prod2.publish([rec(3, "c")], {"lsn": 1})
        cons = again.consumer("g")
        cons.seek({0: 0, 1: 0})
        assert sorted(r.value for r in drain(cons, 3)) == [b"a", b"b", b"c"]

    def test_resume_from_seek_has_no_gaps(self, tmp_path: Path) -> None:
        t = self.open(tmp_path, 4)
        prod = t.producer()
        for start in range(0, 600, 100):
            prod.publish([rec(i, str(i)) for i in range(start, start + 100)], {"n": start})
        full = t.consumer("all")
        full.seek(dict.fromkeys(range(4), 0))
        everything = by_partition(drain(full, 600))
        mid = {p: rs[len(rs) // 3].offset for p, rs in everything.items()}
        cons = t.consumer("resume")
        cons.seek(mid)
        expected = sum(1 for rs in everything.values() for r in rs if r.offset >= mid[r.partition])
        got = by_partition(drain(cons, expected))
        for p, rs in everything.items():
            assert got[p] == [r for r in rs if r.offset >= mid[p]]

    def test_group_commit_and_resume_without_seek(self, tmp_path: Path) -> None:
        t = self.open(tmp_path, 4)
        prod = t.producer()
        prod.publish([rec(i, str(i)) for i in range(400)], {"n": 400})
        first = t.consumer("grp")
        got = drain(first, 400)
        assert len(got) == 400
        done = got[:150]
        first.commit(next_positions(done))
        first.close()
        second = t.consumer("grp")
        rest = drain(second, 250)
        assert sorted(r.value for r in done + rest) == sorted(r.value for r in got)
        assert {(r.partition, r.offset) for r in done}.isdisjoint(
            (r.partition, r.offset) for r in rest
        )
        other = t.consumer("other-group")
        assert len(drain(other, 400)) == 400

    def test_consumer_crash_mid_batch_loses_nothing(self, tmp_path: Path) -> None:
        t = self.open(tmp_path, 4)
        prod = t.producer()
        prod.publish([rec(i, str(i)) for i in range(300)], {"n": 300})
        cons = t.consumer("sink")
        batch = cons.poll(100, 5.0)
        assert len(batch) == 100
        applied = batch[:50]  # the sink committed these, then the process died
        sink_positions = next_positions(applied)
        cons.close()
        again = t.consumer("sink")
        again.seek(sink_positions)
        rest = drain(again, 250)
        assert sorted(int(r.value) for r in applied + rest) == list(range(300))

    def test_consumer_of_some_partitions_sees_only_those(self, tmp_path: Path) -> None:
        t = self.open(tmp_path, 4)
        t.producer().publish([rec(i, str(i)) for i in range(200)], {"n": 200})
        every = by_partition(drain(t.consumer("all"), 200))
        cons = t.consumer("part", [1, 3])
        got = drain(cons, len(every[1]) + len(every[3]))
        assert by_partition(got) == {p: every[p] for p in (1, 3) if every[p]}

    def test_large_values(self, tmp_path: Path) -> None:
        t = self.open(tmp_path, 2)
        big = [os.urandom(1 << 20) for _ in range(4)]
        t.producer().publish([rec(i, v) for i, v in enumerate(big)], {"n": 4})
        cons = t.consumer("big")
        got = drain(cons, 4)
        assert sorted(r.value for r in got) == sorted(big)

    def test_poll_on_empty_log_waits_then_returns_nothing(self, tmp_path: Path) -> None:
        cons = self.open(tmp_path, 2).consumer("idle")
        start = time.monotonic()
        assert cons.poll(100, 0.3) == []
        elapsed = time.monotonic() - start
        assert 0.15 <= elapsed < 10

    def test_consumer_in_another_thread_wakes_on_publish(self, tmp_path: Path) -> None:
        t = self.open(tmp_path, 2)
        cons = t.consumer("waiter")
        got: list[Delivered] = []
        started = threading.Event()

        def wait() -> None:
            started.set()
            got.extend(cons.poll(100, 20.0))

        th = threading.Thread(target=wait)
        th.start()
        started.wait()
        time.sleep(0.05)
        t.producer().publish([rec(1, "hello")], {"n": 1})
        th.join(30)
        assert [r.value for r in got] == [b"hello"]

    def test_meta_round_trips_and_survives_reopen(self, tmp_path: Path) -> None:
        t = self.open(tmp_path, 2)
        assert t.get_meta("schemas") is None
        t.put_meta("schemas", '{"a": 1}')
        t.put_meta("schemas", '{"a": 2}')  # the last value wins
        t.put_meta("other", "x" * 100_000)
        t.close()
        again = self.open(tmp_path, 2)
        assert again.get_meta("schemas") == '{"a": 2}'
        assert again.get_meta("other") == "x" * 100_000

    def test_new_table_reaches_a_running_consumer(self, tmp_path: Path) -> None:
        t = self.open(tmp_path, 2)
        prod = t.producer()
        prod.publish([rec(i, f"a{i}") for i in range(10)], {"n": 1})
        cons = t.consumer("tables")
        first = drain(cons, 10)
        other = [
            Record("public.items", r.key, b"b" + r.value[1:])
            for r in (rec(i, f"x{i}") for i in range(10))
        ]
        prod.publish(other, {"n": 2})  # a table the consumer has not seen yet
        second = drain(cons, 10)
        assert sorted(r.value for r in first) == sorted(f"a{i}".encode() for i in range(10))
        assert sorted(r.value for r in second) == sorted(f"b{i}".encode() for i in range(10))
        assert {r.table for r in second} == {"public.items"}
        # positions of both tables resume exactly where a sink left them
        again = t.consumer("tables-again")
        again.seek(next_positions(first + second[:5]))
        assert sorted(r.value for r in drain(again, 5)) == sorted(r.value for r in second[5:])

    def test_slow_consumer_neither_blocks_the_producer_nor_grows_memory(
        self, tmp_path: Path
    ) -> None:
        """Back-pressure contract: the log absorbs what the consumer has not read.

        ``publish`` never waits for consumers (only for the log to store the batch),
        and a consumer that reads slowly holds a bounded amount in memory, however
        much piles up behind it; it then reads everything, in order.
        """
        t = self.open(tmp_path, 4)
        prod = t.producer()
        cons = t.consumer("slow")
        cons.seek(dict.fromkeys(range(4), 0))
        value = os.urandom(16_384)
        prod.publish([rec(i, value) for i in range(8)], {"n": 8})
        first = cons.poll(4, 10.0)  # the consumer is running, then stalls
        assert 0 < len(first) <= 4
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            for start in range(8, 3008, 250):  # 48 MB behind the stalled consumer
                prod.publish([rec(i, value) for i in range(start, start + 250)], {"n": start})
            time.sleep(1.0)  # room for a prefetching consumer to fill whatever it buffers
            grown = tracemalloc.get_traced_memory()[0] - base
        finally:
            tracemalloc.stop()
        assert grown < 24 * 1024 * 1024, f"consumer side holds {grown / 1e6:.0f} MB"
        rest = drain(cons, 3008 - len(first), timeout=60)
        got = first + rest
        assert len(got) == 3008
        assert sorted(r.key for r in got) == sorted(rec(i, b"").key for i in range(3008))
        for rs in by_partition(got).values():
            offsets = [r.offset for r in rs]
            assert offsets == sorted(set(offsets))

    def test_retention_drops_old_consumed_records_and_keeps_the_rest_usable(
        self, tmp_path: Path
    ) -> None:
        t = self.open(tmp_path, 2)
        prod = t.producer()
        for start in range(0, 300, 50):
            prod.publish([rec(i, f"old{i}") for i in range(start, start + 50)], {"n": start + 50})
        cons = t.consumer("ret")
        cons.seek({0: 0, 1: 0})
        old = drain(cons, 300)
        assert len(old) == 300
        cons.commit(next_positions(old))
        self.age_out(t)
        prod.close()
        t.close()
        again = self.open(tmp_path, 2)
        prod = again.producer()
        assert prod.checkpoint() == {"n": 300}  # the checkpoint outlives the records
        prod.publish([rec(i, f"new{i}") for i in range(300, 340)], {"n": 340})
        fresh = again.consumer("late")
        fresh.seek({0: 0, 1: 0})
        got = drain(fresh, 40)
        left = [r for r in got if r.value.startswith(b"old")]
        new = [r for r in got if r.value.startswith(b"new")]
        assert len(left) < len(old)  # retention deleted something ...
        assert sorted(r.value for r in new) == sorted(f"new{i}".encode() for i in range(300, 340))
        old_by = by_partition(old)
        for p, rs in by_partition(left).items():  # ... and what is left is a suffix, no hole
            assert rs == old_by[p][len(old_by[p]) - len(rs) :]
        assert min(r.offset for r in new) > max(r.offset for r in old)
        resumed = again.consumer("ret")  # a group's positions stay valid across retention
        resumed.seek(next_positions(old))
        assert sorted(r.value for r in drain(resumed, 40)) == sorted(r.value for r in new)
