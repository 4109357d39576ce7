"""PostgreSQL → Kafka → PostgreSQL through the CLI, against a real broker.

Skipped without one (see tests/servers.py: SYNCLINE_KAFKA_BOOTSTRAP or `make test-kafka`).
"""

from __future__ import annotations

import json
import random
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from test_pipeline_pg import SELECT, SOURCE_DDL, TARGET_DDL, Writer

from e2e_helpers import SynclineProcess, pg_exec, pg_rows, wait_until, write_config
from servers import KafkaBroker
from syncline.events import encode_key
from syncline.transports.base import partition_for

pytestmark = pytest.mark.kafka


def config(tmp_path: Path, broker: KafkaBroker, prefix: str, src: str, dst: str) -> Path:
    return write_config(
        tmp_path / "syncline.yaml",
        f"""
pipelines:
  - name: accounts
    source: {{kind: postgres, dsn: "{src}", tables: [public.accounts], heartbeat_interval: 1}}
    transport:
      kind: kafka
      bootstrap_servers: "{broker.bootstrap}"
      topic_prefix: {prefix}
      partitions: 4
      timeout: 20
    sink: {{kind: postgres, dsn: "{dst}"}}
    batch: {{max_events: 200, max_wait_ms: 10}}
    dlq: {{path: "{tmp_path / "dlq"}"}}
""",
    )


def read_topic(broker: KafkaBroker, topic: str, partitions: int) -> list[tuple[int, bytes, bytes]]:
    """Every committed record of a topic, as a Debezium consumer would read it."""
    c = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:6]}",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list[tuple[int, bytes, bytes]] = []
    eof: set[int] = set()
    deadline = time.monotonic() + 30
    while len(eof) < partitions and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is None:
            continue
        if m.error() is not None:
            eof.add(m.partition() or 0)
            continue
        out.append((m.partition() or 0, m.key() or b"", m.value() or b""))
    c.close()
    return out


def test_snapshot_then_stream_through_debezium_style_topics(
    tmp_path: Path, kafka_broker: KafkaBroker, pg_source_dsn: str, pg_target_dsn: str
) -> None:
    pg_exec(pg_source_dsn, SOURCE_DDL)
    pg_exec(pg_target_dsn, TARGET_DDL)
    pg_exec(
        pg_source_dsn,
        "INSERT INTO accounts(id, owner, balance) SELECT g, 'pre ' || g, g FROM generate_series(1, 2000) g",
    )
    prefix = f"k{uuid.uuid4().hex[:8]}"
    cfg = config(tmp_path, kafka_broker, prefix, pg_source_dsn, pg_target_dsn)
    proc = SynclineProcess(cfg, tmp_path / "run.log")
    try:
        writer = Writer(pg_source_dsn, seconds=3, seed=11, first_id=2001)
        writer.start()
        writer.join()
        assert writer.error is None
        assert wait_until(
            lambda: pg_rows(pg_source_dsn, SELECT) == pg_rows(pg_target_dsn, SELECT), 90
        ), (tmp_path / "run.log").read_text()[-3000:]
        assert pg_rows(pg_target_dsn, "SELECT count(*) FROM double_applies") == [(0,)]
        assert proc.terminate() == 0
    finally:
        if proc.alive():
            proc.kill9()
    records = read_topic(kafka_broker, f"{prefix}.public.accounts", 4)
    assert len(records) >= 2000 + writer.commits
    for part, key, value in records[:200]:
        event = json.loads(value)
        assert set(event) >= {"source", "op", "ts_ms"}  # before/after: as Debezium sets them
        assert event["source"]["table"] == "accounts"
        assert event["source"]["schema"] == "public"
        row = event.get("after") or event["before"]
        assert json.loads(key) == {"id": row["id"]}
        assert key == encode_key({"id": row["id"]})
        assert part == partition_for(key, 4)
    assert {json.loads(v)["op"] for _, _, v in records} >= {"r", "c", "u"}


def test_kill9_mid_load_converges_exactly_once(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    kafka_broker: KafkaBroker,
    pg_source_dsn: str,
    pg_target_dsn: str,
) -> None:
    if not kafka_broker.hides_aborted:
        request.applymarker(
            pytest.mark.xfail(
                reason=f"{kafka_broker.version} shows aborted transactions to read_committed "
                "consumers, so a capture killed mid-transaction can leave duplicates",
                strict=False,
            )
        )
    pg_exec(pg_source_dsn, SOURCE_DDL)
    pg_exec(pg_target_dsn, TARGET_DDL)
    cfg = config(tmp_path, kafka_broker, f"k{uuid.uuid4().hex[:8]}", pg_source_dsn, pg_target_dsn)
    writer = Writer(pg_source_dsn, seconds=10, seed=17)
    writer.start()
    rng = random.Random(5)
    for _ in range(3):
        proc = SynclineProcess(cfg, tmp_path / "run.log")
        time.sleep(rng.uniform(1.5, 3.0))
        proc.kill9()
    writer.join()
    assert writer.error is None
    proc = SynclineProcess(cfg, tmp_path / "run.log")
    try:
        converged = wait_until(
            lambda: pg_rows(pg_source_dsn, SELECT) == pg_rows(pg_target_dsn, SELECT), 120
        )
        assert converged, (tmp_path / "run.log").read_text()[-3000:]
        assert pg_rows(pg_target_dsn, "SELECT count(*) FROM double_applies") == [(0,)]
        assert proc.terminate() == 0
    finally:
        if proc.alive():
            proc.kill9()
