"""The dead-letter queue: events that cannot be applied, kept durably for replay.

One SQLite file per pipeline (``<dlq.path>/<pipeline>.dlq.db``), written with
``synchronous=FULL`` before the sink stores positions past the event, so an event
is always either in the target or here. Entries are unique by log position
(partition, offset): a crash between the two writes re-delivers the event, and
the second insert is a no-op.

Statuses: ``dead`` (failed permanently), ``held`` (a later event of a dead
entry's key, never attempted, so the key's order is kept), ``replay`` (asked for
by ``syncline dlq replay`` or released by a purge), ``replaying`` (being applied;
its ``replay_seq`` is stored in the target with the rows, so a crash mid-replay
neither loses nor repeats it) and ``replayed``. A key is *blocked* while it has
a dead, held or queued entry. The running apply worker does every replay itself,
between batches, so replayed events never race live ones.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from syncline.errors import ConfigError, StorageError

DEAD, HELD, REPLAY, REPLAYING, REPLAYED = "dead", "held", "replay", "replaying", "replayed"
OPEN_STATUSES = (DEAD, HELD, REPLAY, REPLAYING)  # a key with one of these is blocked
_OPEN_SQL = "('dead', 'held', 'replay', 'replaying')"

BlockedKey = tuple[str, bytes]  # (source table, encoded key)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline TEXT NOT NULL,
    partition INTEGER NOT NULL,
    "offset" INTEGER NOT NULL,
    source_table TEXT NOT NULL,
    key BLOB NOT NULL,
    value BLOB NOT NULL,
    status TEXT NOT NULL,
    error_class TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    blocked_by INTEGER,
    replay_seq INTEGER,
    first_failed_at REAL NOT NULL,
    last_failed_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (partition, "offset")
);
CREATE INDEX IF NOT EXISTS dead_letters_key ON dead_letters (source_table, key, status);
CREATE INDEX IF NOT EXISTS dead_letters_status ON dead_letters (status);
CREATE TABLE IF NOT EXISTS dlq_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

_COLUMNS = (
    'id, pipeline, partition, "offset", source_table, key, value, status, error_class, '
    "error, attempts, blocked_by, replay_seq, first_failed_at, last_failed_at, updated_at"
)


@dataclass(slots=True, frozen=True)
class DeadLetter:
    """One stored entry; ``key`` and ``value`` are the log record's bytes as captured."""

    id: int
    pipeline: str
    partition: int
    offset: int
    source_table: str
    key: bytes
    value: bytes
    status: str
    error_class: str | None
    error: str | None
    attempts: int
    blocked_by: int | None
    replay_seq: int | None
    first_failed_at: float
    last_failed_at: float
    updated_at: float

    @property
    def key_text(self) -> str:
        return self.key.decode("utf-8", "replace")


@dataclass(slots=True, frozen=True)
class NewDeadLetter:
    """An entry to store: a failed event (``error`` set) or a held one (``error`` None)."""

    partition: int
    offset: int
    source_table: str
    key: bytes
    value: bytes
    error_class: str | None = None
    error: str | None = None
    attempts: int = 0
    first_failed_at: float | None = None


def dlq_file(directory: str, pipeline: str) -> Path:
    return Path(directory) / f"{pipeline}.dlq.db"


def _dir_problem(directory: Path, exc: OSError) -> str:
    if isinstance(exc, FileExistsError | NotADirectoryError):
        why = "is a file, not a directory" if directory.is_file() else "has a file in its path"
    else:
        why = f"cannot be written ({exc.strerror or exc})"
    return (
        f"dead-letter queue directory {directory} {why}; "
        "set dlq.path (or transport.path) to a writable directory"
    )


