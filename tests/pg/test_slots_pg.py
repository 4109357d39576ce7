"""Source safety: the retained-WAL watch, its warning and metric, and `syncline slots list|drop`."""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest

from e2e_helpers import REPO, pg_exec, pg_rows, syncline, wait_until, write_config
from syncline.config import PostgresSourceConfig, parse_config
from syncline.errors import ConfigError
from syncline.pipeline import Pipeline
from syncline.runtime import status_line
from syncline.sources.postgres import PostgresSource
from syncline.sources.postgres.errors import endpoint
from syncline.sources.postgres.slots import MB, SlotStatus, SlotWatch

SLOTS_LOG = "syncline.sources.postgres.slots"
FILL = "INSERT INTO filler SELECT repeat(md5(g::text), 40) FROM generate_series(1, 2000) g"  # ~3 MB


def _uid() -> str:
    return uuid.uuid4().hex[:8]


def _slot_names(dsn: str) -> set[str]:
    return {r[0] for r in pg_rows(dsn, "SELECT slot_name FROM pg_replication_slots")}


def _retained(dsn: str, slot: str) -> int:
    rows = pg_rows(
        dsn,
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint "
        f"FROM pg_replication_slots WHERE slot_name = '{slot}'",
    )
    return int(rows[0][0])


def _messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == SLOTS_LOG and r.levelno == level]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the watch ----------------------------------------------------------------------------


def test_watch_warns_while_slot_is_held_back_and_notes_the_way_back(
    pg_source_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=SLOTS_LOG)
    pg_exec(pg_source_dsn, "CREATE TABLE t (id int PRIMARY KEY)", "CREATE TABLE filler (v text)")
    cfg = PostgresSourceConfig(
        kind="postgres",
        dsn=pg_source_dsn,
        tables=["t"],
        snapshot="never",
        wal_warn_mb=1,
        wal_check_interval=0.1,
    )
    src = PostgresSource(cfg, f"w-{_uid()}")
    seen: list[int | None] = []
    src.on_retained = seen.append
    try:
        src.open(None)
        assert wait_until(lambda: bool(seen), 10)
        first = seen[-1]
        assert first is not None and first < MB
        assert not _messages(caplog, logging.WARNING)

        pg_exec(pg_source_dsn, FILL)  # nobody reads the slot: it holds all of this back
        assert wait_until(lambda: (seen[-1] or 0) > 2 * MB, 10), seen[-5:]
        assert src.slot_retained_wal_bytes == seen[-1]
        assert wait_until(lambda: bool(_messages(caplog, logging.WARNING)), 5)
        warnings = _messages(caplog, logging.WARNING)
        assert len(warnings) == 1, "repeated at most every few minutes, not every check"
        assert src.slot in warnings[0] and "above wal_warn_mb 1 MB" in warnings[0]
        assert "retains " in warnings[0] and " MB of WAL" in warnings[0]

        # read and confirm everything: the slot lets go once the server logs its running
        # transactions (CHECKPOINT does, instead of waiting for the background writer)
        def caught_up() -> bool:
            batch = src.read(1000, 0.1)
            if batch is not None:
                src.ack(batch.checkpoint)
            pg_exec(pg_source_dsn, "CHECKPOINT")
            return (seen[-1] or 2 * MB) < MB

        assert wait_until(caught_up, 20), seen[-5:]
        assert wait_until(lambda: bool(_messages(caplog, logging.INFO)), 5)
        info = _messages(caplog, logging.INFO)[-1]
        assert src.slot in info and "back below wal_warn_mb 1 MB" in info
    finally:
        src.close()


def test_warning_repeats_only_after_the_repeat_interval() -> None:
    ep = endpoint("postgresql://u:pw@db.example:5433/app", "p")
    watch = SlotWatch(ep, "syncline_p", warn_mb=1, interval=30, repeat=300)
    big = SlotStatus("syncline_p", "pgoutput", "logical", "app", True, 7, 5 * MB, "reserved", None)
    small = SlotStatus("syncline_p", "pgoutput", "logical", "app", True, 7, 10, "reserved", None)
    logger = logging.getLogger(SLOTS_LOG)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        for now, status in [(0, big), (10, big), (299, big), (301, big), (302, small), (303, big)]:
            watch.observe(status, now)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    levels = [r.levelname for r in records]
    assert levels == ["WARNING", "WARNING", "INFO", "WARNING"]
    assert "5.0 MB" in records[0].getMessage() and "pw" not in records[0].getMessage()
    assert watch.retained_bytes == 5 * MB


