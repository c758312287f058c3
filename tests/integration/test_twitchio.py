"""A real Twitch PubSub client against a real server: twitchio 2.x's ``twitchio.ext.pubsub``.

Issue 16 added ``offset`` and ``epoch`` to MESSAGE on topics that keep history; its done
criterion is that a Twitch client still receives MESSAGEs unchanged. twitchio 2.x (the last
major version with PubSub) is such a client: its ``PubSubWebsocket`` connects to the class
constant ``ENDPOINT`` (patched here to our ``/ws``), sends ``LISTEN`` with the topics'
``.present`` strings and their ``auth_token``, answers a RESPONSE through ``event_pubsub_nonce``
(``event_pubsub_error`` when ``error`` is set), and on MESSAGE parses ``data.message`` as JSON
and dispatches ``event_pubsub_message(PubSubMessage(topic, parsed))`` to user code. It then
looks the topic's prefix up among its six Twitch topics for a typed event; for any other topic
(ours) that lookup raises ``KeyError`` inside its handler task, after the generic event was
dispatched (asyncio logs "Task exception was never retrieved"). That is the same for topics with
and without history, and would be for any non-Twitch name. Its keep-alive PING expects a frame of
type PONG, and every ``PubSubPool.subscribe_topics`` call opens a new connection (its
``_find_node`` never reuses one), so the second test subscribes on the node itself.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from tests import procs
from tests.conftest import API_KEYS_JSON, USER_KEY, auth, listen, recv
from tests.integration.test_client import publish

try:
    import twitchio  # type: ignore[import-untyped]
    from twitchio.ext import pubsub  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - the dev extra installs it
    if os.environ.get("CI"):
        pytest.fail("twitchio is not installed (CI is set: `pip install -e '.[dev]'` installs it)", pytrace=False)
    pytest.skip("twitchio is not installed (the dev extra has it)", allow_module_level=True)

HISTORY_TOPIC = "dream:update.abc"  # default policy: public, keeps history (offset, epoch)
PLAIN_TOPIC = "channel:update.abc"  # default policy: public, no history (the exact Twitch shape)
PAYLOADS = {
    HISTORY_TOPIC: {"status": "processed", "title": "rêve ✨", "n": 1, "tags": ["a", "b"]},
    PLAIN_TOPIC: {"title": "live", "n": 2, "nested": {"ok": True, "x": None}},
}


class Recorder(twitchio.Client):  # type: ignore[misc]
    """A twitchio client that queues what its PubSub pool dispatches to user code."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(token="not-used-no-irc", loop=loop)
        self.messages: asyncio.Queue[Any] = asyncio.Queue()
        self.responses: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.pongs: asyncio.Queue[None] = asyncio.Queue()
        self.pool = pubsub.PubSubPool(self)  # twitchio's documented set-up, as `client.pubsub`

    async def event_pubsub_message(self, message: Any) -> None:
        await self.messages.put(message)

    async def event_pubsub_nonce(self, response: dict[str, Any]) -> None:
        await self.responses.put(response)

    async def event_pubsub_error(self, response: dict[str, Any]) -> None:
        await self.responses.put(response)

    async def event_pubsub_pong(self) -> None:
        await self.pongs.put(None)


@pytest.fixture
async def recorder(spawn: type[procs.Server], monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[str, Recorder]]:
    """A server (memory broker, default policy) and a twitchio client whose PubSub endpoint is it."""
    server = spawn(env={"API_KEYS": API_KEYS_JSON})
    monkeypatch.setattr(pubsub.PubSubWebsocket, "ENDPOINT", server.url.replace("http", "ws", 1) + "/ws")
    client = Recorder(asyncio.get_running_loop())
    yield server.url, client
    for node in client.pool._pool:  # twitchio has no pool close; its nodes own their sessions
        await node.disconnect()
        if node.session is not None:
            await node.session.close()


async def ws_token(url: str) -> str:
    async with aiohttp.ClientSession() as http:
        resp = await http.post(url + "/auth/ws", headers=auth(USER_KEY))
        assert resp.status == 200, await resp.text()
        token: str = (await resp.json())["token"]
        return token


@pytest.mark.parametrize("with_token", [True, False], ids=["ws-token", "no-token"])
async def test_twitchio_receives_messages_unchanged(recorder: tuple[str, Recorder], with_token: bool) -> None:
    url, client = recorder
    token = await ws_token(url) if with_token else None
    topics = [pubsub.Topic(name, []) for name in PAYLOADS]  # `.present` is the name itself
    for topic in topics:
        topic.token = token
    await client.pool.subscribe_topics(topics)
    response = await asyncio.wait_for(client.responses.get(), 5)
    assert response["error"] == "" and response["nonce"] == topics[0]._nonce, response

    # a plain listener beside it: the server really sends offset/epoch on the history topic only
    async with aiohttp.ClientSession() as http, http.ws_connect(url.replace("http", "ws", 1) + "/ws") as raw:
        assert (await listen(raw, list(PAYLOADS)))["error"] == ""
        for name, payload in PAYLOADS.items():
            await publish(url, name, payload)
        frames = {frame["data"]["topic"]: frame["data"] for frame in [await recv(raw), await recv(raw)]}
    assert set(frames[HISTORY_TOPIC]) == {"topic", "message", "offset", "epoch"}
    assert set(frames[PLAIN_TOPIC]) == {"topic", "message"}

    received = {}
    for _ in PAYLOADS:
        message = await asyncio.wait_for(client.messages.get(), 5)
        assert isinstance(message, pubsub.PubSubMessage)
        received[message.topic] = message._data  # the parsed `data.message`; twitchio keeps it here
    assert received == PAYLOADS
    for name, data in frames.items():  # the Twitch fields on the wire: `message` a JSON string
        assert orjson.loads(data["message"]) == PAYLOADS[name]

    # twitchio's keep-alive (every 240 s; sent now): our PONG is what its handler expects
    await client.pool._pool[0].send({"type": "PING"})
    await asyncio.wait_for(client.pongs.get(), 5)


async def test_twitchio_topic_helpers_get_an_error_response(recorder: tuple[str, Recorder]) -> None:
    """twitchio's own topic helpers build Twitch names, which our policy refuses: an error RESPONSE
    that twitchio hands to ``event_pubsub_error``, and the connection stays usable."""
    url, client = recorder
    await client.pool.subscribe_topics([pubsub.channel_points(None)[123]])  # "channel-points-channel-v1.123"
    response = await asyncio.wait_for(client.responses.get(), 5)
    assert response["type"] == "RESPONSE" and response["error"] == "ERR_BADTOPIC", response
    await client.pool._pool[0].subscribe_topics([pubsub.Topic(PLAIN_TOPIC, [])])
    assert (await asyncio.wait_for(client.responses.get(), 5))["error"] == ""
    await publish(url, PLAIN_TOPIC, {"after": "error"})
    message = await asyncio.wait_for(client.messages.get(), 5)
    assert (message.topic, message._data) == (PLAIN_TOPIC, {"after": "error"})
