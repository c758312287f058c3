"""The live console: admin-only stats, static assets, and end to end in headless Chromium."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from realtime.settings import parse_api_keys
from tests.conftest import API_KEYS_JSON, PUBLISHER_KEY, USER_KEY, AppFactory, auth, listen

ADMIN_KEY = "admin-key-0123456789abcdef"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def keys_with_admin() -> Any:
    entries = orjson.loads(API_KEYS_JSON)
    entries.append({"userId": "ops", "apiKey": ADMIN_KEY, "scopes": ["realtime:admin", "realtime:publish"]})
    return parse_api_keys(orjson.dumps(entries).decode())


async def console_app(make_client: AppFactory) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await make_client(api_keys=keys_with_admin())
    return client


async def test_stats_need_the_admin_scope(make_client: AppFactory) -> None:
    client = await console_app(make_client)
    assert (await client.get("/console/stats")).status == 401
    forbidden = await client.get("/console/stats", headers=auth(USER_KEY))
    assert forbidden.status == 403
    assert (await forbidden.json())["missing_scopes"] == ["realtime:admin"]
    async with client.ws_connect("/ws") as ws:
        await listen(ws, ["dream:update.a"])
        resp = await client.get("/console/stats", headers=auth(ADMIN_KEY))
        assert resp.status == 200
        stats = await resp.json()
    assert stats["connections"] == 1 and stats["topics"] == 1
    assert stats["listens"]["dream:update"] == 1
    assert stats["broker"] == {"kind": "memory", "ready": True}
    assert "remote-control:command" in stats["topic_names"]
    assert isinstance(stats["delivered_per_second"], float)


async def test_page_and_assets_are_static_with_a_strict_csp(make_client: AppFactory) -> None:
    client = await console_app(make_client)
    for path, kind in (
        ("/console", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
    ):
        resp = await client.get(path)
        assert resp.status == 200, path
        assert resp.content_type == kind
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        text = await resp.text()
        assert "http://" not in text and "https://" not in text  # nothing from a CDN
        assert ADMIN_KEY not in text


async def test_the_js_client_is_served_to_any_origin(make_client: AppFactory) -> None:
    client = await console_app(make_client)
    resp = await client.get("/static/realtime-client.js", headers={"Origin": "https://app.example"})
    assert resp.status == 200 and resp.content_type == "text/javascript"
    assert resp.headers["Access-Control-Allow-Origin"] == "*"  # module scripts are fetched with CORS
    text = await resp.text()
    assert "export { RealtimeClient" in text
    console_js = await (await client.get("/console/console.js")).text()
    assert 'from "/static/realtime-client.js"' in console_js  # one client, not two


def chromium_or_skip() -> str:
    """Chromium's path; fails under CI when it (or Playwright) is missing, skips otherwise."""
    problem = None
    if not os.path.exists(CHROMIUM):
        problem = f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does it)"
    elif not _playwright_importable():
        problem = "playwright is not installed (pip install -e '.[dev]')"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem + " (CI is set: the browser test must not skip)")
        pytest.skip(problem)
    return CHROMIUM


def _playwright_importable() -> bool:
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.slow
async def test_console_end_to_end_in_chromium(make_client: AppFactory, tmp_path: Path) -> None:
    chromium = chromium_or_skip()
    from playwright.async_api import async_playwright, expect

    client = await console_app(make_client)
    url = str(client.make_url("/console"))
    errors: list[str] = []
    async with client.ws_connect("/ws") as other, async_playwright() as pw:
        await listen(other, ["dream:update.console"])  # another listener, for the counts
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            await page.goto(url)
            await page.fill("#api-key", ADMIN_KEY)
            await page.click("#login-form button[type=submit]")
            await expect(page.locator("#app")).to_be_visible()
            await expect(page.locator("#login-form")).to_be_hidden()
            await expect(page.locator("#stat-broker")).to_contain_text("memory")

            await page.fill("#listen-topic", "dream:update.console")
            await page.click("#listen-form button[type=submit]")
            await expect(page.locator("#listen-status")).to_have_text("listening")
            await expect(page.locator("#listening li")).to_have_text(["dream:update.console"])
            await expect(page.locator("#stat-connections")).to_have_text("2", timeout=5000)

            await page.fill("#publish-topic", "dream:update.console")
            await page.fill("#publish-message", '{"status": "processed", "from": "the console"}')
            await page.check("#publish-json")
            await page.click("#publish-form button[type=submit]")
            await expect(page.locator("#publish-status")).to_have_text("published to dream:update.console")
            message = page.locator("#messages li.message").first
            await expect(message).to_contain_text('{"status":"processed","from":"the console"}')
            await expect(message.locator(".topic")).to_have_text("dream:update.console")

            # a message published elsewhere shows up too
            resp = await client.post(
                "/publish",
                json={"topic": "dream:update.console", "message": "from a backend"},
                headers=auth(PUBLISHER_KEY),
            )
            assert resp.status == 202
            await expect(page.locator("#messages li.message").first).to_contain_text("from a backend")
            await expect(page.locator("#stat-delivered-rate")).not_to_have_text("-")
            assert await page.evaluate("sessionStorage.getItem('realtime.console.apiKey')") == ADMIN_KEY
            shot = Path(os.environ.get("CONSOLE_SCREENSHOT") or tmp_path / "console.png")
            await page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            await browser.close()
    assert errors == []


async def test_wrong_key_shows_an_error_in_chromium(make_client: AppFactory) -> None:
    chromium = chromium_or_skip()
    from playwright.async_api import async_playwright, expect

    client = await console_app(make_client)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = await browser.new_page()
            await page.goto(str(client.make_url("/console")))
            await page.fill("#api-key", USER_KEY)  # valid, but not an admin
            await page.click("#login-form button[type=submit]")
            await expect(page.locator("#login-error")).to_contain_text("realtime:admin")
            await expect(page.locator("#app")).to_be_hidden()
            assert await page.evaluate("sessionStorage.getItem('realtime.console.apiKey')") is None
        finally:
            await browser.close()
