"""The web dashboard end to end: ``syncline run --api`` in its own process, the page in
headless Chromium (Playwright driving Debian's ``/usr/bin/chromium``; scripts/system-deps.sh
installs it), clicked through as a viewer and as an operator.

Plus, without a browser: the static files and their headers, ``/`` sending browsers to the
dashboard, ``whoami``, and the trace endpoint's answers.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api_helpers import (
    GUARD,
    TOKENS,
    ApiHarness,
    harness,
    make_source,
    pipeline_doc,
    rows,
    sql,
    start_api,
)
from e2e_helpers import REPO, wait_until

__all__ = ["harness"]  # the fixture, used by name

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HAS_MONITORING = importlib.util.find_spec("syncline.monitoring") is not None
DOCS_SCREENSHOT = REPO / "docs" / "img" / "dashboard.png"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- without a browser


def test_static_files_are_served_without_a_token(tmp_path: Path, harness: list[ApiHarness]) -> None:
    make_source(tmp_path / "shop-src.db")
    api = start_api(harness, tmp_path, [pipeline_doc(tmp_path)])
    page = api.call("GET", "/dashboard/", role=None)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="app.js">' in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    for name, kind in (
        ("app.js", "javascript"),
        ("api.js", "javascript"),
        ("chart.js", "javascript"),
        ("dom.js", "javascript"),
        ("style.css", "text/css"),
    ):
        res = api.call("GET", f"/dashboard/{name}", role=None)
        assert res.status_code == 200 and kind in res.headers["content-type"], name
    assert "innerHTML" not in api.call("GET", "/dashboard/app.js", role=None).text
    assert api.call("GET", "/dashboard/missing.js", role=None).status_code == 404

    browser = api.call(
        "GET", "/", role=None, headers={"Accept": "text/html"}, follow_redirects=False
    )
    assert browser.status_code == 307 and browser.headers["location"] == "/dashboard/"
    machine = api.call("GET", "/", role=None).json()
    assert machine["dashboard"] == "/dashboard/" and machine["api"] == "/api/v1"
    # the JSON API the page calls still needs a token
    assert api.call("GET", "/api/v1/pipelines", role=None).status_code == 401


def test_whoami_names_the_token_and_its_role(tmp_path: Path, harness: list[ApiHarness]) -> None:
    make_source(tmp_path / "shop-src.db")
    api = start_api(harness, tmp_path, [pipeline_doc(tmp_path)])
    for role in ("viewer", "operator", "admin"):
        res = api.call("GET", "/api/v1/whoami", role)
        assert res.json() == {"name": f"{role}-1", "role": role, "open_access": False}
    assert api.call("GET", "/api/v1/whoami", role=None).status_code == 401
    assert api.audit() == [
        {**api.audit()[0], "action": "whoami", "outcome": "refused", "status": 401}
    ]


def test_whoami_without_tokens_is_local_admin(tmp_path: Path, harness: list[ApiHarness]) -> None:
    make_source(tmp_path / "shop-src.db")
    api = start_api(harness, tmp_path, [pipeline_doc(tmp_path)], tokens=False)
    res = api.call("GET", "/api/v1/whoami", role=None)
    assert res.json() == {"name": "local", "role": "admin", "open_access": True}


def test_trace_says_how_to_turn_monitoring_on(tmp_path: Path, harness: list[ApiHarness]) -> None:
    make_source(tmp_path / "shop-src.db")
    api = start_api(harness, tmp_path, [pipeline_doc(tmp_path)])
    res = api.call("GET", '/api/v1/pipelines/shop/trace?table=orders&key={"id":1}', "viewer")
    assert res.status_code == (409 if HAS_MONITORING else 404)
    assert res.json() == {
        "error": "monitoring is not enabled for pipeline shop (set monitoring.enabled: true)"
    }
    missing = api.call("GET", '/api/v1/pipelines/nope/trace?table=orders&key={"id":1}', "viewer")
    assert missing.status_code == 404
    assert missing.json() == {"error": "no pipeline named 'nope'"}
    no_key = api.call("GET", "/api/v1/pipelines/shop/trace?table=orders", "viewer")
    assert no_key.status_code == 422 and no_key.json()["error"].startswith("query.key")
    assert api.call("GET", "/api/v1/pipelines/shop/trace?table=t&key=1", role=None).status_code == (
        401
    )


# ---------------------------------------------------------------- in Chromium


@pytest.fixture
def chromium() -> Iterator[Any]:
    """A headless Chromium from Debian (no browser download: ``playwright install`` is never
    run). A missing one fails the test: it says what to install instead of skipping."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} not found: the dashboard test needs Debian's chromium "
            "(scripts/system-deps.sh installs it; or apt-get install chromium)",
            pytrace=False,
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: pip install -e '.[dev]'", pytrace=False)
    profile = tempfile.mkdtemp(prefix="syncline-chromium-")
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                profile,
                executable_path=str(CHROMIUM),
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": 1360, "height": 900},
            )
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


