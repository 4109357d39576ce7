"""Horizontal scaling: one capture process, several apply workers sharing the partitions."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from e2e_helpers import (
    ACCOUNTS_DDL as SOURCE_DDL,
)
from e2e_helpers import (
    ACCOUNTS_SELECT as SELECT,
)
from e2e_helpers import (
    ACCOUNTS_TARGET_DDL as TARGET_DDL,
)
from e2e_helpers import (
    REPO,
    Writer,
    pg_exec,
    pg_rows,
    wait_until,
    write_config,
)


class Role:
    """`syncline run CONFIG --role ROLE` in the background."""

    def __init__(self, config: Path, log: Path, role: str, worker: str | None = None) -> None:
        self.log = log
        self._fh = open(log, "ab")  # noqa: SIM115
        extra = ["--worker-id", worker] if worker else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "syncline", "run", str(config), "--role", role, *extra],
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )

    def stop(self, kill: bool = False) -> int:
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        code = self.proc.wait(20)
        self._fh.close()
        return code


def owners(dsn: str) -> dict[int, str | None]:
    if not pg_rows(dsn, "SELECT to_regclass('syncline.syncline_offsets')")[0][0]:
        return {}  # no worker has started yet
    rows = pg_rows(
        dsn,
        "SELECT partition, owner FROM syncline.syncline_offsets "
        "WHERE pipeline = 'accounts' AND partition >= 0 ORDER BY partition",
    )
    return {int(p): o for p, o in rows}


def test_two_apply_workers_split_partitions_and_one_takes_over_when_the_other_dies(
    tmp_path: Path, pg_source_dsn: str, pg_target_dsn: str
) -> None:
    pg_exec(pg_source_dsn, SOURCE_DDL)
    pg_exec(pg_target_dsn, TARGET_DDL)
    config = write_config(
        tmp_path / "syncline.yaml",
        f"""
pipelines:
  - name: accounts
    source: {{kind: postgres, dsn: "{pg_source_dsn}", tables: [public.accounts], heartbeat_interval: 1}}
    transport: {{kind: embedded, path: "{tmp_path / "log"}", partitions: 8}}
    sink: {{kind: postgres, dsn: "{pg_target_dsn}"}}
    batch: {{max_events: 200, max_wait_ms: 10}}
    scaling: {{lease_s: 3, heartbeat_s: 0.5}}
""",
    )
    writer = Writer(pg_source_dsn, seconds=14, seed=5)
    writer.start()
    capture = Role(config, tmp_path / "capture.log", "capture")
    a = Role(config, tmp_path / "a.log", "apply", "a")
    b = Role(config, tmp_path / "b.log", "apply", "b")
    try:
        # the partitions get split between the two workers
        assert wait_until(
            lambda: set(owners(pg_target_dsn).values()) == {"a/accounts", "b/accounts"}, 30
        ), owners(pg_target_dsn)
        split = owners(pg_target_dsn)
        assert list(split.values()).count("a/accounts") == 4
        time.sleep(2)
        a.stop(kill=True)  # mid-load
        # b takes a's partitions over once a's leases run out
        assert wait_until(lambda: set(owners(pg_target_dsn).values()) == {"b/accounts"}, 30)
        writer.join()
        assert writer.error is None, writer.error
        assert wait_until(
            lambda: pg_rows(pg_target_dsn, SELECT) == pg_rows(pg_source_dsn, SELECT), 90
        ), "target did not converge"
        assert pg_rows(pg_target_dsn, "SELECT * FROM double_applies") == []
        assert writer.commits > 100
    finally:
        for r in (b, capture):
            if r.proc.poll() is None:
                assert r.stop() == 0
        if a.proc.poll() is None:
            a.stop(kill=True)
    for name in ("capture", "b"):
        assert "Traceback" not in (tmp_path / f"{name}.log").read_text()
    assert "role apply" in (tmp_path / "b.log").read_text()


def test_a_graceful_worker_hands_its_partitions_over_at_once(
    tmp_path: Path, pg_source_dsn: str, pg_target_dsn: str
) -> None:
    pg_exec(pg_source_dsn, SOURCE_DDL)
    pg_exec(pg_target_dsn, TARGET_DDL)
    config = write_config(
        tmp_path / "syncline.yaml",
        f"""
pipelines:
  - name: accounts
    source: {{kind: postgres, dsn: "{pg_source_dsn}", tables: [public.accounts]}}
    transport: {{kind: embedded, path: "{tmp_path / "log"}", partitions: 4}}
    sink: {{kind: postgres, dsn: "{pg_target_dsn}"}}
    scaling: {{lease_s: 60, heartbeat_s: 0.5}}
""",
    )
    everything = Role(config, tmp_path / "all.log", "all")
    extra = Role(config, tmp_path / "extra.log", "apply", "extra")
    try:
        assert wait_until(lambda: "extra/accounts" in owners(pg_target_dsn).values(), 30)
        assert extra.stop() == 0
        # released on exit: the long lease does not hold the partitions back
        assert wait_until(lambda: "extra/accounts" not in owners(pg_target_dsn).values(), 10)
        assert wait_until(lambda: None not in owners(pg_target_dsn).values(), 10)
        pg_exec(
            pg_source_dsn,
            "INSERT INTO accounts (id, owner, balance) SELECT g, 'o', 1 FROM generate_series(1, 500) g",
        )
        assert wait_until(lambda: len(pg_rows(pg_target_dsn, SELECT)) == 500, 30)
    finally:
        assert everything.stop() == 0
