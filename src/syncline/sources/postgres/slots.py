"""Replication slots: how much WAL each one holds back, and a watch that warns about it.

A logical slot pins every WAL segment from its ``restart_lsn`` on. While the
pipeline confirms positions that is a few megabytes; when it stops, stalls, or is
deleted without its slot, WAL piles up until the server's disk is full. The
watch measures this pipeline's slot on its own ordinary connection, in a daemon
thread, so a slow or failing check never holds up the replication stream.
``syncline slots list|drop`` (cli_slots.py) uses the same queries.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg2

from syncline.errors import SynclineError
from syncline.metrics import pretty_bytes
from syncline.sources.postgres.errors import Endpoint, connect, translate
from syncline.sources.postgres.values import CANONICAL_OPTIONS

log = logging.getLogger("syncline.sources.postgres.slots")

MB = 1024 * 1024
WARN_REPEAT_S = 300.0  # repeat the warning this often while the slot stays above the threshold
CHECK_TIMEOUT_MS = 5000  # statement_timeout of the watch's connection

# A standby (PostgreSQL 16+ can keep logical slots there) has no current WAL
# position of its own; measure against what it has replayed.
_CURRENT = (
    "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END"
)


@dataclass(frozen=True, slots=True)
class SlotStatus:
    """One row of ``pg_replication_slots`` with the WAL it retains."""

    name: str
    plugin: str | None  # None for physical slots
    slot_type: str  # logical | physical
    database: str | None  # None for physical slots
    active: bool
    active_pid: int | None
    retained_bytes: int | None  # None while the slot has no restart_lsn
    wal_status: str | None  # reserved | extended | unreserved | lost (PostgreSQL 13+)
    safe_wal_size: int | None  # bytes writable before the slot is at risk (13+, if limited)


def _query(server_version: int, where: str = "") -> str:
    extra = "wal_status, safe_wal_size" if server_version >= 130000 else "NULL, NULL"
    return (
        "SELECT slot_name, plugin, slot_type, database, active, active_pid, "
        f"pg_wal_lsn_diff({_CURRENT}, restart_lsn)::bigint, {extra} "
        f"FROM pg_replication_slots {where} ORDER BY slot_name"
    )


def _row(row: tuple[Any, ...]) -> SlotStatus:
    return SlotStatus(
        name=row[0],
        plugin=row[1],
        slot_type=row[2],
        database=row[3],
        active=bool(row[4]),
        active_pid=row[5],
        retained_bytes=None if row[6] is None else max(0, int(row[6])),
        wal_status=row[7],
        safe_wal_size=None if row[8] is None else int(row[8]),
    )


def list_slots(cur: Any, server_version: int) -> list[SlotStatus]:
    """Every replication slot of the server (slots are per cluster, not per database)."""
    cur.execute(_query(server_version))
    return [_row(r) for r in cur.fetchall()]


def slot_status(cur: Any, server_version: int, name: str) -> SlotStatus | None:
    cur.execute(_query(server_version, "WHERE slot_name = %s"), (name,))
    row = cur.fetchone()
    return None if row is None else _row(row)


def pretty_mb(mb: float) -> str:
    return f"{mb:g} MB"


class SlotWatch:
    """Checks one slot's retained WAL every ``interval`` seconds and logs when it is too much.

    A WARNING names the slot, the size and the threshold when the slot retains more
    than ``warn_mb`` (repeated at most every ``repeat`` seconds while it stays above);
    an INFO says when it is back below. ``on_value`` gets every measurement (``None``
    when the slot is gone). A failed check is logged and retried next interval.
    """

    def __init__(
        self,
        ep: Endpoint,
        slot: str,
        warn_mb: float,
        interval: float,
        on_value: Callable[[int | None], None] | None = None,
        repeat: float = WARN_REPEAT_S,
    ) -> None:
        self.ep = ep
        self.slot = slot
        self.warn_mb = warn_mb
        self.interval = interval
        self.repeat = repeat
        self.retained_bytes: int | None = None
        self._on_value = on_value
        self._above = False
        self._last_warn = 0.0
        self._last_error: str | None = None
        self._conn: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- thread -----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"{self.ep.pipeline}-slot-watch", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end; it closes its own connection (never waits on a query)."""
        self._stop.set()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.check()
                self._stop.wait(self.interval)
        finally:
            self._close()

    # -- one check --------------------------------------------------------------------

    def check(self) -> SlotStatus | None:
        """Measure once and log as needed; errors are logged, never raised."""
        try:
            status = self._measure()
        except SynclineError as exc:
            self._close()
            msg = str(exc)
            if msg != self._last_error:
                log.warning("cannot check replication slot %s: %s", self.slot, msg)
            self._last_error = msg
            return None
        if self._last_error is not None:
            log.info("checking replication slot %s works again", self.slot)
            self._last_error = None
        if not self._stop.is_set():
            self.observe(status)
        return status

    def _measure(self) -> SlotStatus | None:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = connect(
                    self.ep,
                    options=f"{CANONICAL_OPTIONS} -c statement_timeout={CHECK_TIMEOUT_MS}",
                    application_name=f"syncline {self.ep.pipeline} slot watch"[:63],
                )
                self._conn.autocommit = True
            with self._conn.cursor() as cur:
                return slot_status(cur, self._conn.server_version, self.slot)
        except psycopg2.Error as exc:
            raise translate(exc, self.ep, f"checking replication slot {self.slot}") from exc

    def observe(self, status: SlotStatus | None, now: float | None = None) -> None:
        """Record a measurement; warn above the threshold, note the way back below."""
        now = time.monotonic() if now is None else now
        retained = None if status is None else status.retained_bytes
        self.retained_bytes = retained
        if self._on_value is not None:
            self._on_value(retained)
        if status is None:
            log.debug("replication slot %s not found", self.slot)
            return
        lost = status.wal_status == "lost"
        if lost or (retained is not None and retained > self.warn_mb * MB):
            if not self._above or now - self._last_warn >= self.repeat:
                self._last_warn = now
                log.warning("%s", self._warning(status))
            self._above = True
        elif self._above:
            self._above = False
            log.info(
                "replication slot %s of pipeline %s retains %s of WAL, back below wal_warn_mb %s",
                self.slot,
                self.ep.pipeline,
                pretty_bytes(retained),
                pretty_mb(self.warn_mb),
            )

    def _warning(self, s: SlotStatus) -> str:
        text = (
            f"replication slot {self.slot} of pipeline {self.ep.pipeline} at {self.ep.where} "
            f"retains {pretty_bytes(s.retained_bytes)} of WAL "
            f"(above wal_warn_mb {pretty_mb(self.warn_mb)})"
        )
        if s.wal_status == "lost":
            return (
                text + ": the WAL it needs is already removed (wal_status lost); the pipeline "
                "needs a new snapshot"
            )
        if s.wal_status == "unreserved":
            text += (
                f"; wal_status unreserved: WAL will be removed after "
                f"{pretty_bytes(s.safe_wal_size)} more"
            )
        return text + "; the server keeps this WAL until the pipeline confirms its changes"

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            with contextlib.suppress(psycopg2.Error):
                conn.close()
