"""The API as users run it: ``syncline run CONFIG --api HOST:PORT`` in its own process,
a real uvicorn server, called over HTTP with httpx."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from api_helpers import make_source, rows, sql
from e2e_helpers import REPO, syncline, wait_until

VIEWER = "dashboard-viewer-token-1234"
OPERATOR = "oncall-operator-token-5678"


def test_syncline_run_serves_the_api(tmp_path: Path) -> None:
    src, dst = make_source(tmp_path / "src.db"), tmp_path / "dst.db"
    audit = tmp_path / "audit.log"
    config = tmp_path / "syncline.yaml"
    config.write_text(
        f"""
pipelines:
  - name: shop
    source: {{kind: sqlite, path: {src}, tables: [orders]}}
    transport: {{path: {tmp_path / "log"}, partitions: 2, fsync: false}}
    sink: {{kind: sqlite, path: {dst}}}
    batch: {{max_wait_ms: 5}}
api:
  listen: 127.0.0.1:8083          # --api below overrides it
  audit_log: {audit}
  tokens:
    - {{name: dashboard, role: viewer, token_env: DASH_TOKEN}}
"""
    )
    log = tmp_path / "run.log"
    env = {
        **os.environ,
        "DASH_TOKEN": VIEWER,
        "SYNCLINE_API_TOKENS": f"oncall:operator:{OPERATOR}",
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncline", "run", str(config), "--api", "127.0.0.1:0"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
        )
    try:
        assert wait_until(lambda: "management API on" in log.read_text(), 30), log.read_text()
        found = re.search(r"management API on (http://127\.0\.0\.1:\d+)", log.read_text())
        assert found is not None
        base = found.group(1)
        viewer = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {VIEWER}"})
        operator = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {OPERATOR}"})

        assert httpx.get(f"{base}/health/live").json()["status"] == "ok"
        assert wait_until(lambda: len(rows(dst)) == 5, 30)
        status = viewer.get("/api/v1/pipelines/shop/status")
        assert status.status_code == 200 and status.json()["state"] == "running"
        assert httpx.get(f"{base}/api/v1/pipelines").status_code == 401

        assert viewer.post("/api/v1/pipelines/shop/pause").status_code == 403
        paused = operator.post("/api/v1/pipelines/shop/pause")
        assert paused.status_code == 200 and paused.json()["state"] == "paused"
        sql(src, "INSERT INTO orders VALUES (6, 6)")
        # every pipeline is paused, yet the process keeps serving
        assert viewer.get("/api/v1/pipelines").json()[0]["state"] == "paused"
        assert len(rows(dst)) == 5
        assert operator.post("/api/v1/pipelines/shop/resume").status_code == 200
        assert wait_until(lambda: rows(dst) == rows(src), 30)
        assert httpx.get(f"{base}/health/ready").status_code == 200
        viewer.close()
        operator.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    text = log.read_text()
    assert code == 0, text
    assert VIEWER not in text and OPERATOR not in text
    entries = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(e["token"], e["action"], e["outcome"]) for e in entries] == [
        (None, "pipeline.list", "refused"),
        ("dashboard", "pipeline.pause", "refused"),
        ("oncall", "pipeline.pause", "ok"),
        ("oncall", "pipeline.resume", "ok"),
    ]
    assert all(e["remote"].startswith("127.0.0.1:") for e in entries)
    assert "pipeline.pause by oncall (operator) on pipeline shop: ok 200" in text


def test_api_refuses_to_listen_openly_without_tokens(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        f"pipelines: [{{name: a, source: {{kind: sqlite, path: {tmp_path}/s.db, tables: [t]}}, "
        f"transport: {{path: {tmp_path}/log}}, sink: {{kind: sqlite, path: {tmp_path}/d.db}}}}]\n"
    )
    env = {"SYNCLINE_API_TOKENS": ""}
    res = syncline("run", str(config), "--api", "0.0.0.0:0", env=env)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == (
        "syncline: error: the API would listen on 0.0.0.0:0 without tokens, open to the "
        "network; add api.tokens (or SYNCLINE_API_TOKENS) or listen on 127.0.0.1"
    )

    make_source(tmp_path / "s.db", 0)
    sql(tmp_path / "s.db", "CREATE TABLE t (id INTEGER PRIMARY KEY)")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = syncline("run", str(config), "--api", f"127.0.0.1:{port}", env=env)
    assert res.returncode == 2, res.stderr
    assert f"syncline: error: the API cannot listen on 127.0.0.1:{port}" in res.stderr
    assert "Traceback" not in res.stderr


def test_check_reads_the_api_tokens_as_run_would(tmp_path: Path) -> None:
    make_source(tmp_path / "s.db")
    config = tmp_path / "c.yaml"
    base = (
        f"pipelines: [{{name: a, source: {{kind: sqlite, path: {tmp_path}/s.db, tables: [orders]}}, "
        f"transport: {{path: {tmp_path}/log}}, sink: {{kind: sqlite, path: {tmp_path}/d.db}}}}]\n"
    )
    config.write_text(base + "api: {tokens: [{name: ci, role: admin, token_env: CI_API_TOKEN}]}\n")
    res = syncline("check", str(config), env={"SYNCLINE_API_TOKENS": ""})
    assert res.returncode == 2
    assert res.stderr.strip() == (
        "syncline: error: api.tokens: token ci reads environment variable CI_API_TOKEN, "
        "which is not set"
    )
    res = syncline("check", str(config), env={"CI_API_TOKEN": "c" * 20, "SYNCLINE_API_TOKENS": ""})
    assert res.returncode == 0, res.stderr
    assert "api: 127.0.0.1:8083, 1 token(s)" in res.stdout
