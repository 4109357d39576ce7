"""Dead-letter queue with PostgreSQL on both sides, through ``syncline run`` (apply in a child)."""

from __future__ import annotations

from pathlib import Path

from e2e_helpers import SynclineProcess, pg_exec, pg_rows, syncline, wait_until, write_config

DDL = "CREATE TABLE public.accounts (id bigint PRIMARY KEY, balance numeric(18,2) NOT NULL)"
SELECT = "SELECT id, balance FROM public.accounts ORDER BY id"
BAD = {17, 400, 401, 1200, 1999}  # scattered through one 2,000-row transaction


def test_bad_rows_in_a_big_transaction_are_isolated_and_replayed_in_order(
    tmp_path: Path, pg_source_dsn: str, pg_target_dsn: str
) -> None:
    pg_exec(pg_source_dsn, DDL)
    pg_exec(pg_target_dsn, DDL, "ALTER TABLE accounts ADD CONSTRAINT positive CHECK (balance >= 0)")
    config = write_config(
        tmp_path / "syncline.yaml",
        f"""
pipelines:
  - name: accounts
    source: {{kind: postgres, dsn: "{pg_source_dsn}", tables: [accounts], heartbeat_interval: 1}}
    transport: {{path: "{tmp_path / "log"}", partitions: 4}}
    sink: {{kind: postgres, dsn: "{pg_target_dsn}"}}
    batch: {{max_events: 5000, max_wait_ms: 10}}
    retry: {{initial_delay_ms: 10, max_delay_ms: 100}}
""",
    )
    values = ", ".join(f"({i}, {-i if i in BAD else i})" for i in range(1, 2001))
    proc = SynclineProcess(config, tmp_path / "run.log")
    try:
        pg_exec(pg_source_dsn, f"INSERT INTO accounts VALUES {values}")
        assert wait_until(lambda: len(pg_rows(pg_target_dsn, SELECT)) == 2000 - len(BAD), 60)
        # later changes of a bad key wait behind it; other keys keep flowing
        pg_exec(
            pg_source_dsn,
            "UPDATE accounts SET balance = 5 WHERE id = 400",
            "UPDATE accounts SET balance = balance + 1 WHERE id = 2",
        )
        assert wait_until(
            lambda: (2, 3) in [(r[0], int(r[1])) for r in pg_rows(pg_target_dsn, SELECT)], 30
        )
        assert wait_until(
            lambda: len(syncline("dlq", "list", str(config)).stdout.splitlines()) == 7, 30
        )
        listing = syncline("dlq", "list", str(config))
        assert listing.returncode == 0, listing.stderr
        lines = listing.stdout.splitlines()[1:]
        dead = sorted(int(line.split()[3][6:-1]) for line in lines if " dead " in line)
        assert dead == sorted(BAD)
        assert all(
            "DataError: applying changes to public.accounts" in line
            for line in lines
            if " dead " in line
        )
        first = syncline("dlq", "show", str(config), lines[0].split()[0]).stdout
        assert 'violates check constraint "positive"' in first
        assert sum(" held " in line for line in lines) == 1
        assert pg_rows(pg_target_dsn, "SELECT balance FROM accounts WHERE id = 400") == []

        pg_exec(pg_target_dsn, "ALTER TABLE accounts DROP CONSTRAINT positive")  # fix the cause
        replay = syncline("dlq", "replay", str(config), "--all")
        assert replay.returncode == 0, replay.stdout + replay.stderr
        assert "replayed 6 of 6 entries of pipeline accounts" in replay.stdout
        assert pg_rows(pg_target_dsn, SELECT) == pg_rows(pg_source_dsn, SELECT)
        assert proc.alive()
    finally:
        assert proc.terminate() == 0
    log = (tmp_path / "run.log").read_text()
    assert "bisecting" in log and "Traceback" not in log
