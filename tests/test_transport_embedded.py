"""The embedded SQLite log: the transport contract plus what only it promises."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import msgspec
import pytest

from contract.transport_contract import TransportContract, by_partition, drain, rec
from syncline.config import EmbeddedTransportConfig
from syncline.errors import ConfigError, DiskError, StorageError, TransientError, TransportError
from syncline.transports import embedded
from syncline.transports.base import Delivered, Transport, partition_for
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

    def age_out(self, transport: Transport) -> None:
        assert isinstance(transport, EmbeddedTransport)
        transport.enforce_retention(time.time_ns() // 1_000_000 + 2 * 168 * 3_600_000)


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "log"


def test_layout_is_one_wal_database_per_pipeline(log_dir: Path) -> None:
    t = make(log_dir, 3)
    prod = t.producer()
    first = [rec(i, str(i)) for i in range(30)]
    prod.publish(first, {"n": 30})
    prod.publish([rec(i, str(i)) for i in range(30, 40)], {"n": 40})
    t.close()
    db = log_dir / "orders.log.db"
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"batches", "producer_state", "group_offsets", "meta"}
    assert dict(conn.execute("SELECT key, value FROM meta")) == {"partitions": "3", "format": "2"}
    # One row per (publish, partition); offsets go on from the previous batch.
    rows = conn.execute(
        "SELECT partition, base_offset, count, payload FROM batches ORDER BY partition, base_offset"
    ).fetchall()
    conn.close()
    homes = Counter(partition_for(r.key, 3) for r in first)
    assert [(p, c) for p, b, c, _ in rows if b == 0] == sorted(homes.items())
    later = [(p, b) for p, b, _, _ in rows if b != 0]
    assert later and all(b == homes[p] for p, b in later)
    assert sum(c for _, _, c, _ in rows) == 40
    p0 = next(msgspec.msgpack.decode(pl) for p, b, _, pl in rows if (p, b) == (0, 0))
    assert p0 == [[r.table, r.key, r.value] for r in first if partition_for(r.key, 3) == 0]
    assert t.check()[0].startswith(f"embedded log {db}: 3 partitions, fsync on")


def test_other_layouts_are_refused_and_left_alone(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    conn = sqlite3.connect(old / "orders.log.db")
    conn.execute("CREATE TABLE records (partition INTEGER, offset INTEGER, value BLOB)")
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('partitions', '4'), ('format', '1')")
    conn.commit()
    conn.close()
    with pytest.raises(StorageError) as err:
        make(old)
    assert str(err.value) == (
        f"embedded log {old / 'orders.log.db'} has layout format 1 but this syncline reads "
        "format 2; drain it with the version that wrote it, then move it away or set "
        "transport.path to another directory"
    )

    other = tmp_path / "other"
    other.mkdir()
    conn = sqlite3.connect(other / "orders.log.db")
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    with pytest.raises(StorageError) as err:
        make(other)
    assert str(err.value) == (
        f"{other / 'orders.log.db'} is a SQLite database but not a syncline log; "
        "move it away or set transport.path to another directory"
    )
    tables = [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    assert tables == ["customers"]  # nothing created in someone else's database ...
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # ... nor switched to WAL
    conn.close()


def test_unreadable_batch_is_a_storage_error(log_dir: Path) -> None:
    t = make(log_dir, 1)
    t.producer().publish([rec(i, str(i)) for i in range(10)], {"n": 10})
    raw = sqlite3.connect(log_dir / "orders.log.db", isolation_level=None)
    raw.execute("UPDATE batches SET payload = x'c1'")  # 0xc1 is never valid msgpack
    with pytest.raises(StorageError) as err:
        t.consumer("g").poll(10, 1.0)
    assert str(err.value).startswith(
        f"embedded log {log_dir / 'orders.log.db'}: the batch at partition 0 offset 0 is unreadable"
    )
    raw.execute("UPDATE batches SET payload = ?", (msgspec.msgpack.encode([["t", b"k", b"v"]]),))
    with pytest.raises(StorageError, match=r"unreadable \(1 records, expected 10\)"):
        t.consumer("h").poll(10, 1.0)
    raw.close()
    t.close()


def test_poll_smaller_than_a_batch_returns_the_rest_next_time(log_dir: Path) -> None:
    t = make(log_dir, 1)
    prod = t.producer()
    prod.publish([rec(i, str(i)) for i in range(100)], {"n": 100})  # one batch: offsets 0-99
    cons = t.consumer("g")
    got = cons.poll(7, 1.0)
    assert [r.offset for r in got] == list(range(7))
    prod.publish([rec(i, str(i)) for i in range(100, 150)], {"n": 150})  # 100-149
    while len(got) < 150:
        batch = cons.poll(7, 1.0)
        assert 0 < len(batch) <= 7
        got += batch  # the poll from 98 takes 98-99 from one batch and 100-104 from the next
    assert [r.offset for r in got] == list(range(150))
    assert [int(r.value) for r in got] == list(range(150))
    assert cons.poll(7, 0.1) == []


def test_seek_into_the_middle_of_a_batch(log_dir: Path) -> None:
    t = make(log_dir, 1)
    prod = t.producer()
    prod.publish([rec(i, str(i)) for i in range(100)], {"n": 100})  # offsets 0-99
    prod.publish([rec(i, str(i)) for i in range(100, 120)], {"n": 120})  # 100-119

    def values(rs: list[Delivered]) -> list[int]:
        assert [r.offset for r in rs] == [int(r.value) for r in rs]
        return [r.offset for r in rs]

    fresh = t.consumer("fresh")
    fresh.seek({0: 50})
    assert values(fresh.poll(1, 1.0)) == [50]
    cons = t.consumer("g")
    cons.seek({0: 37})
    assert values(drain(cons, 83)) == list(range(37, 120))
    cons.seek({0: 10})  # back into a batch read before
    assert values(cons.poll(5, 1.0)) == list(range(10, 15))
    cons.seek({0: 12})  # and again, inside what was just returned
    assert values(cons.poll(3, 1.0)) == [12, 13, 14]
    cons.seek({0: 95})  # forward, across the boundary into the next batch
    assert values(cons.poll(10, 1.0)) == list(range(95, 105))
    cons.seek({0: 119})
    assert values(cons.poll(10, 1.0)) == [119]
    cons.seek({0: 120})
    assert cons.poll(10, 0.1) == []


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


def test_disk_full_is_a_retried_disk_error_and_stores_nothing(log_dir: Path) -> None:
    t = make(log_dir, 2)
    prod = t.producer()
    prod.publish([rec(i, str(i)) for i in range(10)], {"n": 10})
    before = t.end_offsets()
    conn = prod._conn  # fault injection: cap the file at its current size
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(DiskError) as err:
        prod.publish([rec(i, os.urandom(4096)) for i in range(50)], {"n": 60})
    assert isinstance(err.value, TransientError)  # the pipeline retries until space returns
    assert str(err.value) == (
        f"embedded log at {log_dir / 'orders.log.db'} is out of disk space while appending "
        "records; free space on its disk, nothing is lost"
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


def test_read_only_log_is_a_retried_disk_error_naming_the_file(log_dir: Path) -> None:
    t = make(log_dir)
    prod = t.producer()
    prod._conn.execute("PRAGMA query_only = 1")  # fault injection: writes refused
    with pytest.raises(DiskError) as err:
        prod.publish([rec(1, "a")], {"n": 1})
    assert str(log_dir / "orders.log.db") in str(err.value)
    assert "writable" in str(err.value)
    t.close()


def test_known_group_reads_on_while_the_log_refuses_writes(
    log_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Apply can drain what the log holds while its disk is full or read-only."""
    t = make(log_dir, 2)
    t.producer().publish([rec(i, str(i)) for i in range(10)], {"n": 10})
    t.consumer("g").close()  # registered while the disk was fine
    connect = t.connect

    def refusing() -> sqlite3.Connection:
        conn = connect()
        conn.execute("PRAGMA query_only = 1")  # fault injection: every write refused
        return conn

    monkeypatch.setattr(t, "connect", refusing)
    cons = t.consumer("g")
    assert sorted(int(r.value) for r in drain(cons, 10)) == list(range(10))
    with pytest.raises(DiskError):
        cons.commit({0: 1})
    with pytest.raises(DiskError, match="registering consumer group 'new'"):
        t.consumer("new")
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


