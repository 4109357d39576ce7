"""Readiness probes: can each pipeline reach its source, its log and its sink right now?

Light on purpose (a connection and ``SELECT 1``, not the table checks of
``syncline check``), with a short connect timeout, all probes in parallel under
one deadline, so a probe every few seconds costs little and never hangs.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Literal

from syncline.api.models import Check
from syncline.config import (
    PostgresSinkConfig,
    PostgresSourceConfig,
    SqliteSinkConfig,
    SqliteSourceConfig,
)
from syncline.errors import SynclineError
from syncline.pipeline import Pipeline
from syncline.redact import dsn_passwords, redact_text

PROBE_TIMEOUT_S = 3.0
Component = Literal["source", "transport", "sink"]


def _postgres(dsn: str, timeout: float) -> None:
    try:
        import psycopg2
    except ImportError as exc:
        raise RuntimeError("PostgreSQL support needs the 'postgres' extra") from exc
    try:
        conn = psycopg2.connect(dsn, connect_timeout=max(1, int(timeout)))
    except psycopg2.Error as exc:
        lines = str(exc).strip().splitlines()
        raise RuntimeError(lines[0] if lines else type(exc).__name__) from None
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
    finally:
        conn.close()


def _sqlite(path: str, may_create: bool) -> None:
    if not os.path.exists(path):
        if may_create and os.access(os.path.dirname(os.path.abspath(path)), os.W_OK):
            return
        raise RuntimeError(f"{path} does not exist")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise RuntimeError(f"{path}: {exc}") from None


def _probes(p: Pipeline, timeout: float) -> list[tuple[Component, Callable[[], None]]]:
    capture, apply = p.sides
    out: list[tuple[Component, Callable[[], None]]] = []
    src, sink = p.cfg.source, p.cfg.sink
    if capture:
        if isinstance(src, PostgresSourceConfig):
            dsn = src.dsn
            out.append(("source", lambda: _postgres(dsn, timeout)))
        elif isinstance(src, SqliteSourceConfig):
            path = src.path
            out.append(("source", lambda: _sqlite(path, False)))

    def transport() -> None:
        p.transport.check()
        p.transport.end_offsets()

    out.append(("transport", transport))
    if apply:
        if isinstance(sink, PostgresSinkConfig):
            sink_dsn = sink.dsn
            out.append(("sink", lambda: _postgres(sink_dsn, timeout)))
        elif isinstance(sink, SqliteSinkConfig):
            sink_path, create = sink.path, sink.create_tables
            out.append(("sink", lambda: _sqlite(sink_path, create)))
    return out


def readiness(pipelines: list[Pipeline], timeout: float = PROBE_TIMEOUT_S) -> list[Check]:
    """One check per pipeline component, plus one per failed pipeline."""
    checks: list[Check] = []
    jobs: list[tuple[Check, threading.Thread, list[str]]] = []
    for p in pipelines:
        secrets = dsn_passwords(_dsns(p))
        if p.stats.state == "failed":
            checks.append(
                Check(
                    pipeline=p.name,
                    component="pipeline",
                    ok=False,
                    detail=redact_text(f"failed: {p.stats.error}", secrets),
                )
            )
        for component, probe in _probes(p, timeout):
            check = Check(pipeline=p.name, component=component, ok=False)
            errors: list[str] = []
            thread = threading.Thread(
                target=_run, args=(probe, errors), daemon=True, name=f"probe-{p.name}"
            )
            thread.start()
            jobs.append((check, thread, errors))
            checks.append(check)
    deadline = time.monotonic() + timeout
    for check, thread, errors in jobs:
        thread.join(max(0.0, deadline - time.monotonic()))
        pipeline = next(p for p in pipelines if p.name == check.pipeline)
        secrets = dsn_passwords(_dsns(pipeline))
        if thread.is_alive():
            check.detail = f"no answer within {timeout:g}s"
        elif errors:
            check.detail = redact_text(errors[0], secrets)
        else:
            check.ok = True
    return checks


def _run(probe: Callable[[], None], errors: list[str]) -> None:
    try:
        probe()
    except (SynclineError, RuntimeError, OSError) as exc:
        errors.append(" ".join(str(exc).split()) or type(exc).__name__)
    except Exception as exc:  # a probe must report, never kill the thread silently
        errors.append(f"{type(exc).__name__}: {exc}")


def _dsns(p: Pipeline) -> list[str]:
    return [
        dsn
        for dsn in (getattr(p.cfg.source, "dsn", None), getattr(p.cfg.sink, "dsn", None))
        if isinstance(dsn, str)
    ]
