"""API security: every role against every endpoint, error shapes, the audit log, tokens.

The role table points allowed calls at a pipeline that does not exist, so an
allowed call answers 404 (or 422/200 for the endpoints without a pipeline) with
no side effect, and a refused one 401/403 before anything runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api_helpers import TOKENS, ApiHarness, caught_up, harness, make_source, pipeline_doc, start_api
from e2e_helpers import wait_until
from syncline.api.settings import resolve_settings
from syncline.config import ApiConfig, ApiTokenConfig
from syncline.errors import ConfigError

__all__ = ["harness"]

# (method, path, json body, least role, status when allowed)
ENDPOINTS: list[tuple[str, str, Any, str, int]] = [
    ("GET", "/api/v1/pipelines", None, "viewer", 200),
    ("POST", "/api/v1/pipelines", {}, "admin", 422),
    ("GET", "/api/v1/pipelines/ghost", None, "viewer", 404),
    ("PUT", "/api/v1/pipelines/ghost", {}, "admin", 422),
    ("DELETE", "/api/v1/pipelines/ghost", None, "admin", 404),
    ("GET", "/api/v1/pipelines/ghost/status", None, "viewer", 404),
    ("POST", "/api/v1/pipelines/ghost/pause", None, "operator", 404),
    ("POST", "/api/v1/pipelines/ghost/resume", None, "operator", 404),
    ("POST", "/api/v1/pipelines/ghost/restart", None, "operator", 404),
    ("GET", "/api/v1/pipelines/ghost/dlq", None, "viewer", 404),
    ("GET", "/api/v1/pipelines/ghost/dlq/1", None, "viewer", 404),
    ("POST", "/api/v1/pipelines/ghost/dlq/replay", {"all": True}, "operator", 404),
    ("POST", "/api/v1/pipelines/ghost/dlq/purge", {"all": True}, "operator", 404),
    ("GET", "/api/v1/pipelines/ghost/conflicts", None, "viewer", 404),
    ("GET", "/api/v1/pipelines/ghost/conflicts/1", None, "viewer", 404),
    ("POST", "/api/v1/pipelines/ghost/conflicts/1/resolve", {"use": "current"}, "operator", 404),
    ("POST", "/api/v1/config/validate", {}, "viewer", 200),
    ("GET", '/api/v1/pipelines/ghost/trace?table=t&key={"id":1}', None, "viewer", 404),
    ("GET", "/api/v1/whoami", None, "viewer", 200),
]
RANK = {"viewer": 0, "operator": 1, "admin": 2}
CALLERS = [None, "not-a-valid-token-at-all", "viewer", "operator", "admin"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiHarness]:
    tmp = tmp_path_factory.mktemp("api-roles")
    make_source(tmp / "shop-src.db")
    h = ApiHarness(tmp, [pipeline_doc(tmp)])
    yield h
    h.close()


def expected(caller: str | None, least: str, allowed_status: int) -> int:
    if caller not in RANK:
        return 401
    return allowed_status if RANK[caller] >= RANK[least] else 403


@pytest.mark.parametrize("caller", CALLERS, ids=lambda c: c if c in RANK else f"token={c}")
@pytest.mark.parametrize(
    ("method", "path", "body", "least", "allowed"),
    ENDPOINTS,
    ids=[f"{m} {p}" for m, p, *_ in ENDPOINTS],
)
def test_role_table(
    shared: ApiHarness,
    caller: str | None,
    method: str,
    path: str,
    body: Any,
    least: str,
    allowed: int,
) -> None:
    res = shared.call(method, path, caller, json=body)
    want = expected(caller, least, allowed)
    assert res.status_code == want, res.text
    payload = res.json()
    if want >= 400:
        assert list(payload) == ["error"] and isinstance(payload["error"], str)
        assert payload["error"]
    if want == 401:
        assert res.headers["www-authenticate"] == "Bearer"
    if want == 403:
        assert payload["error"].endswith(f"needs role {least}; token {caller}-1 has {caller}")


def test_refusal_comes_before_the_body_is_read(shared: ApiHarness) -> None:
    """A viewer's malformed create is refused (403), not parsed (422)."""
    res = shared.call(
        "POST",
        "/api/v1/pipelines",
        "viewer",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert res.status_code == 403
    res = shared.call(
        "POST",
        "/api/v1/pipelines",
        "admin",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert res.status_code == 422
    assert res.json()["error"].startswith("body: invalid JSON")


def test_error_shapes(shared: ApiHarness) -> None:
    cases = [
        (shared.call("GET", "/api/v1/pipelines", None), 401, "missing API token"),
        (
            shared.call("GET", "/api/v1/pipelines", None, headers={"Authorization": "Basic eA=="}),
            401,
            "invalid API token",
        ),
        (shared.call("POST", "/api/v1/pipelines/shop/pause", "viewer"), 403, "needs role"),
        (shared.call("GET", "/api/v1/nowhere", "viewer"), 404, "Not Found"),
        (shared.call("GET", "/api/v1/pipelines/nope", "viewer"), 404, "no pipeline named 'nope'"),
        (shared.call("GET", "/api/v1/pipelines/shop/pause", "admin"), 405, "Method Not Allowed"),
        (
            shared.call("GET", "/api/v1/pipelines/shop/dlq?limit=0", "viewer"),
            422,
            "query.limit: Input should be greater than or equal to 1",
        ),
        (
            shared.call("GET", "/api/v1/pipelines/shop/dlq/abc", "viewer"),
            422,
            "path.entry_id: Input should be a valid integer",
        ),
        (
            shared.call("POST", "/api/v1/pipelines/shop/dlq/replay", "operator", json={"ids": "x"}),
            422,
            "ids: expected a list",
        ),
        (shared.call("GET", "/nowhere", None), 404, "Not Found"),
    ]
    for res, status, text in cases:
        assert res.status_code == status, (res.status_code, res.text)
        assert list(res.json()) == ["error"], res.text
        assert text in res.json()["error"], res.text


def test_each_role_does_what_it_may_for_real(tmp_path: Path, harness: list[ApiHarness]) -> None:
    make_source(tmp_path / "shop-src.db")
    api = start_api(harness, tmp_path, [pipeline_doc(tmp_path)])
    pipe = api.pipeline()
    assert wait_until(lambda: caught_up(pipe), 30)

    assert api.call("GET", "/api/v1/pipelines/shop/status", "viewer").status_code == 200
    assert api.call("POST", "/api/v1/pipelines/shop/pause", "viewer").status_code == 403
    assert pipe.alive and pipe.stats.state == "running"

    assert api.call("POST", "/api/v1/pipelines/shop/pause", "operator").status_code == 200
    assert pipe.stats.state == "paused"
    assert api.call("DELETE", "/api/v1/pipelines/shop", "operator").status_code == 403
    assert api.runtime.find("shop") is pipe
    assert api.call("POST", "/api/v1/pipelines/shop/resume", "operator").status_code == 200
    assert pipe.alive

    assert api.call("DELETE", "/api/v1/pipelines/shop", "admin").status_code == 200
    assert api.runtime.find("shop") is None and not pipe.alive

    audit = api.audit()
    assert [(e["action"], e["token"], e["role"], e["outcome"], e["status"]) for e in audit] == [
        ("pipeline.pause", "viewer-1", "viewer", "refused", 403),
        ("pipeline.pause", "operator-1", "operator", "ok", 200),
        ("pipeline.delete", "operator-1", "operator", "refused", 403),
        ("pipeline.resume", "operator-1", "operator", "ok", 200),
        ("pipeline.delete", "admin-1", "admin", "ok", 200),
    ]
    for entry in audit:
        assert entry["target"] == "pipeline shop"
        assert entry["remote"] == "testclient:50000"
        assert entry["time"].endswith("+00:00")
    text = api.audit_path.read_text()
    assert not any(token in text for token in TOKENS.values())


def test_refused_calls_are_audited_without_the_token(shared: ApiHarness) -> None:
    before = len(shared.audit())
    shared.call("GET", "/api/v1/pipelines", "a-guess-of-the-admin-token")
    shared.call("POST", "/api/v1/pipelines/shop/restart", None)
    new = shared.audit()[before:]
    assert [(e["action"], e["token"], e["outcome"], e["status"]) for e in new] == [
        ("pipeline.list", None, "refused", 401),
        ("pipeline.restart", None, "refused", 401),
    ]
    assert new[0]["error"] == "invalid API token"
    assert "a-guess" not in shared.audit_path.read_text()
    # reads by a valid token are not audit events
    shared.call("GET", "/api/v1/pipelines", "viewer")
    assert len(shared.audit()) == before + 2


def test_without_tokens_local_callers_are_admin_and_browsers_are_kept_out(
    tmp_path: Path, harness: list[ApiHarness]
) -> None:
    make_source(tmp_path / "shop-src.db")
    api = start_api(harness, tmp_path, [pipeline_doc(tmp_path)], tokens=False)
    assert api.call("GET", "/api/v1/pipelines", None).status_code == 200
    assert api.call("POST", "/api/v1/pipelines/shop/pause", None).status_code == 200
    rebinding = api.call("GET", "/api/v1/pipelines", None, headers={"Host": "evil.example"})
    assert rebinding.status_code == 403
    assert "only loopback names" in rebinding.json()["error"]
    cross = api.call(
        "POST",
        "/api/v1/pipelines/shop/resume",
        None,
        headers={"Origin": "http://evil.example"},
    )
    assert cross.status_code == 403 and "cross-origin" in cross.json()["error"]
    assert api.pipeline().stats.state == "paused"
    health = api.call("GET", "/health/ready", None, headers={"Host": "evil.example:8083"})
    assert health.status_code == 403
    assert api.call("GET", "/health/ready", None).status_code == 200
    same = api.call(
        "POST", "/api/v1/pipelines/shop/resume", None, headers={"Origin": "http://127.0.0.1"}
    )
    assert same.status_code == 200
    assert [(e["token"], e["action"], e["outcome"]) for e in api.audit()] == [
        ("local", "pipeline.pause", "ok"),
        (None, "pipeline.list", "refused"),
        (None, "pipeline.resume", "refused"),
        ("local", "pipeline.resume", "ok"),
    ]


# ---- settings: where tokens come from, what is refused -----------------------------------

LONG = "x" * 20


def test_tokens_from_config_env_variable_and_syncline_api_tokens() -> None:
    cfg = ApiConfig(
        listen="0.0.0.0:9000",
        tokens=[
            ApiTokenConfig(name="ci", role="admin", token=LONG),
            ApiTokenConfig(name="dash", role="viewer", token_env="DASH_TOKEN"),
        ],
    )
    env = {"DASH_TOKEN": "d" * 16, "SYNCLINE_API_TOKENS": f"ops:operator:{'o' * 16}:with:colons"}
    s = resolve_settings(cfg, env=env)
    assert s is not None
    assert (s.host, s.port) == ("0.0.0.0", 9000)
    assert [(t.name, t.role, t.value) for t in s.tokens] == [
        ("ci", "admin", LONG),
        ("dash", "viewer", "d" * 16),
        ("ops", "operator", "o" * 16 + ":with:colons"),
    ]
    assert LONG not in repr(s)  # tokens never show in a repr (logs, tracebacks)
    flag = resolve_settings(cfg, "127.0.0.1:0", env=env)
    assert flag is not None and (flag.host, flag.port) == ("127.0.0.1", 0)
    assert resolve_settings(None, None, env=env) is None  # no api block, no --api: no API


@pytest.mark.parametrize(
    ("cfg", "listen", "env", "message"),
    [
        (
            ApiConfig(listen="0.0.0.0:8083"),
            None,
            {},
            "the API would listen on 0.0.0.0:8083 without tokens, open to the network",
        ),
        (None, "10.1.2.3:80", {}, "without tokens, open to the network"),
        (
            ApiConfig(tokens=[ApiTokenConfig(name="a", role="admin", token="short")]),
            None,
            {},
            "API token a (api.tokens) is shorter than 16 characters",
        ),
        (
            ApiConfig(tokens=[ApiTokenConfig(name="a", role="admin", token_env="NOPE")]),
            None,
            {},
            "token a reads environment variable NOPE, which is not set",
        ),
        (
            ApiConfig(tokens=[ApiTokenConfig(name="a", role="admin", token=LONG)]),
            None,
            {"SYNCLINE_API_TOKENS": f"a:viewer:{'y' * 16}"},
            "API token name 'a' is used twice",
        ),
        (
            None,
            "127.0.0.1:1",
            {"SYNCLINE_API_TOKENS": f"a:root:{LONG}"},
            "token a has role 'root'; expected one of viewer, operator, admin",
        ),
        (None, "127.0.0.1:1", {"SYNCLINE_API_TOKENS": "just-a-token"}, "is not name:role:token"),
        (
            None,
            "127.0.0.1:1",
            {"SYNCLINE_API_TOKENS": f"a:viewer:{LONG},b:admin:{LONG}"},
            "two API tokens have the same value",
        ),
        (None, "localhost", {}, "'localhost' is not host:port"),
    ],
)
def test_settings_refused(
    cfg: ApiConfig | None, listen: str | None, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_settings(cfg, listen, env=env)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_api_block_in_the_config_file_is_validated(tmp_path: Path) -> None:
    from syncline.config import load_config

    path = tmp_path / "c.yaml"
    base = (
        "pipelines: [{name: a, source: {kind: sqlite, path: s.db, tables: [t]}, "
        "sink: {kind: sqlite, path: d.db}}]\n"
    )
    path.write_text(base + "api: {listen: '[::1]:8090', tokens: [{name: x, role: viewer}]}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: api.tokens[0]: give exactly one of token or token_env"
    path.write_text(base + "api: {listen: 'nohost', audit_log: /tmp/a.log}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "api.listen: 'nohost' is not host:port" in str(err.value)
    path.write_text(
        base + "api: {listen: '[::1]:8090', tokens: [{name: x, role: boss, token: y}]}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "api.tokens[0].role: Input should be 'viewer', 'operator' or 'admin'" in str(err.value)
    path.write_text(base + "api: {listen: '[::1]:8090'}\n")
    cfg = load_config(path)
    assert cfg.api is not None and cfg.api.audit_log == "./.syncline/audit.log"
    s = resolve_settings(cfg.api, env={})
    assert s is not None and (s.host, s.port, s.open_access) == ("::1", 8090, True)
