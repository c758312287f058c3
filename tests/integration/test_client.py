"""The client SDK against real servers (in-process and ``realtime serve`` processes), and
``realtime listen`` as a subprocess."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from http_api.appkeys import NODE
from realtime.backoff import backoff_delay
from realtime.client import (
    ClientError,
    Disconnected,
    Event,
    ListenRefused,
    RealtimeClient,
    TokenRefused,
    refresh_deadline,
    token_expiry,
)
from realtime.redis_broker import RedisBroker
from tests import procs
from tests.conftest import API_KEYS_JSON, PUBLISHER_KEY, USER_KEY, AppFactory, auth, kill_subscriber, wait_for

FAST = {"backoff_initial": 0.05, "backoff_max": 0.4, "response_timeout": 3.0}
NO_DB = {"DATABASE_URL": "none"}  # the realtime core only: no embedded PostgreSQL per process


async def next_event(client: RealtimeClient, timeout: float = 5.0) -> Event:
    return await asyncio.wait_for(anext(client), timeout)


async def publish(url: str, topic: str, message: object) -> None:
    async with aiohttp.ClientSession() as http:
        resp = await http.post(url + "/publish", json={"topic": topic, "message": message}, headers=auth(PUBLISHER_KEY))
        assert resp.status == 202, await resp.text()


def base_url(client: Any) -> str:
    return str(client.make_url("")).rstrip("/")


def test_backoff_doubles_is_jittered_and_capped() -> None:
    assert backoff_delay(0, 1.0, 120.0, lambda: 0.0) == 0.5
    assert backoff_delay(0, 1.0, 120.0, lambda: 0.999) == pytest.approx(0.9995)
    assert backoff_delay(3, 1.0, 120.0, lambda: 1.0) == 8.0
    assert backoff_delay(50, 1.0, 120.0, lambda: 1.0) == 120.0  # capped at 2 minutes
    assert backoff_delay(50, 1.0, 120.0, lambda: 0.0) == 60.0


def test_token_expiry_reads_exp_without_verifying() -> None:
    body = base64.urlsafe_b64encode(orjson.dumps({"exp": 1234})).decode().rstrip("=")
    assert token_expiry(f"e30.{body}.sig") == 1234.0
    assert token_expiry("not-a-jwt") is None


def test_refresh_deadline_is_the_shorter_of_expires_in_and_the_tokens_lifetime() -> None:
    def token(claims: dict[str, float]) -> str:
        return "e30." + base64.urlsafe_b64encode(orjson.dumps(claims)).decode().rstrip("=") + ".sig"

    # issued at 1000.9 for 2 s: exp counts from the whole second, so it lives 1.1 s, not 2
    short = token({"iat": 1000.9, "exp": 1002})
    assert refresh_deadline(short, 2, now=5000.0) == pytest.approx(5001.1)
    # the client's clock does not matter: only the claims are compared with each other
    assert refresh_deadline(short, 2, now=10.0) == pytest.approx(11.1)
    assert refresh_deadline(token({"iat": 1000.0, "exp": 1002}), 1, now=5000.0) == 5001.0
    assert refresh_deadline("not-a-jwt", 2, now=1000.0) == 1002.0
    assert refresh_deadline(token({"exp": 1234}), None, now=1000.0) == 1234.0  # only exp: as is
    assert refresh_deadline("not-a-jwt", None, now=1000.0) is None
    assert refresh_deadline("not-a-jwt", True, now=1000.0) is None


async def test_messages_gap_and_auth_revoked_are_yielded(
    make_client: AppFactory, redis_url: str, channel: str, redis_client: aioredis.Redis
) -> None:
    server = await make_client(redis_url=redis_url, redis_channel=channel)
    url = base_url(server)
    topics = ["remote-control:command.7", "channel:update.a"]
    async with RealtimeClient(url, topics, api_key=USER_KEY, **FAST) as client:
        await publish(url, "remote-control:command.7", {"event": "pause"})
        event = await next_event(client)
        assert (event.type, event.topic, event.json()) == ("MESSAGE", "remote-control:command.7", {"event": "pause"})
        broker = server.app[NODE].broker
        assert isinstance(broker, RedisBroker)
        await kill_subscriber(redis_client, broker.client_name)
        # GAP for the topic without history; remote-control:command keeps history: recovered
        assert await next_event(client) == Event("GAP", topics=("channel:update.a",), reason="broker_reconnected")
        async with aiohttp.ClientSession() as http:
            resp = await http.post(url + "/auth/ws/revoke", json={"sub": "7"}, headers=auth(USER_KEY))
            assert resp.status == 202
        assert await next_event(client) == Event("AUTH_REVOKED", topics=("remote-control:command.7",))
        assert client.topics == ["channel:update.a"]  # the public topic stays
        await publish(url, "channel:update.a", "a")
        assert (await next_event(client)).message == "a"


async def test_refused_listen_and_refused_key_raise(make_client: AppFactory) -> None:
    url = base_url(await make_client())
    with pytest.raises(ListenRefused) as refused:
        await RealtimeClient(url, ["no-such:topic.1"], **FAST).start()
    assert refused.value.code == "ERR_BADTOPIC"
    with pytest.raises(TokenRefused, match="401"):
        await RealtimeClient(url, ["dream:update.a"], api_key="wrong-key-0123456789abcdef", **FAST).start()


async def test_a_close_code_that_says_do_not_reconnect_stops_the_client(make_client: AppFactory) -> None:
    """1009 (message too big) is in the disconnect table as "do not reconnect": sending the
    same LISTEN again would fail the same way, so the client raises instead of looping."""
    url = base_url(await make_client(max_frame_bytes=1024))
    async with RealtimeClient(url, ["dream:update.a"], **FAST) as client:
        big = [f"dream:update.{'x' * 60}{i}" for i in range(30)]  # ~2.5 KB LISTEN > MAX_FRAME_BYTES
        listening = asyncio.create_task(client.listen(big))
        with pytest.raises(Disconnected) as stopped:
            await next_event(client)
        assert stopped.value.code == 1009 and "message too big" in str(stopped.value)
        assert client.reconnects == 0
        with pytest.raises(ClientError, match="LISTENed again on reconnect"):  # it lost its connection
            await listening


async def test_a_listen_refused_for_now_is_retried_not_fatal(make_client: AppFactory) -> None:
    """ERR_RATELIMIT while (re)connecting (here the user's one slot is in use; after a deploy,
    a reconnect storm's budget of token checks) is retried with backoff, not raised: the
    client starts once the slot is free."""
    url = base_url(await make_client(max_connections_per_user=1))
    retries: list[str] = []
    topics = ["remote-control:command.7"]
    async with RealtimeClient(url, topics, api_key=USER_KEY, **FAST):
        second = RealtimeClient(url, topics, api_key=USER_KEY, on_retry=lambda r, _: retries.append(r), **FAST)
        starting = asyncio.create_task(second.start())
        await wait_for(lambda: len(retries) >= 2)
        assert "ERR_RATELIMIT" in retries[0] and not starting.done()
    await asyncio.wait_for(starting, 5)  # the first client left: its slot is free
    await second.close()


async def test_token_is_refreshed_before_expiry(make_client: AppFactory) -> None:
    server = await make_client(ws_token_ttl=2)
    url = base_url(server)
    async with RealtimeClient(url, ["remote-control:command.7"], api_key=USER_KEY, refresh_margin=1.0, **FAST) as c:
        await asyncio.sleep(2.6)  # past the first token's expiry: the refreshed grant holds the topic
        await publish(url, "remote-control:command.7", "still here")
        event = await next_event(c)
        assert (event.type, event.message) == ("MESSAGE", "still here")
        assert c.reconnects == 0


async def test_token_provider_and_pings(make_client: AppFactory) -> None:
    server = await make_client()
    url = base_url(server)
    calls = 0

    async def provider() -> str:
        nonlocal calls
        calls += 1
        async with aiohttp.ClientSession() as http:
            resp = await http.post(url + "/auth/ws", headers=auth(USER_KEY))
            token: str = (await resp.json())["token"]
            return token

    async with RealtimeClient(
        url, ["remote-control:command.7"], token_provider=provider, ping_interval=0.05, ping_jitter=0.01, **FAST
    ) as client:
        await asyncio.sleep(0.5)  # ~8 PING/PONG rounds
        assert client.reconnects == 0 and calls == 1
        await client.listen(["dream:update.b"])
        await publish(url, "remote-control:command.7", "x")
        await publish(url, "dream:update.b", "y")
        assert [(await next_event(client)).message for _ in range(2)] == ["x", "y"]
        with pytest.raises(ListenRefused):
            await client.listen(["bad topic"])
        assert client.topics == ["remote-control:command.7", "dream:update.b"]


@pytest.fixture
async def mute_server() -> AsyncIterator[tuple[str, list[str]]]:
    """A WebSocket server that answers LISTEN but never PONG: the client must reconnect."""
    seen: list[str] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        seen.append("connect")
        async for msg in ws:
            data = orjson.loads(msg.data)
            seen.append(data["type"])
            if data["type"] == "LISTEN":
                await ws.send_str(orjson.dumps({"type": "RESPONSE", "nonce": data["nonce"], "error": ""}).decode())
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    server = TestServer(app)
    await server.start_server()
    yield str(server.make_url("")).rstrip("/"), seen
    await server.close()


async def test_no_pong_means_reconnect(mute_server: tuple[str, list[str]]) -> None:
    url, seen = mute_server
    async with RealtimeClient(
        url, ["dream:update.a"], ping_interval=0.05, ping_jitter=0.0, pong_timeout=0.1, **FAST
    ) as client:
        assert await next_event(client) == Event("RECONNECTED", topics=("dream:update.a",))
        assert client.reconnects >= 1
    assert seen[:3] == ["connect", "LISTEN", "PING"]
    assert seen.count("connect") >= 2


async def test_server_restart_reconnects_and_listens_again(
    spawn: type[procs.Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"API_KEYS": API_KEYS_JSON, "SHUTDOWN_GRACE": "0.2", **NO_DB}
    first = spawn(env=env)
    async with RealtimeClient(first.url, ["remote-control:command.7"], api_key=USER_KEY, **FAST) as client:
        await publish(first.url, "remote-control:command.7", "before")
        assert (await next_event(client)).message == "before"
        assert await asyncio.to_thread(first.stop) == 0  # RECONNECT, then the server is gone
        monkeypatch.setattr(procs, "free_port", lambda: first.port)
        second = await asyncio.to_thread(spawn, env=env)  # same port, same keys directory
        assert await next_event(client, timeout=10) == Event("RECONNECTED", topics=("remote-control:command.7",))
        # the memory broker's history went with the first process: since gets GAP history_lost
        gap = Event("GAP", topics=("remote-control:command.7",), reason="history_lost")
        assert await next_event(client) == gap
        await publish(second.url, "remote-control:command.7", "after")
        assert (await next_event(client)).message == "after"
        assert client.reconnects >= 1


async def test_realtime_listen_prints_messages(spawn: type[procs.Server]) -> None:
    server = spawn(env={"API_KEYS": API_KEYS_JSON, **NO_DB})
    proc = await asyncio.create_subprocess_exec(
        *procs.REALTIME, "listen", "dream:update.a", "remote-control:command.7", "--url", server.url,
        "--api-key", USER_KEY,
        env={**os.environ}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    try:
        status = await asyncio.wait_for(proc.stderr.readline(), 10)
        assert b"listening to dream:update.a remote-control:command.7" in status
        await publish(server.url, "remote-control:command.7", {"n": 1})
        line = orjson.loads(await asyncio.wait_for(proc.stdout.readline(), 5))
        assert isinstance(line.pop("epoch"), str)  # a topic with history: offset and epoch
        assert line == {"type": "MESSAGE", "topic": "remote-control:command.7", "message": '{"n":1}', "offset": 1}
    finally:
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_realtime_listen_refused_topic_exits_2(spawn: type[procs.Server], tmp_path: Path) -> None:
    server = spawn(env=NO_DB)
    proc = await asyncio.create_subprocess_exec(
        *procs.REALTIME, "listen", "nope:nope.1", "--url", server.url,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 2
    assert b"ERR_BADTOPIC" in err


async def test_frames_off_the_protocol_are_ignored(aiohttp_server: Any) -> None:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            data = orjson.loads(msg.data)
            await ws.send_str(orjson.dumps({"type": "RESPONSE", "nonce": data["nonce"], "error": ""}).decode())
            for junk in (
                "not json",
                "[]",
                '{"type":"MESSAGE"}',
                '{"type":"MESSAGE","data":[]}',
                '{"type":"GAP","data":7}',
            ):
                await ws.send_str(junk)
            await ws.send_bytes(b"\x00")
            await ws.send_str('{"type":"MESSAGE","data":{"topic":"dream:update.a","message":"ok"}}')
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    server = await aiohttp_server(app)
    async with RealtimeClient(str(server.make_url("")).rstrip("/"), ["dream:update.a"], **FAST) as client:
        assert await next_event(client) == Event("GAP", topics=())  # a GAP without topics is still a GAP
        assert await next_event(client) == Event("MESSAGE", topic="dream:update.a", message="ok")
        assert client.reconnects == 0


async def test_several_urls_the_client_moves_to_the_next_on_reconnect(make_client: AppFactory) -> None:
    url = base_url(await make_client())
    dead = f"http://127.0.0.1:{procs.free_port()}"  # nothing listens there
    async with RealtimeClient([dead, url], ["channel:update.a"], **FAST) as client:
        assert client.url == url and client.reconnects == 1  # the first failed, the second served
    with pytest.raises(ValueError, match="URL"):
        RealtimeClient([], ["channel:update.a"])