def check_dlq_dir(directory: str, pipeline: str) -> str:
    """Make sure the dead-letter file can be created and written; a note for ``check``."""
    d = Path(directory)
    path = dlq_file(directory, pipeline)
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / f".{pipeline}.dlq-check.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StorageError(_dir_problem(d, exc)) from exc
    if path.exists() and not os.access(path, os.W_OK):
        raise StorageError(f"dead-letter queue {path} is not writable; fix its permissions")
    return f"dead-letter queue {path}: writable"


class DeadLetterStore:
    """The dead-letter file of one pipeline."""

    def __init__(self, directory: str, pipeline: str, *, create: bool = True) -> None:
        self.pipeline = pipeline
        self.path = dlq_file(directory, pipeline)
        if not create and not self.path.exists():
            raise ConfigError(
                f"pipeline {pipeline} has no dead-letter queue at {self.path} "
                "(nothing was dead-lettered yet, or dlq.path points elsewhere)"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(_dir_problem(self.path.parent, exc)) from exc
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open the dead-letter queue {self.path}: {exc}") from exc
        self._lock_fd: int | None = None

    def close(self) -> None:
        self.release_worker_lock()
        self._db.close()

    # ---- the worker lock: tells the CLI whether a running pipeline will do a replay ----

    def take_worker_lock(self) -> None:
        """Held (shared) by every apply worker while it runs; released by the OS if it dies."""
        if self._lock_fd is not None:
            return
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)
        self._lock_fd = fd

    def release_worker_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def worker_running(self) -> bool:
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    # ---- writes ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _txn(self, what: str) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StorageError(f"dead-letter queue {self.path}: {what} failed: {exc}") from exc

    def add(self, entries: Sequence[NewDeadLetter], *, hold_open_keys: bool) -> list[int]:
        """Store entries durably (a position already stored is left as it is).

        A failed entry becomes ``dead``; an entry without error is ``held`` behind
        its key's open entry, or joins the key's replay if one is queued.
        """
        now = time.time()
        ids: list[int] = []
        with self._txn("storing entries") as db:
            for e in entries:
                status = DEAD if e.error is not None else HELD
                blocked_by = None
                if hold_open_keys:
                    head = db.execute(
                        f"SELECT id, status FROM dead_letters WHERE source_table = ? AND key = ? "
                        f'AND status IN {_OPEN_SQL} ORDER BY partition, "offset" LIMIT 1',
                        (e.source_table, e.key),
                    ).fetchone()
                    if head is not None:
                        blocked_by = int(head[0])
                        if status == HELD and head[1] in (REPLAY, REPLAYING):
                            status = REPLAY
                cur = db.execute(
                    'INSERT OR IGNORE INTO dead_letters (pipeline, partition, "offset", '
                    "source_table, key, value, status, error_class, error, attempts, blocked_by, "
                    "first_failed_at, last_failed_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        self.pipeline,
                        e.partition,
                        e.offset,
                        e.source_table,
                        e.key,
                        e.value,
                        status,
                        e.error_class,
                        e.error,
                        e.attempts,
                        blocked_by,
                        e.first_failed_at or now,
                        now,
                        now,
                    ),
                )
                if cur.rowcount:
                    ids.append(int(cur.lastrowid or 0))
        return ids

    def request_replay(self, ids: Iterable[int]) -> list[int]:
        """Queue dead entries (and the entries held behind them) for replay; their ids."""
        queued: list[int] = []
        with self._txn("queueing a replay") as db:
            for entry_id in ids:
                row = db.execute(
                    "SELECT source_table, key, status, blocked_by FROM dead_letters WHERE id = ?",
                    (entry_id,),
                ).fetchone()
                if row is None:
                    raise ConfigError(f"no dead-letter entry #{entry_id} in {self.path}")
                table, key, status, blocked_by = row
                if status == HELD:
                    raise ConfigError(
                        f"entry #{entry_id} is held behind #{blocked_by} (same key); "
                        f"replay or purge #{blocked_by} instead"
                    )
                if status != DEAD:
                    continue
                cur = db.execute(
                    "UPDATE dead_letters SET status = 'replay', updated_at = ? "
                    "WHERE source_table = ? AND key = ? AND status IN ('dead', 'held') "
                    "AND (id = ? OR status = 'held') RETURNING id",
                    (time.time(), table, key, entry_id),
                )
                queued += [int(r[0]) for r in cur.fetchall()]
        return sorted(queued)

    def purge(self, ids: Iterable[int]) -> tuple[int, list[int]]:
        """Delete entries; entries held only behind them are queued to be applied.

        Returns (deleted, released ids).
        """
        deleted = 0
        released: list[int] = []
        with self._txn("purging entries") as db:
            keys: set[tuple[str, bytes]] = set()
            for entry_id in ids:
                row = db.execute(
                    "DELETE FROM dead_letters WHERE id = ? RETURNING source_table, key, status",
                    (entry_id,),
                ).fetchone()
                if row is None:
                    raise ConfigError(f"no dead-letter entry #{entry_id} in {self.path}")
                deleted += 1
                if row[2] == DEAD:
                    keys.add((row[0], row[1]))
            now = time.time()
            for table, key in keys:
                if db.execute(
                    "SELECT 1 FROM dead_letters WHERE source_table = ? AND key = ? "
                    "AND status = 'dead'",
                    (table, key),
                ).fetchone():
                    continue  # another failed event of the key still blocks it
                cur = db.execute(
                    "UPDATE dead_letters SET status = 'replay', updated_at = ? "
                    "WHERE source_table = ? AND key = ? AND status = 'held' RETURNING id",
                    (now, table, key),
                )
                released += [int(r[0]) for r in cur.fetchall()]
        return deleted, sorted(released)

    def purge_replayed(self, older_than_s: float = 0.0) -> int:
        with self._txn("purging replayed entries") as db:
            cur = db.execute(
                "DELETE FROM dead_letters WHERE status = 'replayed' AND updated_at <= ?",
                (time.time() - older_than_s,),
            )
            return int(cur.rowcount)

    # ---- replay bookkeeping (apply worker only) --------------------------------------

    def begin_replay(self, entry_id: int) -> int:
        """Give the entry the next replay sequence number, stored in the target with it."""
        with self._txn("starting a replay") as db:
            row = db.execute("SELECT value FROM dlq_meta WHERE name = 'replay_seq'").fetchone()
            seq = (int(row[0]) if row else 0) + 1
            db.execute(
                "INSERT INTO dlq_meta (name, value) VALUES ('replay_seq', ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (seq,),
            )
            db.execute(
                "UPDATE dead_letters SET status = 'replaying', replay_seq = ?, updated_at = ? "
                "WHERE id = ?",
                (seq, time.time(), entry_id),
            )
        return seq

    def finish_replay(self, entry_id: int) -> None:
        with self._txn("recording a replay") as db:
            db.execute(
                "UPDATE dead_letters SET status = 'replayed', error = NULL, updated_at = ? "
                "WHERE id = ?",
                (time.time(), entry_id),
            )

    def fail_replay(self, entry_id: int, error_class: str, error: str, *, hold_rest: bool) -> None:
        """The replayed entry failed again: dead again, and (hold) its key's queue waits."""
        now = time.time()
        with self._txn("recording a failed replay") as db:
            row = db.execute(
                "UPDATE dead_letters SET status = 'dead', error_class = ?, error = ?, "
                "attempts = attempts + 1, last_failed_at = ?, updated_at = ?, blocked_by = NULL "
                "WHERE id = ? RETURNING source_table, key",
                (error_class, error, now, now, entry_id),
            ).fetchone()
            if hold_rest and row is not None:
                db.execute(
                    "UPDATE dead_letters SET status = 'held', blocked_by = ?, updated_at = ? "
                    "WHERE source_table = ? AND key = ? AND status = 'replay' AND id <> ?",
                    (entry_id, now, row[0], row[1], entry_id),
                )

    def abort_replay(self, entry_id: int) -> None:
        """A transient failure: back in the queue, tried again after the retry."""
        with self._txn("requeueing a replay") as db:
            db.execute(
                "UPDATE dead_letters SET status = 'replay', updated_at = ? WHERE id = ?",
                (time.time(), entry_id),
            )

    def recover(self, marks: Mapping[int, int], partitions: Iterable[int]) -> None:
        """After a (re)start: replays the target holds are done, the others queued again.

        ``marks`` is the last replay sequence stored in the target per partition;
        only the given (owned) partitions are settled, other workers own the rest.
        """
        with self._txn("recovering replays") as db:
            now = time.time()
            for p in partitions:
                db.execute(
                    "UPDATE dead_letters SET status = 'replayed', error = NULL, updated_at = ? "
                    "WHERE status = 'replaying' AND partition = ? AND replay_seq <= ?",
                    (now, p, marks.get(p, 0)),
                )
                db.execute(
                    "UPDATE dead_letters SET status = 'replay', updated_at = ? "
                    "WHERE status = 'replaying' AND partition = ?",
                    (now, p),
                )

    # ---- reads -----------------------------------------------------------------------

    def _select(self, where: str, args: Sequence[object] = ()) -> list[DeadLetter]:
        try:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM dead_letters WHERE {where}", args
            ).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"dead-letter queue {self.path}: read failed: {exc}") from exc
        return [DeadLetter(*r) for r in rows]

    def get(self, entry_id: int) -> DeadLetter:
        rows = self._select("id = ?", (entry_id,))
        if not rows:
            raise ConfigError(f"no dead-letter entry #{entry_id} in {self.path}")
        return rows[0]

    def entries(
        self,
        *,
        statuses: Sequence[str] = OPEN_STATUSES,
        table: str | None = None,
        limit: int | None = None,
    ) -> list[DeadLetter]:
        where = f"status IN ({', '.join('?' * len(statuses))})"
        args: list[object] = list(statuses)
        if table is not None:
            where += " AND source_table = ?"
            args.append(table)
        where += " ORDER BY id"
        if limit is not None:
            where += f" LIMIT {int(limit)}"
        return self._select(where, args)

    def replay_queue(self, partitions: Iterable[int]) -> list[DeadLetter]:
        """Entries of every key with a queued replay, in log order per key.

        Only keys of the given partitions: each worker replays what it owns.
        """
        parts = sorted(partitions)
        if not parts:
            return []
        return self._select(
            "(source_table, key) IN (SELECT source_table, key FROM dead_letters "
            "WHERE status IN ('replay', 'replaying')) AND status IN ('dead', 'held', 'replay', "
            f"'replaying') AND partition IN ({', '.join(map(str, parts))}) "
            'ORDER BY source_table, key, partition, "offset"'
        )

    def blocked_keys(self) -> set[BlockedKey]:
        try:
            rows = self._db.execute(
                f"SELECT DISTINCT source_table, key FROM dead_letters WHERE status IN {_OPEN_SQL}"
            ).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"dead-letter queue {self.path}: read failed: {exc}") from exc
        return {(str(t), bytes(k)) for t, k in rows}

    def stored_positions(self, since: Mapping[int, int]) -> set[tuple[int, int]]:
        """(partition, offset) of entries at or after ``since``: already handled, skip them."""
        out: set[tuple[int, int]] = set()
        for partition, offset in self._db.execute(
            'SELECT partition, "offset" FROM dead_letters'
        ).fetchall():
            if offset >= since.get(partition, 0):
                out.add((int(partition), int(offset)))
        return out

    def counts(self) -> dict[str, int]:
        rows = self._db.execute(
            "SELECT status, count(*) FROM dead_letters GROUP BY status"
        ).fetchall()
        return {str(s): int(n) for s, n in rows}

    def data_version(self) -> int:
        """Changes when another connection (the CLI) commits to the file."""
        row = self._db.execute("PRAGMA data_version").fetchone()
        return int(row[0]) if row else 0