def test_retention_deletes_whole_batches_a_group_has_consumed(
    log_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded, "_RETENTION_CHUNK", 7)  # several transactions per partition
    monkeypatch.setattr(embedded, "_RETENTION_SCAN", 3)
    t = make(log_dir, 2, retention_hours=1)
    prod = t.producer()
    batches: dict[int, list[tuple[int, int]]] = {0: [], 1: []}  # (base offset, count)
    for start in range(0, 100, 10):
        chunk = [rec(i, str(i)) for i in range(start, start + 10)]
        prod.publish(chunk, {"n": start + 10})
        for p, count in sorted(Counter(partition_for(r.key, 2) for r in chunk).items()):
            base = sum(c for _, c in batches[p])
            batches[p].append((base, count))
    later = time.time_ns() // 1_000_000 + 2 * 3_600_000  # two hours from now
    end = t.end_offsets()
    assert end == {p: sum(c for _, c in bs) for p, bs in batches.items()}
    assert t.enforce_retention(later) == 0  # no group has read anything yet

    a = t.consumer("a")
    assert t.enforce_retention(later) == 0  # registered, nothing committed: all pinned
    a.commit(end)
    b = t.consumer("b")
    # b stops one record into a batch past the middle: that batch must stay whole.
    cut = {p: next(b for b, c in bs[len(bs) // 2 :] if c > 1) + 1 for p, bs in batches.items()}
    b.commit(cut)
    assert t.enforce_retention() == 0  # consumed, but younger than an hour
    consumed = {p: sum(c for b, c in bs if b + c <= cut[p]) for p, bs in batches.items()}
    assert t.enforce_retention(later) == sum(consumed.values())
    assert t.enforce_retention(later) == 0
    late = t.consumer("late")  # from 0: starts at the oldest batch left
    rest = by_partition(drain(late, sum(end.values()) - sum(consumed.values())))
    assert {p: [r.offset for r in rs] for p, rs in rest.items()} == {
        p: list(range(consumed[p], end[p])) for p in end
    }
    assert all(consumed[p] <= cut[p] - 1 for p in end)  # b's next record is still there

    t.drop_group("b")
    t.drop_group("late")
    newest = {p: bs[-1][1] for p, bs in batches.items()}
    deleted = t.enforce_retention(later)
    assert deleted == sum(end.values()) - sum(consumed.values()) - sum(newest.values())
    assert t.end_offsets() == end  # the newest batch stays: it carries the next offsets
    prod.close()
    prod = t.producer()  # offsets go on from the kept batch, never reused
    prod.publish([rec(i, str(i)) for i in range(100, 110)], {"n": 110})
    c = t.consumer("c")
    c.seek(end)
    assert sorted(int(r.value) for r in drain(c, 10)) == list(range(100, 110))
    t.close()


def test_wal_is_checkpointed_off_the_commit_path_and_reused(
    log_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded, "_WAL_KICK_PAGES", 0)  # wake the checkpointer every commit
    t = make(log_dir, 1)
    prod = t.producer()
    db = log_dir / "orders.log.db"
    wal = log_dir / "orders.log.db-wal"
    value = os.urandom(100_000)

    def burst(first: int, n: int) -> None:  # 1 MB per publish: below both inline thresholds
        for i in range(first, first + n):
            prod.publish([rec(k, value) for k in range(i * 10, i * 10 + 10)], {"n": i})

    burst(0, 5)
    deadline = time.monotonic() + 20
    while db.stat().st_size < 5_000_000 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert db.stat().st_size >= 5_000_000  # copied by the checkpointer thread, log still open
    # let its last pass finish (under load it may still be copying the final frames)
    ckpt = prod._ckpt  # type: ignore[attr-defined]
    while ckpt._seen or ckpt._wake.is_set() or ckpt._lock.locked():
        if time.monotonic() > deadline:
            break
        if not ckpt._wake.is_set() and not ckpt._lock.locked():
            ckpt._wake.set()  # as the next commit's kick would
        time.sleep(0.01)
    assert ckpt._seen == 0, "the background checkpoint never caught up"
    size = wal.stat().st_size
    burst(5, 3)
    assert wal.stat().st_size == size  # the WAL started over instead of growing
    t.close()


def test_producer_checkpoints_inline_when_the_wal_gets_long(
    log_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded, "_WAL_CATCH_UP_PAGES", 0)  # always "too long"
    t = make(log_dir, 1)
    prod = t.producer()
    value = os.urandom(100_000)
    for i in range(10):
        prod.publish([rec(k, value) for k in range(i * 10, i * 10 + 10)], {"n": i})
        # every commit was checkpointed before publish returned
        assert (log_dir / "orders.log.db").stat().st_size >= (i + 1) * 1_000_000
    assert (log_dir / "orders.log.db-wal").stat().st_size < 2_500_000
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