def test_lost_slot_warns_even_without_size() -> None:
    ep = endpoint("postgresql://u@h/app", "p")
    watch = SlotWatch(ep, "s", warn_mb=1024, interval=30)
    lost = SlotStatus("s", "pgoutput", "logical", "app", False, None, None, "lost", None)
    records: list[str] = []
    logger = logging.getLogger(SLOTS_LOG)
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        watch.observe(lost, 0)
    finally:
        logger.removeHandler(handler)
    assert len(records) == 1 and "wal_status lost" in records[0] and "new snapshot" in records[0]


def test_failed_check_is_logged_once_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=SLOTS_LOG)
    ep = endpoint(f"postgresql://u:s3cret-pw@127.0.0.1:{_free_port()}/app", "p")
    seen: list[int | None] = []
    watch = SlotWatch(ep, "syncline_p", warn_mb=1, interval=30, on_value=seen.append)
    assert watch.check() is None and watch.check() is None
    warnings = _messages(caplog, logging.WARNING)
    assert len(warnings) == 1, "the same failure is not repeated every interval"
    assert "cannot check replication slot syncline_p" in warnings[0]
    assert "connection refused" in warnings[0] and "s3cret-pw" not in warnings[0]
    assert seen == [] and watch.retained_bytes is None


def test_pipeline_stats_and_status_line_carry_retained_wal(
    tmp_path: Path, pg_source_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=SLOTS_LOG)
    pg_exec(
        pg_source_dsn,
        "CREATE TABLE items (id int PRIMARY KEY, v text)",
        "CREATE TABLE filler (v text)",
    )
    name = f"stats-{_uid()}"
    cfg = parse_config(
        {
            "pipelines": [
                {
                    "name": name,
                    "source": {
                        "kind": "postgres",
                        "dsn": pg_source_dsn,
                        "tables": ["items"],
                        "wal_warn_mb": 1,
                        "wal_check_interval": 0.1,
                    },
                    "transport": {"path": str(tmp_path / "log"), "partitions": 1},
                    "sink": {"kind": "sqlite", "path": str(tmp_path / "out.db")},
                    "apply_in": "thread",
                }
            ]
        }
    ).pipelines[0]
    pipeline = Pipeline(cfg)
    # An open transaction that has written keeps the slot's restart point behind it,
    # however promptly the pipeline confirms what it reads.
    blocker = psycopg2.connect(pg_source_dsn)
    try:
        pipeline.start()
        assert wait_until(lambda: pipeline.stats.slot_retained_wal_bytes is not None, 15)
        assert "slot_wal=" in status_line(pipeline)
        with blocker.cursor() as cur:
            cur.execute("INSERT INTO filler VALUES ('held')")
        pg_exec(pg_source_dsn, FILL, "INSERT INTO items VALUES (1, 'a')")
        assert wait_until(lambda: (pipeline.stats.slot_retained_wal_bytes or 0) > 2 * MB, 15)
        assert wait_until(lambda: pipeline.stats.applied == 1, 15), "capture goes on meanwhile"
        shown = re.search(r" slot_wal=([0-9.]+)MB$", status_line(pipeline))
        assert shown and float(shown.group(1)) > 2, status_line(pipeline)
        assert pipeline.stats.state == "running"
        assert any(
            f"syncline_{name.replace('-', '_')}" in m and f"pipeline {name}" in m
            for m in _messages(caplog, logging.WARNING)
        )
        blocker.commit()

        def released() -> bool:
            pg_exec(pg_source_dsn, "CHECKPOINT")
            return (pipeline.stats.slot_retained_wal_bytes or 2 * MB) < MB

        assert wait_until(released, 20, 0.3)
    finally:
        blocker.close()
        pipeline.stop(timeout=5)


