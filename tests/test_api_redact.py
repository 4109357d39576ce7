"""Passwords never leave the process: redaction rules, and every API answer and log line.

The PostgreSQL pipelines here point at a closed port (nothing listens on 127.0.0.1:1),
so they stay degraded with connection errors; no server is needed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from api_helpers import ApiHarness, harness, make_source, pipeline_doc, start_api
from e2e_helpers import wait_until
from syncline.redact import dsn_passwords, is_secret_key, redact_config, redact_dsn, redact_text

__all__ = ["harness"]


@pytest.mark.parametrize(
    ("dsn", "redacted"),
    [
        ("postgresql://app:s3cret@db:5432/orders", "postgresql://app:***@db:5432/orders"),
        ("postgres://app:p@ss@w0rd@db/orders", "postgres://app:***@db/orders"),
        ("postgresql://app:pa%40ss@db/orders?sslmode=require", None),
        ("postgresql://app@db/orders?password=s3cret&sslmode=require", None),
        ("postgresql://db/orders?sslpassword=s3cret", "postgresql://db/orders?sslpassword=***"),
        ("host=db user=app password=s3cret dbname=orders", None),
        ("host=db password = 's3 cr\\'et' dbname=orders", "host=db password = *** dbname=orders"),
        ("host=db PASSWORD=s3cret", "host=db PASSWORD=***"),
        ("postgresql://app@db/orders", "postgresql://app@db/orders"),
        ("host=db user=app dbname=orders", "host=db user=app dbname=orders"),
    ],
)
def test_redact_dsn(dsn: str, redacted: str | None) -> None:
    out = redact_dsn(dsn)
    if redacted is not None:
        assert out == redacted
    for secret in dsn_passwords([dsn]):
        assert secret not in out
    assert "db" in out


def test_dsn_passwords_and_text() -> None:
    dsns = [
        "postgresql://app:pa%40ss@db/orders",
        "host=db password='it''s' user=x",
        "host=db password='a \\'quoted\\' one'",
    ]
    assert dsn_passwords(dsns) == {"pa%40ss", "pa@ss", "it", "a 'quoted' one"}
    text = "FATAL: password authentication failed; tried pa@ss for app"
    assert redact_text(text, dsn_passwords(dsns)) == (
        "FATAL: password authentication failed; tried *** for app"
    )
    assert (
        redact_text("connect to postgresql://u:x@h/d failed")
        == "connect to postgresql://u:***@h/d failed"
    )


def test_redact_config() -> None:
    doc = {
        "source": {"kind": "postgres", "dsn": "postgresql://u:topsecret@h/d"},
        "sink": {"dsn": "host=h password=topsecret2"},
        "tokens": [{"name": "ci", "token": "abc", "token_env": "CI_TOKEN"}],
        "http": {"api_key": "k-123", "db_password": "x", "url": "https://u:pw@hook.example/x"},
        "note": "mentions topsecret3 in passing",
        "n": 3,
    }
    out = redact_config(doc, {"topsecret3"})
    assert out == {
        "source": {"kind": "postgres", "dsn": "postgresql://u:***@h/d"},
        "sink": {"dsn": "host=h password=***"},
        "tokens": [{"name": "ci", "token": "***", "token_env": "CI_TOKEN"}],
        "http": {"api_key": "***", "db_password": "***", "url": "https://u:***@hook.example/x"},
        "note": "mentions *** in passing",
        "n": 3,
    }
    assert is_secret_key("password") and is_secret_key("sslpassword") and is_secret_key("token")
    assert not is_secret_key("token_env") and not is_secret_key("dsn")


URL_PW = "Sup3r%40Secret-PW"
URL_PW_DECODED = "Sup3r@Secret-PW"
KV_PW = "kv secret pw 99"
SECRETS = (URL_PW, URL_PW_DECODED, KV_PW, "Secret-PW", "secret pw 99")


def _pg_pipeline(tmp: Path, name: str) -> dict[str, object]:
    doc = pipeline_doc(tmp, name)
    doc["source"] = {
        "kind": "postgres",
        "dsn": f"postgresql://syncer:{URL_PW}@127.0.0.1:1/orders?connect_timeout=1",
        "tables": ["orders"],
        # a secret pasted somewhere else in the config is caught too
        "heartbeat_query": f"SELECT '{KV_PW}'",
    }
    doc["sink"] = {
        "kind": "postgres",
        "dsn": f"host=127.0.0.1 port=1 dbname=inventory user=app password='{KV_PW}'",
    }
    return doc


def test_no_password_in_any_response_the_audit_log_or_the_logs(
    tmp_path: Path, harness: list[ApiHarness], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    make_source(tmp_path / "shop-src.db")
    api = start_api(harness, tmp_path, [pipeline_doc(tmp_path)])
    texts: list[str] = []

    def keep(method: str, path: str, **kw: object) -> dict[str, object]:
        res = api.call(method, path, "admin", **kw)  # type: ignore[arg-type]
        texts.append(res.text)
        return res.json()  # type: ignore[no-any-return]

    # with the connection check: refused, the error names the server but not the password
    refused = keep("POST", "/api/v1/pipelines", json=_pg_pipeline(tmp_path, "checked"))
    assert "127.0.0.1:1" in str(refused["error"])
    # without it: runs, degraded, retrying the connection
    created = keep("POST", "/api/v1/pipelines?check=false", json=_pg_pipeline(tmp_path, "pg"))
    assert created["name"] == "pg"
    pipe = api.runtime.find("pg")
    assert pipe is not None
    assert wait_until(lambda: pipe.stats.state == "degraded", 30)
    shown = keep("GET", "/api/v1/pipelines/pg")
    config = shown["config"]
    assert isinstance(config, dict)
    assert config["source"]["dsn"] == (
        "postgresql://syncer:***@127.0.0.1:1/orders?connect_timeout=1"
    )
    assert config["sink"]["dsn"] == "host=127.0.0.1 port=1 dbname=inventory user=app password=***"
    assert config["source"]["heartbeat_query"] == "SELECT '***'"
    keep("GET", "/api/v1/pipelines")
    status = keep("GET", "/api/v1/pipelines/pg/status")
    assert "cannot connect" in str(status["error"])
    ready = keep("GET", "/health/ready")
    assert ready["status"] == "unavailable"
    keep("POST", "/api/v1/config/validate", json=_pg_pipeline(tmp_path, "Bad Name"))
    keep("POST", "/api/v1/config/validate", json={"pipelines": [_pg_pipeline(tmp_path, "v")]})
    bad = _pg_pipeline(tmp_path, "pg")
    bad["sink"]["extra"] = KV_PW  # type: ignore[index]
    keep("PUT", "/api/v1/pipelines/pg", json=bad)
    keep("POST", "/api/v1/pipelines/pg/restart")
    keep("DELETE", "/api/v1/pipelines/pg")

    everything = "\n".join([*texts, api.audit_path.read_text(), caplog.text])
    for secret in SECRETS:
        assert secret not in everything, secret
    assert "pipeline.create" in api.audit_path.read_text()
