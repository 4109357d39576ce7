"""A 3-node NATS cluster on loopback, an R3 stream, and a node killed with kill -9 mid-load."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from test_pipeline_nats_pg import nats_config
from test_pipeline_pg import SELECT, SOURCE_DDL, TARGET_DDL, Writer

from e2e_helpers import SynclineProcess, pg_exec, pg_rows, wait_until
from servers import NatsServer, start_nats


@pytest.fixture
def cluster() -> Iterator[NatsServer]:
    server = start_nats(cluster=3, env_var=None)
    yield server
    server.stop()


async def _ask(urls: list[str], stream: str | None) -> str | None:
    """None until JetStream answers; then the leader of ``stream`` (or "" without one)."""
    try:
        nc = await nats.connect(servers=urls, connect_timeout=1, max_reconnect_attempts=1)
    except Exception:
        return None
    try:
        js = nc.jetstream(timeout=2)
        if stream is None:
            await js.account_info()
            return ""
        info = await js.stream_info(stream)
        return info.cluster.leader if info.cluster else ""
    except Exception:
        return None
    finally:
        await nc.close()


def ask(urls: list[str], stream: str | None = None) -> str | None:
    return asyncio.run(_ask(urls, stream))


def test_node_killed_mid_load_loses_and_doubles_nothing(
    tmp_path: Path, pg_source_dsn: str, pg_target_dsn: str, cluster: NatsServer
) -> None:
    assert wait_until(lambda: ask(cluster.urls) is not None, 30)  # the cluster has formed
    pg_exec(pg_source_dsn, SOURCE_DDL)
    pg_exec(pg_target_dsn, TARGET_DDL)
    cfg = nats_config(tmp_path, pg_source_dsn, pg_target_dsn, cluster.urls, replicas=3)
    stream = "syncline_" + cfg.read_text().split("name: ")[1].split()[0]
    proc = SynclineProcess(cfg, tmp_path / "run.log")
    try:
        writer = Writer(pg_source_dsn, seconds=8, seed=23)
        writer.start()
        time.sleep(2.5)
        leader = ask(cluster.urls, stream)
        assert leader, (tmp_path / "run.log").read_text()[-2000:]
        victim = next(n for n in cluster.nodes if n.name == leader)
        victim.kill9()  # the stream's leader, while changes flow
        writer.join()
        assert writer.error is None
        converged = wait_until(
            lambda: pg_rows(pg_source_dsn, SELECT) == pg_rows(pg_target_dsn, SELECT), 120
        )
        assert converged, (tmp_path / "run.log").read_text()[-3000:]
        assert pg_rows(pg_target_dsn, "SELECT count(*) FROM double_applies") == [(0,)]
        survivors = [n.url for n in cluster.nodes if n is not victim]
        assert ask(survivors, stream) not in (None, "", leader)  # a new leader took over
        assert proc.terminate(30) == 0
    finally:
        if proc.alive():
            proc.kill9()