def test_wal_config_is_validated() -> None:
    base = {"kind": "postgres", "dsn": "postgresql://h/db", "tables": ["t"]}
    src = {"name": "p", "sink": {"kind": "sqlite", "path": "x.db"}}
    cfg = parse_config({"pipelines": [{**src, "source": base}]})
    source = cfg.pipelines[0].source
    assert isinstance(source, PostgresSourceConfig)
    assert (source.wal_warn_mb, source.wal_check_interval) == (1024, 30)
    for key in ("wal_warn_mb", "wal_check_interval"):
        with pytest.raises(ConfigError, match=rf"pipelines\[0\]\.source\.{key}: .*greater than 0"):
            parse_config({"pipelines": [{**src, "source": {**base, key: 0}}]})


# -- syncline slots list | drop ----------------------------------------------------------------


@pytest.fixture
def slot_config(tmp_path: Path, pg_source_dsn: str) -> Iterator[tuple[Path, str, str]]:
    """A config with one PostgreSQL pipeline and its slot (created, inactive); yields (config, pipeline, slot)."""
    pg_exec(pg_source_dsn, "CREATE TABLE t (id int PRIMARY KEY)")
    name = f"own-{_uid()}"
    slot = f"syncline_{name.replace('-', '_')}"
    pg_exec(pg_source_dsn, f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")
    cfg = write_config(
        tmp_path / "c.yaml",
        f"""
pipelines:
  - name: {name}
    source: {{kind: postgres, dsn: "{pg_source_dsn}", tables: [t]}}
    transport: {{path: "{tmp_path / "log"}"}}
    sink: {{kind: sqlite, path: "{tmp_path / "out.db"}"}}
  - name: lite
    source: {{kind: sqlite, path: "{tmp_path / "in.db"}", tables: [t]}}
    transport: {{path: "{tmp_path / "log"}"}}
    sink: {{kind: sqlite, path: "{tmp_path / "out2.db"}"}}
""",
    )
    yield cfg, name, slot


def _row(out: str, slot: str) -> list[str]:
    lines = [line.split() for line in out.splitlines() if line.split()[:1] == [slot]]
    assert len(lines) == 1, out
    return lines[0]


def test_slots_list_shows_slots_and_owner(
    slot_config: tuple[Path, str, str], pg_source_dsn: str
) -> None:
    cfg, name, slot = slot_config
    stray = f"stray_{_uid()}"
    pg_exec(pg_source_dsn, f"SELECT pg_create_logical_replication_slot('{stray}', 'test_decoding')")
    pg_exec(pg_source_dsn, "CREATE TABLE big AS SELECT g FROM generate_series(1, 100000) g")
    db = urlsplit(pg_source_dsn).path.lstrip("/")

    result = syncline("slots", "list", "-c", str(cfg))
    assert result.returncode == 0, result.stderr
    assert "SLOT" in result.stdout and "RETAINED" in result.stdout and "PIPELINE" in result.stdout
    row = _row(result.stdout, slot)
    assert row[1:5] == ["pgoutput", "logical", db, "no"]
    assert row[-1] == name and row[-2] == "reserved"
    assert row[-3] == "MB" and float(row[-4]) > 1, "the table's WAL is retained"
    assert (
        _row(result.stdout, stray)[1] == "test_decoding" and _row(result.stdout, stray)[-1] == "-"
    )

    # --dsn alone: same slots, no owners; with -c as well the owner is found by name
    by_dsn = syncline("slots", "list", "--dsn", pg_source_dsn)
    assert by_dsn.returncode == 0 and _row(by_dsn.stdout, slot)[-1] == "-"
    assert "syncline-test" not in by_dsn.stdout + by_dsn.stderr  # the server's password
    assert (
        _row(syncline("slots", "list", "--dsn", pg_source_dsn, "-c", str(cfg)).stdout, slot)[-1]
        == name
    )
    assert syncline("slots", "list", "-c", str(cfg), "-p", "lite").returncode == 2


def test_slots_drop_inactive_active_and_missing(
    slot_config: tuple[Path, str, str], pg_source_dsn: str
) -> None:
    cfg, name, slot = slot_config
    # held by a running capture: refused, naming the pid
    holder_cfg = PostgresSourceConfig(
        kind="postgres", dsn=pg_source_dsn, tables=["t"], slot=slot, snapshot="never"
    )
    holder = PostgresSource(holder_cfg, name)
    holder.open(None)
    try:
        pid = pg_rows(
            pg_source_dsn, f"SELECT active_pid FROM pg_replication_slots WHERE slot_name = '{slot}'"
        )[0][0]
        result = syncline("slots", "drop", slot, "-c", str(cfg), "--yes")
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == [
            f"syncline: error: replication slot {slot} at {endpoint(pg_source_dsn, name).where} "
            f"is active (held by pid {pid}); stop its consumer first"
        ]
        assert slot in _slot_names(pg_source_dsn)
    finally:
        holder.close()
    assert wait_until(
        lambda: (
            not pg_rows(
                pg_source_dsn,
                f"SELECT 1 FROM pg_replication_slots WHERE slot_name = '{slot}' AND active",
            )
        ),
        10,
    )

    # asked, answered no / no answer: kept
    cmd = [sys.executable, "-m", "syncline", "slots", "drop", slot, "-c", str(cfg)]
    no = subprocess.run(cmd, input="n\n", capture_output=True, text=True, cwd=REPO, timeout=60)
    assert no.returncode == 1 and f"replication slot {slot} kept" in no.stdout
    eof = subprocess.run(cmd, input="", capture_output=True, text=True, cwd=REPO, timeout=60)
    assert eof.returncode == 2 and "pass --yes" in eof.stderr
    assert slot in _slot_names(pg_source_dsn)

    # answered yes: dropped, with the warning that its pipeline needs a new snapshot
    yes = subprocess.run(cmd, input="y\n", capture_output=True, text=True, cwd=REPO, timeout=60)
    assert yes.returncode == 0, yes.stderr
    assert f"pipeline {name} captures through this slot" in yes.stderr
    assert "new snapshot" in yes.stderr
    assert f"dropped replication slot {slot}" in yes.stdout
    assert slot not in _slot_names(pg_source_dsn)

    # gone now: refused in one line
    missing = syncline("slots", "drop", slot, "--dsn", pg_source_dsn, "--yes")
    assert missing.returncode == 2
    assert len(missing.stderr.strip().splitlines()) == 1
    assert f"no replication slot {slot} at" in missing.stderr


def test_slots_drop_by_dsn_with_yes(pg_source_dsn: str) -> None:
    slot = f"loose_{_uid()}"
    pg_exec(pg_source_dsn, f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")
    # connected to another database than the slot's: drop still works
    other = urlunsplit(urlsplit(pg_source_dsn)._replace(path="/postgres"))
    result = syncline("slots", "drop", slot, "--dsn", other, "--yes")
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr
    assert slot not in _slot_names(pg_source_dsn)


def test_slots_bad_input_is_one_line(pg_source_dsn: str) -> None:
    u = urlsplit(pg_source_dsn)
    refused = f"postgresql://postgres:s3cret-pw@127.0.0.1:{_free_port()}/x"
    wrong_pw = urlunsplit(u._replace(netloc=f"postgres:s3cret-pw@{u.hostname}:{u.port}"))
    cases = [
        (["slots", "list", "--dsn", refused], 1, "cannot connect to PostgreSQL at 127.0.0.1:"),
        (["slots", "drop", "x", "--dsn", wrong_pw, "--yes"], 1, "password authentication failed"),
        (["slots", "list", "--dsn", "not a dsn"], 2, "--dsn is not a valid PostgreSQL"),
        (["slots", "list"], 2, "give a config file (-c CONFIG) or a server (--dsn DSN)"),
    ]
    for args, code, text in cases:
        result = syncline(*args)
        assert result.returncode == code, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and text in lines[0], (args, lines)
        assert "s3cret-pw" not in result.stdout + result.stderr
    assert syncline("slots", "--help").returncode == 0
