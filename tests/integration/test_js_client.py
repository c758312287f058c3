"""The JavaScript client (``clients/js``) end to end in real Chromium, against real server
processes and the real Redis.

The page comes from a small web server of the test's own, another origin than the realtime
server's (as a site's frontend would; ``CORS_ORIGINS`` names it), and imports the bundle the
realtime server serves, ``/static/realtime-client.js``. Its token provider asks ``/auth/ws``
with an API key (the default provider's session cookie needs a database). ``WS_TOKEN_TTL`` is
4 s, so tokens expire (and must be refreshed) during the test. (A page Playwright fulfils
itself is not used: Chromium's Local Network Access checks then block its WebSocket to
127.0.0.1.)
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from realtime.redis_functions import function_names, history_key
from tests.conftest import API_KEYS_JSON, PUBLISHER_KEY, USER_KEY, auth
from tests.integration.test_console import CHROMIUM_ARGS, chromium_or_skip
from tests.procs import Server

PAGE_PATH = "/js-client-test"
PAGE = """<!doctype html>
<meta charset="utf-8">
<title>realtime JS client test</title>
<script type="module">
import { RealtimeClient, ListenError } from "SERVER/static/realtime-client.js";

window.events = [];
window.tokens = [];
const client = new RealtimeClient({
  url: "SERVER",
  backoffInitialMs: 200,
  backoffMaxMs: 1000,
  tokenProvider: async () => {
    const resp = await fetch("SERVER/auth/ws", { method: "POST", headers: { Authorization: "Api-Key KEY" } });
    if (!resp.ok) throw new Error("/auth/ws answered " + resp.status);
    const body = await resp.json();
    window.tokens.push(body.token);
    return { token: body.token, expiresIn: body.expires_in };
  },
});
for (const name of ["message", "gap", "authRevoked", "reconnecting", "connected", "disconnected", "error"]) {
  client.on(name, (event) => {
    const { error, ...rest } = event;
    window.events.push({ type: name, ...rest, ...(error ? { error: String(error) } : {}) });
  });
}
window.client = client;
window.listenResult = (topics) =>
  client.listen(topics).then(
    () => ({ ok: true }),
    (e) => ({ ok: false, name: e.name, code: e.code, typed: e instanceof ListenError }),
  );
window.ready = true;
</script>
"""
HISTORY_TOPIC = "dream:update.js"
SCOPED_TOPIC = "remote-control:command.7"


def messages(events: list[dict[str, Any]], topic: str) -> list[tuple[int, str, str]]:
    return [(e["offset"], e["epoch"], e["message"]) for e in events if e["type"] == "message" and e["topic"] == topic]


class Publisher:
    """Publishes into history through the server's Redis Function (works while no server runs)."""

    def __init__(self, client: aioredis.Redis, channel: str) -> None:
        self.client = client
        self.channel = channel
        self.sent: dict[str, list[str]] = {HISTORY_TOPIC: [], SCOPED_TOPIC: []}

    async def publish(self, topic: str) -> None:
        message = f"{topic}#{len(self.sent[topic]) + 1}"
        fn = function_names(self.channel).publish
        await self.client.fcall(fn, 1, history_key(self.channel, topic), topic, message)  # type: ignore[misc]
        self.sent[topic].append(message)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    chromium = chromium_or_skip()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        instance = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            yield instance
        finally:
            await instance.close()


