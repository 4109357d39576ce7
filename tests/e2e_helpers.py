"""Helpers for end-to-end tests: configs, running `syncline` as a process, waiting for convergence."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2

REPO = Path(__file__).resolve().parent.parent


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
