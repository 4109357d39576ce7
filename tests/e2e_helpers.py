"""Helpers for end-to-end tests: configs, running `syncline` as a process, waiting for convergence."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2

REPO = Path(__file__).resolve().parent.parent

# A source table for end-to-end tests: every update moves `version` forward.
ACCOUNTS_DDL = """
CREATE TABLE public.accounts (
    id bigint PRIMARY KEY,
    owner text NOT NULL,
    balance numeric(18,2) NOT NULL,
    version integer NOT NULL DEFAULT 1,
    tags text[],
    updated_at timestamptz NOT NULL DEFAULT now()
);
"""

# The target refuses nothing but records every update that does not move `version`
# forward: a change applied twice (or an old one re-applied) shows up here.
ACCOUNTS_TARGET_DDL = (
    ACCOUNTS_DDL
    + """
CREATE TABLE public.double_applies (
    seq bigserial, id bigint, old_version int, new_version int,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION public.check_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.version <= OLD.version THEN
    INSERT INTO public.double_applies (id, old_version, new_version)
      VALUES (OLD.id, OLD.version, NEW.version);
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER accounts_version BEFORE UPDATE ON public.accounts
  FOR EACH ROW EXECUTE FUNCTION public.check_version();
"""
)

ACCOUNTS_SELECT = (
    "SELECT id, owner, balance, version, tags, updated_at FROM public.accounts ORDER BY id"
)


def pg_rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())
    finally:
        conn.close()


def pg_exec(dsn: str, *sql: str) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for s in sql:
                cur.execute(s)
    finally:
        conn.close()


def wait_until(pred: Callable[[], bool], timeout: float = 60.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def syncline(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncline", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


class SynclineProcess:
    """`syncline run CONFIG` in the background, killable at any moment."""

    def __init__(self, config: Path, log: Path, extra: tuple[str, ...] = ()) -> None:
        self.log = log
        self._fh = open(log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "syncline", "run", str(config), "--log-level", "info", *extra],
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._fh.close()

    def terminate(self, timeout: float = 15) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._fh.close()
        return code

    def alive(self) -> bool:
        return self.proc.poll() is None


class Writer(threading.Thread):
    """Random inserts, version-bumping updates and deletes on ``accounts``, in small transactions.

    Runs for ``seconds`` or until ``stop()``. ``pad`` makes each inserted row that many
    bytes bigger (fills a log quickly). With ``reconnect`` it rides out a server restart:
    a failed transaction is dropped (the test compares source with target, not with what
    the writer meant to write) and the writer reconnects until it can go on.
    """

    def __init__(
        self,
        dsn: str,
        seconds: float | None = None,
        seed: int = 0,
        first_id: int = 1,
        *,
        pad: int = 0,
        reconnect: bool = False,
        pause: float = 0.002,
    ) -> None:
        super().__init__(daemon=True)
        self.dsn, self.seconds, self.rng = dsn, seconds, random.Random(seed)
        self.next_id = first_id
        self.first_id = first_id
        self.pad, self.reconnect, self.pause = pad, reconnect, pause
        self.commits = 0
        self.failures = 0  # transactions lost to a connection failure (reconnect mode)
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def stop(self, timeout: float = 30) -> None:
        """Stop after the current transaction; raises what made the writer fail, if anything."""
        self._halt.set()
        if self.ident is None:  # never started
            return
        self.join(timeout)
        assert not self.is_alive(), "writer did not stop"
        if self.error is not None:
            raise self.error

    def run(self) -> None:
        try:
            end = None if self.seconds is None else time.monotonic() + self.seconds
            conn = None
            while not self._halt.is_set() and (end is None or time.monotonic() < end):
                try:
                    if conn is None:
                        conn = psycopg2.connect(self.dsn, connect_timeout=5)
                    self._transaction(conn)
                    self.commits += 1
                except (psycopg2.OperationalError, psycopg2.InterfaceError):
                    if not self.reconnect:
                        raise
                    self.failures += 1
                    if conn is not None:
                        conn.close()
                    conn = None
                    self._halt.wait(0.2)
                    continue
                if self.pause:
                    time.sleep(self.pause)
            if conn is not None:
                conn.close()
        except BaseException as exc:  # surfaced by stop() or the test
            self.error = exc

    def _transaction(self, conn: Any) -> None:
        rng = self.rng
        with conn.cursor() as cur:
            for _ in range(rng.randint(1, 8)):
                r = rng.random()
                if r < 0.5 or self.next_id < self.first_id + 20:
                    cur.execute(
                        "INSERT INTO accounts(id, owner, balance, tags) VALUES (%s, %s, %s, %s)",
                        (
                            self.next_id,
                            f"owner {self.next_id}" + "x" * self.pad,
                            rng.randint(0, 10**6) / 100,
                            ["a", "b c"],
                        ),
                    )
                    self.next_id += 1
                elif r < 0.9:
                    cur.execute(
                        "UPDATE accounts SET balance = balance + 1, version = version + 1,"
                        " updated_at = now() WHERE id = %s",
                        (rng.randint(1, self.next_id - 1),),
                    )
                else:
                    cur.execute(
                        "DELETE FROM accounts WHERE id = %s", (rng.randint(1, self.next_id - 1),)
                    )
        conn.commit()


# ---- in-process pipelines on SQLite (tests/test_dlq.py, tests/test_bad_input.py) ----------


def sqlite_exec(path: Path, *stmts: str) -> None:
    """Run statements on a SQLite file, each in its own autocommit transaction."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        for s in stmts:
            db.execute(s)
    finally:
        db.close()


def start_pipeline(pipes: list[Any], config: Path) -> Any:
    """Start the config's first pipeline in this process; the ``pipes`` fixture stops it."""
    from syncline.config import load_config
    from syncline.pipeline import Pipeline

    pipe = Pipeline(load_config(config).pipelines[0])
    pipes.append(pipe)
    pipe.start()
    return pipe


def caught_up(pipe: Any) -> bool:
    """The pipeline captured something and applied all the log holds (fails on a failure)."""
    assert pipe.failure is None, pipe.failure
    return bool(pipe.stats.captured > 0 and pipe.caught_up())
