"""The embedded durable log: one SQLite file per pipeline (the default transport).

Why SQLite: a WAL-mode transaction makes a batch of records and the producer's
checkpoint land together or not at all, survives a crash of the process or the
machine, and reads are cheap range scans on ``(partition, base_offset)``. Nothing
has to run besides the pipeline itself. Records are stored as batches, one row
per (publish, partition) as in Kafka, so SQLite's per-row cost is paid once per
batch; offsets stay per record. See docs/transports.md.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from zlib import crc32

import msgspec

from syncline.config import EmbeddedTransportConfig
from syncline.errors import ConfigError, DiskError, StorageError, SynclineError, TransportError
from syncline.transports.base import (
    Checkpoint,
    Consumer,
    Delivered,
    Producer,
    Record,
    Transport,
)

log = logging.getLogger(__name__)

_FORMAT = "2"  # layout version in meta; 2 = one row per (publish, partition) batch
_SCHEMA = (
    # A rowid table on purpose: in a WITHOUT ROWID (index) b-tree, comparing keys reads
    # the whole overflowing row; with 350 KB batches that made appends 1.5x and reads 4x
    # slower. payload is last, so reading the other columns skips its overflow pages.
    "CREATE TABLE batches (partition INTEGER NOT NULL, base_offset INTEGER NOT NULL,"
    " count INTEGER NOT NULL, ts_ms INTEGER NOT NULL, payload BLOB NOT NULL,"
    " PRIMARY KEY (partition, base_offset))",
    "CREATE TABLE producer_state (id INTEGER PRIMARY KEY CHECK (id = 1), checkpoint TEXT NOT NULL)",
    "CREATE TABLE group_offsets (grp TEXT NOT NULL, partition INTEGER NOT NULL,"
    " next_offset INTEGER NOT NULL, PRIMARY KEY (grp, partition)) WITHOUT ROWID",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
)
_INSERT = (
    "INSERT INTO batches (partition, base_offset, count, ts_ms, payload) VALUES (?, ?, ?, ?, ?)"
)
_SAVE_CHECKPOINT = (
    "INSERT INTO producer_state (id, checkpoint) VALUES (1, ?)"
    " ON CONFLICT (id) DO UPDATE SET checkpoint = excluded.checkpoint"
)
# The batch holding offset ?2 and every later one; the subquery keeps it an index seek.
_READ = (
    "SELECT base_offset, count, payload FROM batches WHERE partition = ?1 AND base_offset >="
    " IFNULL((SELECT base_offset FROM batches WHERE partition = ?1 AND base_offset <= ?2"
    " ORDER BY base_offset DESC LIMIT 1), 0) AND base_offset + count > ?2 ORDER BY base_offset"
)
_END_OFFSET = (
    "SELECT base_offset + count FROM batches WHERE partition = ? ORDER BY base_offset DESC LIMIT 1"
)
_OLDEST = (
    "SELECT base_offset, count, ts_ms FROM batches WHERE partition = ? ORDER BY base_offset LIMIT ?"
)
_COMMIT_GROUP = (
    "INSERT INTO group_offsets (grp, partition, next_offset) VALUES (?, ?, ?)"
    " ON CONFLICT (grp, partition) DO UPDATE SET next_offset = excluded.next_offset"
)

RETENTION_EVERY_S = 30.0  # how often the producer enforces retention on its own
_RETENTION_CHUNK = 20_000  # records deleted per transaction, so writers never wait long
_RETENTION_SCAN = 1_000  # batches looked at per transaction
_FAST_POLL_S = 0.005  # cross-process check interval while records are flowing
_SLOW_POLL_S = 0.05  # ... and once the log has been idle for _IDLE_AFTER_S
_IDLE_AFTER_S = 1.0
# WAL pages at which a committing connection checkpoints inline (SQLite's autocheckpoint).
# The producer's background checkpointer keeps the WAL far below it; this is the backstop.
_WAL_MAX_PAGES = 8192
_WAL_KICK_PAGES = 1000  # pages appended before the background checkpoint runs (SQLite's default)
_WAL_CATCH_UP_PAGES = 2048  # WAL length past which the producer waits for the checkpoint

# Big records: a stored batch row is cut at about _ROW_BYTES (SQLite refuses a value
# over SQLITE_LIMIT_LENGTH, 1 GB by default), and a poll stops after about
# _POLL_BYTES, so many big records never sit in memory at once.
_ROW_BYTES = 16 << 20
_POLL_BYTES = 32 << 20

# SQLite primary result codes (sqlite3.h).
_PERM, _BUSY, _LOCKED, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB, _TOOBIG = (
    3, 5, 6, 8, 10, 11, 13, 14, 26, 18,
)  # fmt: skip

_encode_checkpoint = msgspec.json.Encoder().encode
_decode_checkpoint = msgspec.json.Decoder(dict).decode
# A batch payload is a msgpack array of [table, key, value] arrays (Record is array_like).
_encode_batch = msgspec.msgpack.Encoder().encode
_decode_batch = msgspec.msgpack.Decoder(list[Record]).decode


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _disk_refusal(directory: Path) -> OSError | None:
    """Why ``directory`` refuses a small write (full, read-only, ...), or None if it takes it.

    SQLite reports a read-only file system as a generic I/O error, and a disk full
    while it checkpoints the same way; the operating system's own answer names the cause.
    """
    probe = directory / f".syncline-probe-{os.getpid()}-{threading.get_ident()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, bytes(8192))
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(probe)
        return exc
    return None


def _disk_error(path: Path, doing: str, refusal: OSError) -> DiskError:
    if refusal.errno in _DISK_FULL:
        return DiskError(
            f"embedded log at {path} is out of disk space while {doing} "
            f"({refusal.strerror}); free space on its disk, nothing is lost"
        )
    return DiskError(
        f"embedded log at {path} cannot be written while {doing} ({refusal.strerror}); "
        "make its disk and directory writable, nothing is lost"
    )


def _translate(exc: sqlite3.Error, db: Path, doing: str) -> SynclineError:
    """Map a SQLite error to the branch that decides retry (busy, disk) or operator action."""
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    msg = str(exc)
    if code in (_FULL, _IOERR, _READONLY, _PERM, _CANTOPEN) or "disk is full" in msg:
        refusal = _disk_refusal(db.parent)
        if refusal is not None:
            return _disk_error(db, doing, refusal)
    if code == _FULL or "disk is full" in msg:
        return DiskError(
            f"embedded log at {db} is out of disk space while {doing}; "
            "free space on its disk, nothing is lost"
        )
    if code in (_READONLY, _PERM, _CANTOPEN) or "readonly" in msg or "unable to open" in msg:
        return DiskError(
            f"embedded log at {db} cannot be written while {doing} ({msg}); "
            "make the file and its directory writable for this user, nothing is lost"
        )
    if code in (_CORRUPT, _NOTADB):
        return StorageError(
            f"embedded log at {db} is not a usable log file ({msg}); "
            "restore it or move it away (syncline will not overwrite it)"
        )
    if code == _IOERR:
        return StorageError(f"embedded log at {db}: disk I/O error while {doing} ({msg})")
    if code == _TOOBIG or "too big" in msg:
        return StorageError(
            f"embedded log at {db}: a record is larger than SQLite stores in one value while "
            f"{doing} ({msg}); see docs/reliability.md, bad input: oversized rows"
        )
    if code in (_BUSY, _LOCKED):
        return TransportError(f"embedded log at {db} is locked by another connection while {doing}")
    return TransportError(f"embedded log at {db}: {msg} while {doing}")


def _connect(db: Path, fsync: bool, busy_timeout: float, *, wal: bool = True) -> sqlite3.Connection:
    """One connection per producer/consumer: autocommit mode, explicit transactions."""
    conn: sqlite3.Connection | None = None
    try:
        conn = sqlite3.connect(
            db, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        if wal:
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
        conn.execute(f"PRAGMA wal_autocheckpoint={_WAL_MAX_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit={_WAL_MAX_PAGES * 4096}")  # shrink after a burst
    except sqlite3.Error as exc:
        if conn is not None:
            conn.close()
        raise _translate(exc, db, "opening the log") from exc
    return conn


class _Signal:
    """Wakes same-process consumers the moment a producer commits."""

    __slots__ = ("cond", "version")

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.version = 0

    def notify(self) -> None:
        with self.cond:
            self.version += 1
            self.cond.notify_all()


class _Checkpointer:
    """Copies the WAL back into the database off the producer's commit path.

    Left to SQLite, every few commits would run the checkpoint (writes plus
    fsyncs) inside ``publish``. A PASSIVE checkpoint from this thread never
    blocks the writer, and when it has caught up the next commit starts the WAL
    from the beginning. It runs every ``_WAL_KICK_PAGES``, not every commit:
    fsyncs of its own would slow small commits down. A writer that never pauses
    would outrun it and grow the WAL without end, so once the WAL is estimated
    past ``_WAL_CATCH_UP_PAGES`` the producer checkpoints itself (RESTART).
    """

    def __init__(self, conn: sqlite3.Connection, db: Path) -> None:
        self._conn = conn
        self._db = db
        self._lock = threading.Lock()  # one checkpoint at a time, from either thread
        self._wake = threading.Event()
        self._stop = False
        self._failing = False
        # Page counts are estimates from payload sizes; they only pace checkpoints.
        self._appended = 0  # pages the producer has appended, ever
        self._kicked = 0  # _appended when the thread was last woken
        self._seen = 0  # WAL pages the last checkpoint left in place ...
        self._seen_at = 0  # ... and _appended when it started
        self._thread = threading.Thread(target=self._run, name="syncline-log-checkpoint")
        self._thread.daemon = True
        self._thread.start()

    def after_commit(self, pages: int) -> None:
        """Count ``pages`` appended; checkpoint in the background, or here if the WAL is long."""
        self._appended += pages
        if self._seen + self._appended - self._seen_at >= _WAL_CATCH_UP_PAGES:
            self._checkpoint("RESTART")  # waits for readers, so the next commit starts over
        elif self._appended - self._kicked >= _WAL_KICK_PAGES:
            self._kicked = self._appended
            self._wake.set()

    def _checkpoint(self, mode: str) -> None:
        with self._lock:
            at = self._appended
            try:
                busy, pages, done = self._conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
            except sqlite3.Error as exc:
                if not self._failing:  # once per streak; publish reports real trouble itself
                    log.warning("%s", _translate(exc, self._db, "checkpointing the WAL"))
                self._failing = True
                return
            self._failing = False
            if not busy:
                # All copied and nothing appended since: the next commit starts the WAL over.
                restarts = done == pages and self._appended == at
                self._seen, self._seen_at = (0 if restarts else pages), at

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stop:
                return
            self._checkpoint("PASSIVE")

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join()
        self._conn.close()


_signals: dict[str, _Signal] = {}
_signals_lock = threading.Lock()


def _signal_for(db: Path) -> _Signal:
    key = os.path.realpath(db)
    with _signals_lock:
        sig = _signals.get(key)
        if sig is None:
            sig = _signals[key] = _Signal()
        return sig


def _end_offsets(conn: sqlite3.Connection, partitions: int) -> list[int]:
    out = []
    for p in range(partitions):
        row = conn.execute(_END_OFFSET, (p,)).fetchone()
        out.append(0 if row is None else row[0])
    return out


def _enforce_retention(conn: sqlite3.Connection, partitions: int, cutoff_ms: int) -> int:
    """Delete whole batches older than ``cutoff_ms`` that every registered group has consumed.

    A batch goes only when its last offset is below every group's committed
    offset, so a partly consumed batch stays. With no group registered nothing
    is deleted (nobody has read it yet), and the newest batch of each partition
    is kept so offsets never go backwards.
    """
    groups = {g for (g,) in conn.execute("SELECT DISTINCT grp FROM group_offsets")}
    if not groups:
        return 0
    committed: dict[tuple[str, int], int] = {
        (g, p): o
        for g, p, o in conn.execute("SELECT grp, partition, next_offset FROM group_offsets")
    }
    ends = _end_offsets(conn, partitions)
    deleted = 0
    for p in range(partitions):
        # The newest batch ends at ends[p], past this bound, so it always stays.
        bound = min(min(committed.get((g, p), 0) for g in groups), ends[p] - 1)
        more = bound > 0
        while more:
            conn.execute("BEGIN IMMEDIATE")
            try:
                rows = conn.execute(_OLDEST, (p, _RETENTION_SCAN)).fetchall()
                more, n, last = len(rows) == _RETENTION_SCAN, 0, -1
                for base, count, ts in rows:
                    if n >= _RETENTION_CHUNK:
                        more = True
                        break
                    if base + count > bound or ts >= cutoff_ms:
                        more = False
                        break
                    n, last = n + count, base
                if n:
                    conn.execute(
                        "DELETE FROM batches WHERE partition = ? AND base_offset <= ?", (p, last)
                    )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            deleted += n
            more = more and n > 0
    return deleted


def _acquire_lock(path: Path, pipeline: str) -> int:
    """Exclusive flock: two writers would hand out the same offsets."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise DiskError(
            f"cannot open the producer lock file {path} ({exc.strerror}); "
            "make the log's disk and directory writable for this user, nothing is lost"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise TransportError(
            f"pipeline {pipeline}'s log is already being written by another syncline process "
            f"(lock file {path})"
        ) from None
    except OSError as exc:
        os.close(fd)
        raise StorageError(f"cannot lock the producer lock file {path} ({exc.strerror})") from exc
    with contextlib.suppress(OSError):  # for operators wondering who holds it; a full disk
        os.ftruncate(fd, 0)  # must not stop us from taking the lock
        os.write(fd, f"{os.getpid()}\n".encode())
    return fd


