"""The embedded SQLite log: the transport contract plus what only it promises."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from contract.transport_contract import TransportContract, by_partition, drain, rec
from syncline.config import EmbeddedTransportConfig
from syncline.errors import ConfigError, StorageError, TransportError
from syncline.transports.base import Transport
from syncline.transports.embedded import EmbeddedTransport

PIPELINE = "orders"


def make(
    path: Path, partitions: int = 4, *, retention_hours: float = 168.0, busy_timeout: float = 5.0
) -> EmbeddedTransport:
    cfg = EmbeddedTransportConfig(
        path=str(path), partitions=partitions, retention_hours=retention_hours
    )
    return EmbeddedTransport(cfg, PIPELINE, busy_timeout=busy_timeout)


class TestEmbeddedContract(TransportContract):
    def make_transport(self, tmp_path: Path, partitions: int) -> Transport:
        return make(tmp_path / "log", partitions)


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "log"


def test_layout_is_one_wal_database_per_pipeline(log_dir: Path) -> None:
    t = make(log_dir, 3)
    t.producer().publish([rec(1, "a")], {"n": 1})
    t.close()
    db = log_dir / "orders.log.db"
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"records", "producer_state", "group_offsets", "meta"} <= tables
    assert conn.execute("SELECT value FROM meta WHERE key = 'partitions'").fetchone()[0] == "3"
    assert conn.execute("SELECT tbl, value FROM records").fetchall() == [("public.orders", b"a")]
    conn.close()
    assert t.check()[0].startswith(f"embedded log {db}: 3 partitions, fsync on")


def test_changing_partition_count_is_refused(log_dir: Path) -> None:
    make(log_dir, 4).close()
    with pytest.raises(ConfigError) as err:
        make(log_dir, 8)
    msg = str(err.value)
    assert "has 4 partitions but transport.partitions is 8" in msg
    assert "\n" not in msg


def test_second_producer_is_refused(log_dir: Path) -> None:
    t = make(log_dir)
    first = t.producer()
    with pytest.raises(TransportError) as err:
        t.producer()
    lock = log_dir / "orders.producer.lock"
    assert str(err.value) == (
        "pipeline orders's log is already being written by another syncline process "
        f"(lock file {lock})"
    )
    first.publish([rec(1, "a")], {"n": 1})
    first.close()
    second = t.producer()  # the lock goes with the producer
    second.publish([rec(1, "b")], {"n": 2})
    assert [(r.offset, r.value) for r in drain(t.consumer("g", [0, 1, 2, 3]), 2)] == [
        (0, b"a"),
        (1, b"b"),
    ]
    t.close()


def test_offsets_continue_after_reopen(log_dir: Path) -> None:
    t = make(log_dir, 1)
    t.producer().publish([rec(i, str(i)) for i in range(5)], {"n": 5})
    t.close()
    t = make(log_dir, 1)
    assert t.end_offsets() == {0: 5}
    t.producer().publish([rec(i, str(i)) for i in range(5, 8)], {"n": 8})
    assert [r.offset for r in drain(t.consumer("g"), 8)] == list(range(8))
    t.close()


def test_poll_is_fair_across_partitions(log_dir: Path) -> None:
    t = make(log_dir, 4)
    t.producer().publish([rec(i, str(i)) for i in range(400)], {"n": 400})
    batch = t.consumer("g").poll(40, 1.0)
    assert len(batch) == 40
    assert {r.partition for r in batch} == {0, 1, 2, 3}
    t.close()


def test_disk_full_is_a_storage_error_and_stores_nothing(log_dir: Path) -> None:
    t = make(log_dir, 2)
    prod = t.producer()
    prod.publish([rec(i, str(i)) for i in range(10)], {"n": 10})
    before = t.end_offsets()
    conn = prod._conn  # fault injection: cap the file at its current size
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(StorageError) as err:
        prod.publish([rec(i, os.urandom(4096)) for i in range(50)], {"n": 60})
    assert str(err.value) == (
        f"embedded log at {log_dir / 'orders.log.db'} is out of disk space; "
        "free space and restart, nothing was lost"
    )
    assert t.end_offsets() == before
    assert prod.checkpoint() == {"n": 10}
    conn.execute("PRAGMA max_page_count = 1073741823")
    prod.publish([rec(i, str(i)) for i in range(10, 20)], {"n": 20})
    got = by_partition(drain(t.consumer("g"), 20))
    for rs in got.values():  # the failed batch left no gap in the offsets
        assert [r.offset for r in rs] == list(range(len(rs)))
    assert sorted(int(r.value) for rs in got.values() for r in rs) == list(range(20))
    t.close()


def test_read_only_log_is_a_storage_error_naming_the_file(log_dir: Path) -> None:
    t = make(log_dir)
    prod = t.producer()
    prod._conn.execute("PRAGMA query_only = 1")  # fault injection: writes refused
    with pytest.raises(StorageError) as err:
        prod.publish([rec(1, "a")], {"n": 1})
    assert str(log_dir / "orders.log.db") in str(err.value)
    assert "writable" in str(err.value)
    t.close()


def test_locked_log_is_a_transient_transport_error(log_dir: Path) -> None:
    t = make(log_dir, busy_timeout=0.05)
    prod = t.producer()
    other = sqlite3.connect(log_dir / "orders.log.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # someone else holds the write lock
    with pytest.raises(TransportError, match="is locked by another connection"):
        prod.publish([rec(1, "a")], {"n": 1})
    other.execute("ROLLBACK")
    other.close()
    prod.publish([rec(1, "a")], {"n": 1})  # a retry succeeds once the lock is gone
    assert prod.checkpoint() == {"n": 1}
    t.close()


def test_unusable_paths_are_storage_errors_naming_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError) as err:
        make(blocker / "log")
    assert f"cannot create the embedded log directory {blocker / 'log'}" in str(err.value)

    log_dir = tmp_path / "garbage"
    log_dir.mkdir()
    (log_dir / "orders.log.db").write_bytes(b"this is not a sqlite database at all" * 100)
    with pytest.raises(StorageError) as err:
        make(log_dir)
    assert f"embedded log at {log_dir / 'orders.log.db'} is not a usable log file" in str(err.value)


def test_retention_keeps_what_a_group_has_not_consumed(log_dir: Path) -> None:
    t = make(log_dir, 2, retention_hours=1)
    prod = t.producer()
    prod.publish([rec(i, str(i)) for i in range(100)], {"n": 100})
    later = time.time_ns() // 1_000_000 + 2 * 3_600_000  # two hours from now
    end = t.end_offsets()
    assert t.enforce_retention(later) == 0  # no group has read anything yet

    a = t.consumer("a")
    assert t.enforce_retention(later) == 0  # registered, nothing committed: all pinned
    a.commit(end)
    b = t.consumer("b")
    half = {p: o // 2 for p, o in end.items()}
    b.commit(half)
    assert t.enforce_retention() == 0  # consumed, but younger than an hour
    assert t.enforce_retention(later) == sum(half.values())
    rest = by_partition(drain(t.consumer("late"), 100 - sum(half.values())))
    assert {p: rs[0].offset for p, rs in rest.items()} == half

    t.drop_group("b")
    t.drop_group("late")
    deleted = t.enforce_retention(later)
    assert deleted == sum(end.values()) - sum(half.values()) - 2  # newest per partition stays
    assert t.end_offsets() == end
    prod.close()
    prod = t.producer()  # offsets go on from the kept record, never reused
    prod.publish([rec(i, str(i)) for i in range(100, 110)], {"n": 110})
    c = t.consumer("c")
    c.seek(end)
    assert sorted(int(r.value) for r in drain(c, 10)) == list(range(100, 110))
    t.close()


CHILD = textwrap.dedent(
    """
    import sys, time
    from syncline.config import EmbeddedTransportConfig
    from syncline.events import encode_key
    from syncline.transports.base import Record
    from syncline.transports.embedded import EmbeddedTransport

    t = EmbeddedTransport(EmbeddedTransportConfig(path=sys.argv[1], partitions=4), "orders")
    prod = t.producer()
    n = (prod.checkpoint() or {"n": 0})["n"]
    mode = sys.argv[2]
    if mode == "once":
        time.sleep(0.3)
    while True:
        batch = [Record("t", encode_key({"id": i % 97}), str(i).encode()) for i in range(n, n + 300)]
        prod.publish(batch, {"n": n + 300})
        n += 300
        print(n, flush=True)
        if mode == "once":
            break
    """
)


def spawn(log_dir: Path, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(log_dir), mode], stdout=subprocess.PIPE, text=True
    )


def test_consumer_sees_a_producer_in_another_process(log_dir: Path) -> None:
    t = make(log_dir)
    cons = t.consumer("g")
    child = spawn(log_dir, "once")
    try:
        got = cons.poll(1000, 20.0)  # wakes via data_version polling, not the in-process signal
        assert got
        assert len(got) + len(drain(cons, 300 - len(got))) == 300
    finally:
        child.wait(30)
        t.close()


def test_producer_killed_mid_stream_leaves_a_consistent_log(log_dir: Path) -> None:
    make(log_dir).close()
    for round_ in range(3):
        child = spawn(log_dir, "loop")
        assert child.stdout is not None
        for _ in range(3 + round_ * 2):  # let it commit a few batches, then kill it anywhere
            assert child.stdout.readline()
        if round_ == 0:
            t = make(log_dir)
            with pytest.raises(TransportError, match="already being written"):
                t.producer()
            t.close()
        time.sleep(0.01 * round_)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
        child.stdout.close()

    conn = sqlite3.connect(log_dir / "orders.log.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    t = make(log_dir)
    prod = t.producer()  # the dead process's lock is gone
    checkpoint = prod.checkpoint()
    assert checkpoint is not None
    n = checkpoint["n"]
    got = drain(t.consumer("verify"), n)
    assert sorted(int(r.value) for r in got) == list(range(n))  # every record, none extra
    for rs in by_partition(got).values():
        assert [r.offset for r in rs] == list(range(len(rs)))
    t.close()