class Writer(threading.Thread):
    """New orders at a steady pace, so the throughput chart has something to draw."""

    def __init__(self, db: Path) -> None:
        super().__init__(daemon=True)
        self.db = db
        self.stop = threading.Event()
        self.written = 0

    def run(self) -> None:
        next_id = 1000
        while not self.stop.wait(0.05) and self.written < 5000:
            sql(self.db, f"INSERT INTO orders VALUES ({next_id}, 1), ({next_id + 1}, 1)")
            next_id += 2
            self.written += 2


def _config(tmp: Path) -> Path:
    def pipeline(name: str, table: str, extra: str = "") -> str:
        return f"""
  - name: {name}
    source: {{kind: sqlite, path: {tmp / f"{name}-src.db"}, tables: [{table}]}}
    transport: {{path: {tmp / f"{name}-log"}, partitions: 2, fsync: false}}
    sink: {{kind: sqlite, path: {tmp / f"{name}-dst.db"}{extra}}}
    batch: {{max_wait_ms: 5}}
    apply_in: thread
    retry: {{initial_delay_ms: 10, max_delay_ms: 50}}
    dlq: {{max_attempts: 2}}"""

    manual = ", tables: {main.items: {conflict: {strategy: manual}}}"
    monitoring = (
        f"monitoring: {{enabled: true, store: {{path: {tmp / 'monitoring.db'}}}}}\n"
        if HAS_MONITORING
        else ""
    )
    text = (
        "pipelines:"
        + pipeline("shop", "orders")
        + pipeline("catalog", "items", manual)
        + f"""
api:
  audit_log: {tmp / "audit.log"}
  tokens:
    - {{name: wallboard, role: viewer, token: {TOKENS["viewer"]}}}
    - {{name: oncall, role: operator, token: {TOKENS["operator"]}}}
"""
        + monitoring
    )
    path = tmp / "syncline.yaml"
    path.write_text(text)
    return path