class EmbeddedTransport(Transport):
    """A partitioned, durable log in ``<path>/<pipeline>.log.db``."""

    def __init__(
        self, config: EmbeddedTransportConfig, pipeline: str, *, busy_timeout: float = 5.0
    ) -> None:
        self.config = config
        self.pipeline = pipeline
        self.partitions = config.partitions
        self.busy_timeout = busy_timeout
        self.dir = Path(config.path)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            why = "it is a file" if self.dir.is_file() else exc.strerror
            raise StorageError(
                f"cannot create the embedded log directory {self.dir} ({why}); "
                "set transport.path to a writable directory"
            ) from exc
        self.db = self.dir / f"{pipeline}.log.db"
        self.lock_path = self.dir / f"{pipeline}.producer.lock"
        self.signal = _signal_for(self.db)
        self._lock = threading.Lock()
        self._children: list[EmbeddedProducer | EmbeddedConsumer] = []
        # WAL only once the file is known to be ours: switching it is a change to the file.
        self._conn = _connect(self.db, config.fsync, busy_timeout, wal=False)
        try:
            self._init_schema()
            self._conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as exc:
            self._conn.close()
            raise _translate(exc, self.db, "opening the log") from exc
        except BaseException:
            self._conn.close()
            raise

    def connect(self) -> sqlite3.Connection:
        return _connect(self.db, self.config.fsync, self.busy_timeout)

    def _init_schema(self) -> None:
        """Create the tables in a new file; refuse a file laid out any other way."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                tables = {
                    n
                    for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                }
                if not tables:
                    for stmt in _SCHEMA:
                        conn.execute(stmt)
                    conn.execute(
                        "INSERT INTO meta (key, value) VALUES ('partitions', ?), ('format', ?)",
                        (str(self.partitions), _FORMAT),
                    )
                    tables = {"meta"}
                meta = {}
                if "meta" in tables:
                    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise _translate(exc, self.db, "opening the log") from exc
        fmt, stored = meta.get("format"), meta.get("partitions")
        if fmt is None or stored is None:
            raise StorageError(
                f"{self.db} is a SQLite database but not a syncline log; "
                "move it away or set transport.path to another directory"
            )
        if fmt != _FORMAT:
            raise StorageError(
                f"embedded log {self.db} has layout format {fmt} but this syncline reads "
                f"format {_FORMAT}; drain it with the version that wrote it, then move it away "
                "or set transport.path to another directory"
            )
        if int(stored) != self.partitions:
            raise ConfigError(
                f"embedded log {self.db} has {stored} partitions but transport.partitions is "
                f"{self.partitions}; changing it would break per-key order, so set it back to "
                f"{stored} or use a new transport.path"
            )

    def check(self) -> list[str]:
        probe = self.dir / f".{self.pipeline}.check.{os.getpid()}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StorageError(
                f"embedded log directory {self.dir} is not writable ({exc.strerror}); "
                "fix its permissions or set transport.path"
            ) from exc
        if self.db.exists() and not os.access(self.db, os.W_OK):
            raise StorageError(f"embedded log {self.db} is not writable; fix its permissions")
        free_gb = shutil.disk_usage(self.dir).free / 1e9
        fsync = "on" if self.config.fsync else "off"
        return [
            f"embedded log {self.db}: {self.partitions} partitions, fsync {fsync}, "
            f"{free_gb:.1f} GB free"
        ]

    def producer(self) -> EmbeddedProducer:
        prod = EmbeddedProducer(self)
        self._children.append(prod)
        return prod

    def consumer(self, group: str, partitions: Sequence[int] | None = None) -> EmbeddedConsumer:
        parts = list(range(self.partitions)) if partitions is None else list(partitions)
        bad = [p for p in parts if not 0 <= p < self.partitions]
        if bad or not parts:
            raise ConfigError(
                f"consumer {group!r}: partitions {parts} are not a non-empty subset of "
                f"0..{self.partitions - 1} of embedded log {self.db}"
            )
        cons = EmbeddedConsumer(self, group, parts)
        self._children.append(cons)
        return cons

    def end_offsets(self) -> dict[int, int]:
        with self._lock:
            try:
                return dict(enumerate(_end_offsets(self._conn, self.partitions)))
            except sqlite3.Error as exc:
                raise _translate(exc, self.db, "reading end offsets") from exc

    def put_meta(self, name: str, value: str) -> None:
        with self._lock:
            try:
                self._conn.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (f"user:{name}", value),
                )
            except sqlite3.Error as exc:
                raise _translate(exc, self.db, f"storing {name}") from exc

    def get_meta(self, name: str) -> str | None:
        with self._lock:
            try:
                row = self._conn.execute(
                    "SELECT value FROM meta WHERE key = ?", (f"user:{name}",)
                ).fetchone()
            except sqlite3.Error as exc:
                raise _translate(exc, self.db, f"reading {name}") from exc
        return None if row is None else str(row[0])

    def enforce_retention(self, now_ms: int | None = None) -> int:
        """Delete what is older than retention_hours and consumed by every group."""
        now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        cutoff = now - int(self.config.retention_hours * 3_600_000)
        with self._lock:
            try:
                return _enforce_retention(self._conn, self.partitions, cutoff)
            except sqlite3.Error as exc:
                raise _translate(exc, self.db, "enforcing retention") from exc

    def drop_group(self, group: str) -> None:
        """Forget a consumer group so it no longer holds back retention."""
        with self._lock:
            try:
                self._conn.execute("DELETE FROM group_offsets WHERE grp = ?", (group,))
            except sqlite3.Error as exc:
                raise _translate(exc, self.db, f"dropping group {group!r}") from exc

    def close(self) -> None:
        for child in self._children:
            child.close()
        self._children.clear()
        with self._lock:
            self._conn.close()


class EmbeddedProducer(Producer):
    """The single writer of a log; appends a batch and its checkpoint in one transaction."""

    def __init__(self, transport: EmbeddedTransport) -> None:
        self._t = transport
        self._db = transport.db
        self._n = transport.partitions
        self._lock_fd: int | None = _acquire_lock(transport.lock_path, transport.pipeline)
        try:
            self._conn = transport.connect()
            try:
                self._next = _end_offsets(self._conn, self._n)
                self._ckpt = _Checkpointer(transport.connect(), self._db)
            except BaseException:
                self._conn.close()
                raise
        except sqlite3.Error as exc:
            self._release()
            raise _translate(exc, self._db, "opening the producer") from exc
        except BaseException:
            self._release()
            raise
        self._last_retention = 0.0

    def publish(self, records: Sequence[Record], checkpoint: Checkpoint) -> None:
        n = self._n
        nxt = self._next
        groups: list[list[Record]]
        if n == 1:
            groups = [list(records)]
        else:
            groups = [[] for _ in range(n)]
            adds = [g.append for g in groups]
            for r in records:
                adds[crc32(r.key) % n](r)  # partition_for, inlined: this loop is the hot path
        ts = time.time_ns() // 1_000_000
        rows = [(p, nxt[p], len(g), ts, _encode_batch(g)) for p, g in enumerate(groups) if g]
        if any(len(r[4]) > _ROW_BYTES for r in rows):
            rows = self._cut(rows, groups, ts)
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if rows:
                    conn.executemany(_INSERT, rows)
                conn.execute(_SAVE_CHECKPOINT, (_encode_checkpoint(checkpoint),))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise _translate(exc, self._db, "appending records") from exc
        for p, _, count, _, _ in rows:  # only now: a failed append leaves no gap
            nxt[p] += count
        self._t.signal.notify()
        self._ckpt.after_commit(len(rows) * 2 + 1 + sum(len(r[4]) for r in rows) // 4000)
        if time.monotonic() - self._last_retention >= RETENTION_EVERY_S:
            self._retention()

    def _cut(
        self, rows: list[tuple[int, int, int, int, bytes]], groups: list[list[Record]], ts: int
    ) -> list[tuple[int, int, int, int, bytes]]:
        """Store a big partition batch as several rows of about ``_ROW_BYTES`` each."""
        limit = self._conn.getlimit(sqlite3.SQLITE_LIMIT_LENGTH)
        out: list[tuple[int, int, int, int, bytes]] = []
        for p, base, _count, _ts, payload in rows:
            if len(payload) <= _ROW_BYTES:
                out.append((p, base, _count, _ts, payload))
                continue
            part: list[Record] = []
            size = 0
            for r in groups[p]:
                n = len(r.value) + len(r.key) + len(r.table)
                if part and size + n > _ROW_BYTES:
                    out.append((p, base, len(part), ts, _encode_batch(part)))
                    base, part, size = base + len(part), [], 0
                if n >= limit:
                    raise StorageError(
                        f"embedded log at {self._db}: a change of {r.table} (key "
                        f"{r.key[:200].decode('utf-8', 'replace')}) is {n / 1e6:.0f} MB encoded, "
                        f"more than SQLite stores in one value ({limit / 1e6:.0f} MB); it stays "
                        "in the source; see docs/reliability.md, bad input: oversized rows"
                    )
                part.append(r)
                size += n
            out.append((p, base, len(part), ts, _encode_batch(part)))
        return out

    def _retention(self) -> None:
        """Opportunistic; never raises, since the batch is already durable."""
        self._last_retention = time.monotonic()
        cutoff = time.time_ns() // 1_000_000 - int(self._t.config.retention_hours * 3_600_000)
        try:
            deleted = _enforce_retention(self._conn, self._n, cutoff)
        except sqlite3.Error as exc:
            log.warning("%s", _translate(exc, self._db, "enforcing retention"))
            return
        if deleted:
            log.info("embedded log %s: retention deleted %d records", self._db, deleted)

    def checkpoint(self) -> Checkpoint | None:
        try:
            row = self._conn.execute(
                "SELECT checkpoint FROM producer_state WHERE id = 1"
            ).fetchone()
        except sqlite3.Error as exc:
            raise _translate(exc, self._db, "reading the checkpoint") from exc
        return None if row is None else _decode_checkpoint(row[0])

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def close(self) -> None:
        if self._lock_fd is not None:
            self._ckpt.close()
            self._conn.close()
            self._release()


class EmbeddedConsumer(Consumer):
    """Reads assigned partitions from explicit offsets; fair across partitions."""

    def __init__(self, transport: EmbeddedTransport, group: str, partitions: list[int]) -> None:
        self.group = group
        self.partitions = tuple(partitions)
        self._db = transport.db
        self._signal = transport.signal
        self._lock = threading.Lock()
        self._rr = 0
        # Per partition, the last batch decoded: (base offset, records, bytes per record).
        # Batches never change, so it stays valid whatever the position; it serves the
        # rest of a batch.
        self._buf: dict[int, tuple[int, list[Record], int]] = {}
        self._active = time.monotonic()  # when records last came; long idle → slower checks
        self._closed = False
        self._conn = transport.connect()
        try:
            self._pos = self._committed()
            # Registering pins retention until the group commits (see _enforce_retention).
            # A known group writes nothing here, so it can read on while the disk is full.
            if self._registered() != set(self.partitions):
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.executemany(
                    "INSERT OR IGNORE INTO group_offsets (grp, partition, next_offset)"
                    " VALUES (?, ?, 0)",
                    [(group, p) for p in self.partitions],
                )
                self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._conn.close()
            raise _translate(exc, self._db, f"registering consumer group {group!r}") from exc

    def _registered(self) -> set[int]:
        rows = self._conn.execute(
            "SELECT partition FROM group_offsets WHERE grp = ?", (self.group,)
        ).fetchall()
        return {p for (p,) in rows} & set(self.partitions)

    def _committed(self) -> dict[int, int]:
        rows = self._conn.execute(
            "SELECT partition, next_offset FROM group_offsets WHERE grp = ?", (self.group,)
        )
        got = dict(rows.fetchall())
        return {p: got.get(p, 0) for p in self.partitions}

    def seek(self, positions: Mapping[int, int]) -> None:
        with self._lock:
            try:
                pos = self._committed()
            except sqlite3.Error as exc:
                raise _translate(exc, self._db, "reading committed offsets") from exc
            for p in self.partitions:
                if p in positions:
                    pos[p] = positions[p]
            self._pos = pos

    def _fetch(self, max_records: int) -> list[Delivered]:
        """Share ``max_records`` across partitions, then top up from the busy ones."""
        pos = dict(self._pos)  # committed to self._pos only if all reads work
        out: list[Delivered] = []
        parts = self.partitions
        k = len(parts)
        self._rr = (self._rr + 1) % k
        todo = [parts[(self._rr + i) % k] for i in range(k)]
        room = [_POLL_BYTES]  # bytes left in this poll, shared by the partitions
        while todo and len(out) < max_records and room[0] > 0:
            share = max(1, -(-(max_records - len(out)) // len(todo)))
            full = []
            for p in todo:
                budget = min(share, max_records - len(out))
                if budget <= 0 or room[0] <= 0:
                    break
                got = self._take(p, pos[p], budget, room)
                if got:
                    out.extend(got)
                    pos[p] = got[-1].offset + 1
                    if len(got) == budget:
                        full.append(p)
            todo = full
        self._pos = pos
        return out

    def _take(self, p: int, start: int, budget: int, room: list[int]) -> list[Delivered]:
        """Up to ``budget`` records of partition ``p`` from offset ``start`` on.

        ``room[0]`` is the poll's byte allowance, estimated per batch from its stored
        size; at least one record is taken whatever its size.
        """
        out: list[Delivered] = []
        buf = self._buf.get(p)
        if buf is not None:
            base, recs, each = buf
            if base <= start < base + len(recs):
                i = start - base
                n = min(budget, max(1, room[0] // each))
                chunk = recs[i : i + n]
                room[0] -= each * len(chunk)
                out = [Delivered(p, o, r.table, r.key, r.value) for o, r in enumerate(chunk, start)]
                if len(out) == budget or room[0] <= 0:
                    return out
                start += len(out)
        cur = self._conn.execute(_READ, (p, start))
        try:
            for base, count, payload in cur:
                try:
                    recs = _decode_batch(payload)
                except msgspec.DecodeError as exc:
                    raise self._unreadable(p, base, str(exc)) from exc
                if len(recs) != count:
                    raise self._unreadable(p, base, f"{len(recs)} records, expected {count}")
                each = max(1, len(payload) // max(count, 1))
                self._buf[p] = (base, recs, each)
                first = max(start, base)
                n = min(budget - len(out), max(0 if out else 1, room[0] // each))
                chunk = recs[first - base : first - base + n]
                room[0] -= each * len(chunk)
                out += [
                    Delivered(p, o, r.table, r.key, r.value) for o, r in enumerate(chunk, first)
                ]
                if len(out) >= budget or room[0] <= 0 or not chunk:
                    break
        finally:
            cur.close()  # ends the read transaction, so checkpoints are not held back
        return out

    def _unreadable(self, p: int, base: int, why: str) -> StorageError:
        return StorageError(
            f"embedded log {self._db}: the batch at partition {p} offset {base} is unreadable "
            f"({why}); restore the file or move it away"
        )

    def _data_version(self) -> int:
        version: int = self._conn.execute("PRAGMA data_version").fetchone()[0]
        return version

    def poll(self, max_records: int, timeout: float) -> list[Delivered]:
        if max_records <= 0:
            return []
        deadline = time.monotonic() + max(timeout, 0.0)
        sig = self._signal
        while True:
            seen = sig.version
            with self._lock:
                try:
                    version = self._data_version()
                    out = self._fetch(max_records)
                except sqlite3.Error as exc:
                    raise _translate(exc, self._db, "reading records") from exc
            now = time.monotonic()
            if out:
                self._active = now
                return out
            interval = _FAST_POLL_S if now - self._active < _IDLE_AFTER_S else _SLOW_POLL_S
            # Same-process commits notify at once; other processes show up in data_version.
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                with sig.cond:
                    if sig.version == seen:
                        sig.cond.wait(min(interval, remaining))
                if sig.version != seen:
                    break
                with self._lock:
                    try:
                        if self._data_version() != version:
                            break
                    except sqlite3.Error as exc:
                        raise _translate(exc, self._db, "waiting for records") from exc

    def commit(self, positions: Mapping[int, int]) -> None:
        rows = [(self.group, p, o) for p, o in positions.items()]
        if not rows:
            return
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany(_COMMIT_GROUP, rows)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise _translate(
                    exc, self._db, f"committing offsets of group {self.group!r}"
                ) from exc

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()