@pytest.fixture
async def page_site() -> AsyncIterator[str]:
    """A web server on a free loopback port that serves the test page for any realtime
    server (``?server=<url>``); yields its origin."""

    async def handler(request: web.Request) -> web.Response:
        body = PAGE.replace("SERVER", request.query["server"]).replace("KEY", USER_KEY)
        return web.Response(text=body, content_type="text/html")

    async def readme_page(request: web.Request) -> web.Response:
        body = readme_snippet().replace("http://localhost:4445", request.query["server"])
        return web.Response(text=body, content_type="text/html")

    app = web.Application()
    app.router.add_get(PAGE_PATH, handler)
    app.router.add_get("/page.html", readme_page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


def readme_snippet() -> str:
    """The browser page of the README's "Try it"."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    found = re.search(r"```html\n(.*?)```", readme, re.DOTALL)
    assert found is not None
    return found.group(1)


async def open_page(browser: Any, origin: str, server: Server, errors: list[str]) -> Any:
    page = await browser.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{origin}{PAGE_PATH}?server={server.url}")
    await page.wait_for_function("window.ready === true")
    return page


async def wait_messages(page: Any, topic: str, count: int, timeout: float = 15_000) -> None:
    await page.wait_for_function(
        "([topic, n]) => window.events.filter((e) => e.type === 'message' && e.topic === topic).length >= n",
        arg=[topic, count],
        timeout=timeout,
    )


def server_env(redis_url: str, channel: str, origin: str) -> dict[str, str]:
    return {
        "CORS_ORIGINS": origin,
        "API_KEYS": API_KEYS_JSON,
        "REDIS_URL": redis_url,
        "REDIS_CHANNEL": channel,
        "SHUTDOWN_GRACE": "0.5",
        "WS_TOKEN_TTL": "4",
        "CONNECT_RATE_PER_IP": "0",
        "LISTEN_RATE": "0",
    }


@pytest.mark.slow
async def test_page_listens_recovers_across_a_restart_and_refreshes_tokens(
    spawn: type[Server], redis_client: aioredis.Redis, channel: str, browser: Any, redis_url: str, page_site: str
) -> None:
    env = server_env(redis_url, channel, page_site)
    server = spawn(env=env)
    errors: list[str] = []
    page = await open_page(browser, page_site, server, errors)
    publisher = Publisher(redis_client, channel)

    assert await page.evaluate("listenResult", [HISTORY_TOPIC, SCOPED_TOPIC]) == {"ok": True}
    for _ in range(3):
        await publisher.publish(HISTORY_TOPIC)
        await publisher.publish(SCOPED_TOPIC)
    await wait_messages(page, HISTORY_TOPIC, 3)
    await wait_messages(page, SCOPED_TOPIC, 3)

    # a restart on the same port: RECONNECT, then down while publications go on into history
    assert await asyncio.to_thread(server.stop) == 0
    for _ in range(3):
        await publisher.publish(HISTORY_TOPIC)
        await publisher.publish(SCOPED_TOPIC)
    server = await asyncio.to_thread(spawn, env=env, port=server.port)
    await page.wait_for_function(
        "window.events.filter((e) => e.type === 'connected' && e.reconnected).length >= 1", timeout=15_000
    )
    await wait_messages(page, HISTORY_TOPIC, 6)

    # live again; tokens (4 s) expire meanwhile and are refreshed: nothing is missed
    tokens_before = len(await page.evaluate("window.tokens"))
    deadline = time.monotonic() + 40  # 3 refreshes of 4 s tokens take ~6-8 s
    while len(await page.evaluate("window.tokens")) < tokens_before + 3:
        assert time.monotonic() < deadline, await page.evaluate("window.events")  # never loop forever
        await publisher.publish(SCOPED_TOPIC)
        await publisher.publish(HISTORY_TOPIC)
        await asyncio.sleep(0.25)
    await wait_messages(page, HISTORY_TOPIC, len(publisher.sent[HISTORY_TOPIC]))
    await wait_messages(page, SCOPED_TOPIC, len(publisher.sent[SCOPED_TOPIC]))

    events: list[dict[str, Any]] = await page.evaluate("window.events")
    for topic, sent in publisher.sent.items():
        got = messages(events, topic)
        assert [m for _, _, m in got] == sent, topic  # every one, once, in order
        assert [o for o, _, _ in got] == list(range(1, len(sent) + 1))
        assert len({e for _, e, _ in got}) == 1
    kinds = {e["type"] for e in events}
    assert "gap" not in kinds and "authRevoked" not in kinds and "error" not in kinds, events
    assert [e["code"] for e in events if e["type"] == "disconnected"][:1] == [4000]  # left on RECONNECT
    assert await page.evaluate("client.duplicatesDropped") >= 0
    assert errors == []


async def test_a_page_cannot_listen_to_another_users_topic(
    spawn: type[Server], channel: str, browser: Any, redis_url: str, page_site: str
) -> None:
    server = spawn(env=server_env(redis_url, channel, page_site))
    errors: list[str] = []
    page = await open_page(browser, page_site, server, errors)
    refused = await page.evaluate("listenResult", ["remote-control:command.8"])
    assert refused == {"ok": False, "name": "ListenError", "code": "ERR_BADAUTH", "typed": True}
    assert await page.evaluate("listenResult", [SCOPED_TOPIC]) == {"ok": True}  # its own: fine
    assert await page.evaluate("client.topics") == [SCOPED_TOPIC]
    assert errors == []


async def test_the_readme_browser_snippet_works(spawn: type[Server], browser: Any, page_site: str) -> None:
    from playwright.async_api import expect

    server = spawn(env={"API_KEYS": API_KEYS_JSON})  # the memory broker: public topics need no token
    page = await browser.new_page()
    await page.goto(f"{page_site}/page.html?server={server.url}")
    log = page.locator("#log")
    await expect(log).to_contain_text("listening to dream:update.abc")
    async with aiohttp.ClientSession() as http:
        body = {"topic": "dream:update.abc", "message": {"status": "processed"}}
        resp = await http.post(server.url + "/publish", json=body, headers=auth(PUBLISHER_KEY))
        assert resp.status == 202
    await expect(log).to_contain_text('dream:update.abc: {"status":"processed"}')