def test_dashboard_in_chromium(tmp_path: Path, chromium: Any) -> None:
    from playwright.sync_api import expect

    shop_src, shop_dst = make_source(tmp_path / "shop-src.db"), tmp_path / "shop-dst.db"
    sql(shop_dst, "CREATE TABLE orders (id INTEGER PRIMARY KEY, qty INTEGER NOT NULL)")
    sql(shop_dst, GUARD.format(op="INSERT"), GUARD.format(op="UPDATE"))
    items = "CREATE TABLE items (id INTEGER PRIMARY KEY, qty INTEGER NOT NULL)"
    cat_src, cat_dst = tmp_path / "catalog-src.db", tmp_path / "catalog-dst.db"
    sql(cat_src, items, "INSERT INTO items VALUES (1, 1), (2, 2)")

    log = tmp_path / "run.log"
    env = {**os.environ, "SYNCLINE_API_TOKENS": ""}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "syncline",
                "run",
                str(_config(tmp_path)),
                "--api",
                "127.0.0.1:0",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
        )
    writer = Writer(shop_src)
    try:
        assert wait_until(lambda: "management API on" in log.read_text(), 30), log.read_text()
        found = re.search(r"management API on (http://127\.0\.0\.1:\d+)", log.read_text())
        assert found is not None
        base = found.group(1)
        assert wait_until(lambda: len(rows(shop_dst)) == 5 and len(rows(cat_dst, ITEMS)) == 2, 30)

        # two dead letters in shop (the target refuses negative quantities) ...
        sql(
            shop_src,
            "UPDATE orders SET qty = -2 WHERE id = 2",
            "UPDATE orders SET qty = -4 WHERE id = 4",
        )
        # ... and a parked conflict in catalog (a local change in its target)
        sql(cat_dst, "UPDATE items SET qty = 200 WHERE id = 2")
        sql(cat_src, "UPDATE items SET qty = 21 WHERE id = 2")
        writer.start()

        page = chromium.new_page()
        page.on("dialog", lambda dialog: dialog.accept())  # the purge confirmation
        script_errors: list[str] = []
        page.on("pageerror", lambda exc: script_errors.append(str(exc)))
        failed: list[str] = []  # requests answered >= 400 other than the refusals we provoke
        page.on(
            "response",
            lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None,
        )
        page.goto(base + "/")
        assert page.url == base + "/dashboard/"

        # ---- as a viewer: everything shows, actions are refused with a clear reason
        expect(page.locator("#login")).to_be_visible()
        page.fill("#token", TOKENS["viewer"])
        page.click("#login-form button[type=submit]")
        expect(page.locator("#who")).to_have_text("wallboard · viewer")
        shop = page.locator('article[data-pipeline="shop"]')
        catalog = page.locator('article[data-pipeline="catalog"]')
        expect(shop.locator(".badge")).to_have_text("running", timeout=15_000)
        expect(catalog.locator(".badge")).to_have_text("running")
        expect(shop.locator(".kinds")).to_have_text("sqlite → sqlite")
        throughput = shop.locator("[data-chart=throughput] path.line")
        page.wait_for_function(
            "el => (el.getAttribute('d') || '').split('L').length >= 4",
            arg=throughput.element_handle(),
            timeout=15_000,
        )
        lag_line = shop.locator("[data-chart=lag] path.line").get_attribute("d") or ""
        assert lag_line.startswith("M") and "L" in lag_line
        expect(shop.locator(".position")).to_contain_text("seq")

        dead = page.locator('#dlq-table tr[data-status="dead"]')
        expect(dead).to_have_count(2, timeout=20_000)
        expect(page.locator("#dlq-table")).to_contain_text("qty must not be negative")
        # the two keys fail in different partitions: their entries' order may vary
        key2 = dead.filter(has_text='{"id":2}')
        key4 = dead.filter(has_text='{"id":4}')
        key2.locator("button", has_text="Replay").click()
        banner = page.locator("#banner")
        expect(banner).to_contain_text(
            re.compile(r"your token is viewer: replay entry \d needs operator")
        )
        expect(banner).to_contain_text("dlq.replay needs role operator; token wallboard has viewer")
        shop.locator("button", has_text="Pause").click()
        expect(banner).to_contain_text("your token is viewer: pause shop needs operator")
        expect(shop.locator(".badge")).to_have_text("running")
        expect(dead).to_have_count(2)

        # ---- as an operator
        page.click("#signout")
        expect(page.locator("#login")).to_be_visible()
        page.fill("#token", TOKENS["operator"])
        page.click("#login-form button[type=submit]")
        expect(page.locator("#who")).to_have_text("oncall · operator")
        expect(dead).to_have_count(2, timeout=10_000)

        page.fill("#trace-table", "orders")
        page.fill("#trace-key", '{"id": 2}')
        page.click("#trace-form button[type=submit]")
        results = page.locator("#trace-results")
        if HAS_MONITORING:
            newest = results.locator(".trace-record").first  # the update, then the snapshot read
            expect(newest).to_have_attribute("data-status", "dead_lettered", timeout=10_000)
            for stage in ("committed", "captured", "published", "dead_lettered"):
                expect(newest.locator(f'li[data-stage="{stage}"]')).to_have_count(1)
            expect(newest).to_contain_text("qty must not be negative")
        else:
            expect(results).to_contain_text(
                "monitoring is not enabled for pipeline shop (set monitoring.enabled: true)"
            )

        # the charts were reset at sign-out: let them gather a few samples for the picture
        page.wait_for_function(
            "el => (el.getAttribute('d') || '').split('L').length >= 6",
            arg=throughput.element_handle(),
            timeout=20_000,
        )
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        png = shot.read_bytes()
        assert png.startswith(PNG_MAGIC) and len(png) > 20_000
        if os.environ.get("SYNCLINE_UPDATE_SCREENSHOT"):
            DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, DOCS_SCREENSHOT)

        catalog.locator("button", has_text="Details").click()
        conflict = page.locator("#conflicts-table tbody tr")
        expect(conflict).to_have_count(1, timeout=10_000)
        expect(conflict).to_contain_text('{"id":2}')

        conflict.locator("button", has_text="Apply incoming").click()
        expect(banner).to_contain_text("Conflict 1 resolved with the incoming row")
        expect(page.locator("#conflicts")).to_contain_text("No parked conflicts")
        assert rows(cat_dst, ITEMS)[1] == (2, 21)

        shop.locator("button", has_text="Details").click()
        expect(dead).to_have_count(2, timeout=10_000)
        sql(shop_dst, "DROP TRIGGER no_negative_UPDATE", "DROP TRIGGER no_negative_INSERT")
        key2.locator("button", has_text="Replay").click()
        expect(banner).to_contain_text("Replay of 1 entry: 1 replayed")
        expect(dead).to_have_count(1)
        key4.locator("button", has_text="Purge").click()
        expect(banner).to_contain_text("Purged 1 entry")
        expect(page.locator("#dlq")).to_contain_text("No dead letters")
        assert rows(shop_dst, "SELECT qty FROM orders WHERE id IN (2, 4) ORDER BY id") == [
            (-2,),
            (4,),
        ]

        shop.locator("button", has_text="Pause").click()
        expect(shop.locator(".badge")).to_have_text("paused", timeout=15_000)
        applied = len(rows(shop_dst))
        expect(shop.locator("button", has_text="Pause")).to_be_disabled()
        shop.locator("button", has_text="Resume").click()
        expect(shop.locator(".badge")).to_have_text("running", timeout=15_000)
        assert wait_until(lambda: len(rows(shop_dst)) > applied, 15)
        shop.locator("button", has_text="Restart").click()
        expect(banner).to_contain_text("shop: restarted from the stored positions")
        expect(shop.locator(".badge")).to_have_text("running", timeout=15_000)
        if HAS_MONITORING:
            page.click("#trace-form button[type=submit]")  # the replay applied it
            newest = results.locator(".trace-record").first
            expect(newest).to_have_attribute("data-status", "applied", timeout=10_000)
            expect(newest.locator('li[data-stage="applied"]')).to_contain_text("replay")

        page.click("#signout")
        expect(page.locator("#login")).to_be_visible()
        assert page.evaluate("sessionStorage.length") == 0
        assert script_errors == []
        refused = ["401 /api/v1/whoami", "403 /api/v1/pipelines/shop/dlq/replay"]
        refused += ["403 /api/v1/pipelines/shop/pause"]
        refused += [] if HAS_MONITORING else ["404 /api/v1/pipelines/shop/trace"]
        assert [re.sub(r"http://[^/]+|\?.*", "", f) for f in failed] == refused
    finally:
        writer.stop.set()
        if writer.is_alive():
            writer.join(5)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    text = log.read_text()
    assert code == 0, text
    assert TOKENS["viewer"] not in text and TOKENS["operator"] not in text
    audit = [line for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert any('"dlq.replay"' in a and '"refused"' in a and '"wallboard"' in a for a in audit)
    assert any('"conflicts.resolve"' in a and '"ok"' in a and '"oncall"' in a for a in audit)


ITEMS = "SELECT id, qty FROM items ORDER BY id"
