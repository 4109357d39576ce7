"""PostgresSource: initial snapshot, then the pgoutput logical replication stream.

Lifecycle (see ``Source`` in sources/base.py for the contract):

* ``open`` validates tables and keys, makes sure the publication covers them,
  and reuses or creates the replication slot. Without a checkpoint (or with one
  saying the snapshot never finished) and ``snapshot: initial`` it recreates the
  slot with an exported snapshot and reads every table inside it; streaming
  then starts from the slot's consistent point, so nothing is lost or doubled.
  Snapshot rows may be emitted again if the process dies mid-snapshot (the
  retake keeps the first slot and replays the deletes made in between first,
  see ``DeleteReplay``); streamed changes never are.
* ``read`` hands out changes as they arrive, splitting large transactions over
  several batches; each batch's checkpoint is ``{"lsn", "seq", "end_lsn",
  "snapshot"}``: the commit LSN and in-transaction position of the last change
  handed out, and the end LSN of the last transaction handed out completely.
* ``ack`` confirms ``end_lsn`` to the server (never a point inside a
  transaction), which lets the slot recycle WAL. When idle it also confirms the
  server's WAL end, so a quiet or filtered database does not pile up WAL.
* On restart the server resends from the confirmed position; changes at or
  before the checkpoint's ``(lsn, seq)`` are dropped.
* Transactions committed under a replication origin named in ``skip_origins``
  are dropped whole (loop prevention for bidirectional sync, see origins.py and
  docs/bidirectional.md); other transactions' events carry their origin name.
* While open, a ``SlotWatch`` (slots.py) measures the WAL the slot retains every
  ``wal_check_interval`` seconds on its own connection and thread, warns above
  ``wal_warn_mb`` and reports the size through ``on_retained``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import time
import zlib
from typing import Any

import psycopg2

from syncline.config import PostgresSourceConfig
from syncline.errors import AuthError, PermanentError, SchemaError, SynclineError
from syncline.events import Change
from syncline.schema import TableSchema
from syncline.sources.base import BATCH_BYTES, CaptureBatch, Checkpoint, Source
from syncline.sources.postgres import catalog, slots
from syncline.sources.postgres.catalog import TableInfo
from syncline.sources.postgres.errors import (
    Endpoint,
    connect,
    endpoint,
    translate,
    wal_level_message,
)
from syncline.sources.postgres.pgoutput import Decoder, format_lsn, parse_lsn
from syncline.sources.postgres.snapshot import DeleteReplay, SnapshotReader
from syncline.sources.postgres.values import TypeInfo, TypeRegistry

log = logging.getLogger(__name__)


def default_slot(pipeline: str) -> str:
    return f"syncline_{pipeline.replace('-', '_')}"[:59]


class PostgresSource(Source):
    """Change capture from one PostgreSQL database through a logical replication slot."""

    def __init__(self, config: PostgresSourceConfig, pipeline: str) -> None:
        self.config = config
        self.pipeline = pipeline
        self.slot = config.slot or default_slot(pipeline)
        self.publication = config.publication or f"{default_slot(pipeline)}_pub"
        self._ep: Endpoint = endpoint(config.dsn, pipeline)
        self._conn: Any = None  # normal autocommit connection: catalog, types, heartbeat
        self._repl: Any = None  # replication connection
        self._cur: Any = None  # its cursor, streaming once _streaming is set
        self._streaming = False
        self._tables: dict[str, TableInfo] = {}
        self._registry = TypeRegistry(self._fetch_type)
        self._decoder: Decoder | None = None
        self._snapshot: SnapshotReader | None = None
        self._replay: DeleteReplay | None = None
        self._carry: list[Change] = []
        self._ckpt: Checkpoint = {}
        self._returned: tuple[int, int, int] = (0, -1, 0)  # (lsn, seq, end_lsn) last handed out
        self._acked: tuple[int, int, int] = (0, -1, 0)
        self._sent_flush = 0  # flush LSN last passed to the server
        self._last_data_start = 0  # WAL position of the newest message received
        self._last_heartbeat = self._last_status = time.monotonic()
        self._watch: slots.SlotWatch | None = None
        self.slot_retained_wal_bytes: int | None = None  # last measurement of the watch

    # -- connections --------------------------------------------------------------

    def _normal(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self._ep)
            self._conn.autocommit = True
        return self._conn

    def _fetch_type(self, oid: int) -> TypeInfo | None:
        try:
            with self._normal().cursor() as cur:
                return catalog.fetch_type(cur, oid)
        except psycopg2.Error as exc:
            raise translate(exc, self._ep, f"looking up type {oid}") from exc

    def _load_tables(self) -> dict[str, TableInfo]:
        try:
            with self._normal().cursor() as cur:
                return {
                    t: catalog.load_table(cur, t, self._ep.dbname, self.pipeline)
                    for t in self.config.tables
                }
        except psycopg2.Error as exc:
            raise translate(exc, self._ep, "reading the catalog") from exc

    # -- Source API ---------------------------------------------------------------

    def check(self) -> list[str]:
        conn = connect(self._ep)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SHOW wal_level")
                (level,) = cur.fetchone()
                if level != "logical":
                    raise SchemaError(wal_level_message(level, self._ep))
                cur.execute(
                    "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user"
                )
                row = cur.fetchone()
                if not row or not row[0]:
                    raise AuthError(
                        f"user {self._ep.user} may not use replication at {self._ep.where}: "
                        f"ALTER ROLE {self._ep.user} REPLICATION ({self._ep.role})"
                    )
                tables = [
                    catalog.load_table(cur, t, self._ep.dbname, self.pipeline)
                    for t in self.config.tables
                ]
                slot = catalog.find_slot(cur, self.slot)
                if slot is not None:
                    catalog.check_slot(slot, self.slot, self._ep.dbname, self.pipeline)
        except psycopg2.Error as exc:
            raise translate(exc, self._ep, "checking the source") from exc
        finally:
            conn.close()
        n = len(self.config.tables)
        notes = [
            f"postgres {self._ep.where}/{self._ep.dbname}: wal_level=logical, "
            f"{n} table{'s' if n != 1 else ''} ok"
        ]
        for info in tables:
            if info.whole_row:
                notes.append(
                    f"postgres: {info.table_id} has no primary key; with REPLICA IDENTITY FULL "
                    "all its columns form the key: rows must be unique and free of NULLs "
                    "(a NULL row is dead-lettered, duplicates become one target row)"
                )
        if self.config.skip_origins:
            names = ", ".join(self.config.skip_origins)
            notes.append(f"postgres: transactions under replication origin(s) {names} are skipped")
        return notes

    def describe(self) -> dict[str, TableSchema]:
        tables = self._tables or self._load_tables()
        return {t: info.describe() for t, info in tables.items()}

    def open(self, checkpoint: Checkpoint | None) -> None:
        self.close()
        try:
            self._open(checkpoint)
        except BaseException:
            self.close()
            raise
        self._watch = slots.SlotWatch(
            self._ep,
            self.slot,
            self.config.wal_warn_mb,
            self.config.wal_check_interval,
            self._retained,
        )
        self._watch.start()

    def _retained(self, size: int | None) -> None:
        self.slot_retained_wal_bytes = size
        if self.on_retained is not None:
            self.on_retained(size)

    def _open(self, checkpoint: Checkpoint | None) -> None:
        self._tables = self._load_tables()
        conn = self._normal()
        try:
            with conn.cursor() as cur:
                catalog.ensure_publication(
                    cur, self.publication, self.config.tables, conn.server_version
                )
                slot = catalog.find_slot(cur, self.slot)
                if slot is not None:
                    catalog.check_slot(slot, self.slot, self._ep.dbname, self.pipeline)
        except psycopg2.Error as exc:
            raise translate(exc, self._ep, f"preparing publication {self.publication}") from exc

        if checkpoint is not None:
            self._position(checkpoint)  # refuse a foreign checkpoint before touching the slot
        snap_state = (checkpoint or {}).get("snapshot", "done")
        resnapshot = self.config.snapshot == "initial" and (
            checkpoint is None or snap_state != "done"
        )
        self._repl = connect(self._ep, replication=True)
        self._cur = self._repl.cursor()
        keys = {t: info.key for t, info in self._tables.items()}

        if resnapshot and checkpoint is not None and slot is not None:
            # The log may hold rows of an interrupted snapshot: retake it, keeping the slot.
            self._retake_snapshot(keys)
            return
        if resnapshot:
            # A slot without a snapshot in the log is useless to us: its snapshot is gone.
            if slot is not None:
                self._drop_slot()
            elif checkpoint is not None:
                log.warning(
                    "pipeline %s: slot %s of an interrupted snapshot is gone; rows deleted "
                    "since that snapshot began may stay in the target",
                    self.pipeline,
                    self.slot,
                )
            row = self._repl_command(
                f'CREATE_REPLICATION_SLOT "{self.slot}" LOGICAL pgoutput EXPORT_SNAPSHOT'
            )
            self._start_snapshot(parse_lsn(row[1]), row[2], keys)
            return

        if checkpoint is not None:
            lsn, seq, end = self._position(checkpoint)
            if slot is None:
                raise PermanentError(
                    f"replication slot {self.slot} is missing at {self._ep.where} but pipeline "
                    f"{self.pipeline} has a checkpoint at {checkpoint['end_lsn']}: changes since then are "
                    "lost; reset the pipeline's log to take a new snapshot"
                )
            self._decoder = self._new_decoder(keys, (lsn, seq))
        else:
            if slot is None:
                row = self._repl_command(
                    f'CREATE_REPLICATION_SLOT "{self.slot}" LOGICAL pgoutput NOEXPORT_SNAPSHOT'
                )
                lsn = parse_lsn(row[1])
            else:
                lsn = parse_lsn(slot.confirmed_flush) if slot.confirmed_flush else 0
            seq, end = -1, lsn
            self._decoder = self._new_decoder(keys)
        self._set_position(lsn, seq, end, "done")
        self._start_streaming(end)

    def _start_snapshot(self, lsn: int, name: str, keys: dict[str, tuple[str, ...]]) -> None:
        """Read every table inside exported snapshot ``name``; stream from ``lsn`` after it."""
        snap_conn = connect(self._ep)
        try:
            self._snapshot = SnapshotReader(
                snap_conn,
                name,
                list(self._tables.values()),
                self._registry,
                self.pipeline,
                self._ep.dbname,
                lsn,
                self.on_progress,
            )
        except psycopg2.Error as exc:
            snap_conn.close()
            raise translate(exc, self._ep, "starting the snapshot") from exc
        self._set_position(lsn, -1, lsn, "running")
        self._decoder = self._new_decoder(keys)

    def _retake_snapshot(self, keys: dict[str, tuple[str, ...]]) -> None:
        """Take an interrupted snapshot again without losing the deletes made meanwhile.

        The slot stays: nothing was confirmed on it, so it still holds every change
        since the first attempt's consistent point. A temporary slot exports the new
        snapshot; its consistent point ``c2`` is where the slot's stream resumes
        (transactions committed before it are in the snapshot, as for a new slot),
        and the slot's deletes before ``c2`` are replayed ahead of the snapshot rows.
        """
        tag = f"{os.getpid()}_{zlib.crc32(self.slot.encode()):08x}"
        temp = connect(self._ep, replication=True)
        try:
            try:
                with temp.cursor() as cur:
                    cur.execute(
                        f'CREATE_REPLICATION_SLOT "syncline_retake_{tag}" TEMPORARY LOGICAL '
                        "pgoutput EXPORT_SNAPSHOT"
                    )
                    row = cur.fetchone()
            except psycopg2.Error as exc:
                raise translate(exc, self._ep, "creating a temporary replication slot") from exc
            c2 = parse_lsn(row[1])
            self._start_snapshot(c2, row[2], keys)  # imported: it outlives the temporary slot
        finally:
            temp.close()
        options = {k: v for k, v in self._options().items() if k != "messages"}
        replay_conn = connect(self._ep)
        try:
            self._replay = DeleteReplay(
                replay_conn, self.slot, format_lsn(c2), options, self._new_decoder(keys)
            )
        except psycopg2.Error as exc:
            replay_conn.close()
            raise translate(exc, self._ep, f"reading deletes from slot {self.slot}") from exc
        log.info(
            "pipeline %s: taking the interrupted snapshot again; deletes since it began "
            "are replayed first from slot %s",
            self.pipeline,
            self.slot,
        )

    def _new_decoder(
        self, keys: dict[str, tuple[str, ...]], skip: tuple[int, int] | None = None
    ) -> Decoder:
        return Decoder(
            self.pipeline,
            self._ep.dbname,
            keys,
            self._registry.converter,
            skip,
            frozenset(self.config.skip_origins),
        )

    def _repl_command(self, command: str) -> tuple[Any, ...]:
        try:
            self._cur.execute(command)
            row: tuple[Any, ...] = self._cur.fetchone()
            return row
        except psycopg2.Error as exc:
            raise translate(exc, self._ep, f"creating replication slot {self.slot}") from exc

    def _drop_slot(self) -> None:
        try:
            with self._normal().cursor() as cur:
                catalog.drop_slot(cur, self.slot)
        except psycopg2.Error as exc:
            raise translate(exc, self._ep, f"dropping replication slot {self.slot}") from exc

    def _set_position(self, lsn: int, seq: int, end: int, snapshot: str) -> None:
        self._ckpt = {"lsn": lsn, "seq": seq, "end_lsn": end, "snapshot": snapshot}
        self._returned = self._acked = (lsn, seq, end)

    def _start_streaming(self, start_lsn: int) -> None:
        assert self._decoder is not None
        self._decoder.end_lsn = max(self._decoder.end_lsn, start_lsn)
        try:
            self._cur.start_replication(
                slot_name=self.slot,
                decode=False,
                start_lsn=start_lsn,
                options=self._options(),
                status_interval=max(1.0, self.config.status_interval),  # psycopg2's minimum
            )
        except psycopg2.Error as exc:
            raise translate(exc, self._ep, f"starting replication from slot {self.slot}") from exc
        self._streaming = True
        self._sent_flush = 0
        self._last_data_start = 0

    def _options(self) -> dict[str, str]:
        """pgoutput options; logical messages (PostgreSQL 14+) carry syncline sinks' unmatched deletes."""
        options = {"proto_version": "1", "publication_names": self.publication}
        if self._repl is not None and self._repl.server_version >= 140000:
            options["messages"] = "true"
        return options

    def read(self, max_changes: int, timeout: float) -> CaptureBatch | None:
        if self._replay is not None:
            batch = self._read_replay(max_changes)
            if batch is not None:
                return batch
        if self._snapshot is not None:
            return self._read_snapshot(max_changes)
        if not self._streaming or self._decoder is None:
            raise PermanentError(f"source of pipeline {self.pipeline} is not open")
        max_changes = max(1, max_changes)
        out: list[Change] = []
        if self._carry:
            out, self._carry = self._carry[:max_changes], self._carry[max_changes:]
            if self._carry:
                return self._batch(out)
        try:
            self._stream(out, max_changes, timeout)
        except psycopg2.Error as exc:
            raise translate(exc, self._ep, "streaming changes") from exc
        if len(out) > max_changes:
            self._carry = out[max_changes:]
            del out[max_changes:]
        if out:
            return self._batch(out)
        return self._idle()

    def _stream(self, out: list[Change], max_changes: int, timeout: float) -> None:
        cur, dec = self._cur, self._decoder
        assert dec is not None
        deadline = time.monotonic() + timeout
        size = 0
        while len(out) < max_changes and size < BATCH_BYTES:
            # psycopg2 moves its flush LSN to a keepalive's WAL end once we have confirmed
            # the newest message's position. A message from an older, still-open transaction
            # can make that look true while complete transactions we already read are not yet
            # acked; stop and let the caller publish and ack them before reading on.
            if out and dec.end_lsn > self._sent_flush >= self._last_data_start:
                return
            msg = cur.read_message()
            if msg is None:
                if out:
                    return
                self._heartbeat()
                self._status()
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                select.select([cur], [], [], min(left, self.config.status_interval))
                continue
            self._last_data_start = msg.data_start
            payload = msg.payload
            size += len(payload)
            dec.feed(payload, out, time.time_ns() // 1000)

    def _batch(self, out: list[Change]) -> CaptureBatch:
        assert self._decoder is not None
        ckpt = self._ckpt
        if out:
            src = out[-1].event.source
            if src.lsn is not None and src.seq is not None:
                ckpt["lsn"], ckpt["seq"] = src.lsn, src.seq
        # Every commit the decoder has seen precedes the carried changes (a commit never
        # overflows a batch), so its end LSN is safe to report even with a carry.
        ckpt["end_lsn"] = max(int(ckpt["end_lsn"]), self._decoder.end_lsn)
        self._returned = (int(ckpt["lsn"]), int(ckpt["seq"]), int(ckpt["end_lsn"]))
        return CaptureBatch(out, dict(ckpt))

    def _idle(self) -> CaptureBatch | None:
        """No changes: move the checkpoint past complete transactions and idle WAL."""
        dec = self._decoder
        assert dec is not None
        before = int(self._ckpt["end_lsn"])
        end = max(before, dec.end_lsn)
        if not dec.in_txn and self._acked >= self._returned:
            wal_end = int(self._cur.wal_end or 0)
            if wal_end > end:
                end = self._ckpt["end_lsn"] = wal_end
                self._send_flush(end)
        if end == before:
            return None
        return self._batch([])

    def _read_replay(self, max_changes: int) -> CaptureBatch | None:
        replay = self._replay
        assert replay is not None
        try:
            changes = replay.read(max_changes)
        except psycopg2.Error as exc:
            raise translate(exc, self._ep, f"reading deletes from slot {self.slot}") from exc
        if replay.finished:
            self._replay = None
            log.info(
                "pipeline %s: replayed %d deletes made during the interrupted snapshot",
                self.pipeline,
                replay.replayed,
            )
        return CaptureBatch(changes, dict(self._ckpt)) if changes else None

    def _read_snapshot(self, max_changes: int) -> CaptureBatch:
        snap = self._snapshot
        assert snap is not None
        try:
            changes = snap.read(max_changes)
        except psycopg2.Error as exc:
            raise translate(exc, self._ep, "reading the snapshot") from exc
        if snap.finished:
            snap.close()
            self._snapshot = None
            self._ckpt["snapshot"] = "done"
            self._start_streaming(int(self._ckpt["end_lsn"]))
        return CaptureBatch(changes, dict(self._ckpt))

    def _heartbeat(self) -> None:
        query = self.config.heartbeat_query
        now = time.monotonic()
        if not query or now - self._last_heartbeat < self.config.heartbeat_interval:
            return
        self._last_heartbeat = now
        try:
            with self._normal().cursor() as cur:
                cur.execute(query)
        except psycopg2.Error as exc:
            raise translate(exc, self._ep, "running the heartbeat query") from exc

    def _status(self) -> None:
        """psycopg2 sends status at most once a second; honour shorter intervals ourselves."""
        interval = self.config.status_interval
        now = time.monotonic()
        if interval < 1.0 and now - self._last_status >= interval:
            self._last_status = now
            self._cur.send_feedback(force=True)

    def _position(self, checkpoint: Checkpoint) -> tuple[int, int, int]:
        try:
            return int(checkpoint["lsn"]), int(checkpoint["seq"]), int(checkpoint["end_lsn"])
        except (KeyError, TypeError, ValueError):
            raise PermanentError(
                f"checkpoint {checkpoint!r} of pipeline {self.pipeline} is not a PostgreSQL source "
                "checkpoint (expected lsn, seq and end_lsn)"
            ) from None

    def ack(self, checkpoint: Checkpoint) -> None:
        pos = self._position(checkpoint)
        if pos > self._acked:
            self._acked = pos
        end = pos[2]
        # Confirm only when every transaction we have read completely is covered; see _stream.
        if self._streaming and self._decoder is not None and end >= self._decoder.end_lsn:
            self._send_flush(end)

    def _send_flush(self, lsn: int, force: bool = False) -> None:
        if lsn <= self._sent_flush and not force:
            return
        self._sent_flush = max(self._sent_flush, lsn)
        try:
            self._cur.send_feedback(
                write_lsn=self._sent_flush, flush_lsn=self._sent_flush, force=force
            )
        except psycopg2.Error as exc:
            raise translate(exc, self._ep, "confirming the replication position") from exc

    def close(self) -> None:
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        if self._streaming and self._cur is not None and self._sent_flush:
            with contextlib.suppress(SynclineError):
                self._send_flush(self._sent_flush, force=True)
        self._streaming = False
        if self._snapshot is not None:
            self._snapshot.close()
            self._snapshot = None
        if self._replay is not None:
            self._replay.close()
            self._replay = None
        for conn in (self._repl, self._conn):
            if conn is not None and not conn.closed:
                with contextlib.suppress(psycopg2.Error):
                    conn.close()
        self._repl = self._conn = self._cur = None
        self._carry = []
