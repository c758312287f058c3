"""The client SDK on topics with history (issue 16): positions, duplicates, ``since``, against a
scripted WebSocket server and against real ``realtime serve`` processes (memory broker,
default policy), and ``realtime listen --since``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from realtime.client import Event, RealtimeClient
from tests import procs
from tests.conftest import API_KEYS_JSON, USER_KEY, AppFactory, wait_for
from tests.integration.test_client import FAST, NO_DB, base_url, next_event, publish


def _message(topic: str, message: str, offset: int | None = None, epoch: str | None = None) -> str:
    data: dict[str, Any] = {"topic": topic, "message": message}
    if offset is not None:
        data.update(offset=offset, epoch=epoch)
    return orjson.dumps({"type": "MESSAGE", "data": data}).decode()


@pytest.fixture
async def scripted_server(aiohttp_server: Any) -> tuple[str, list[dict[str, Any]], list[list[str]]]:
    """A WebSocket server that answers every request and, after a connection's first LISTEN,
    sends the next script's frames; a script ending in ``"close 1012"`` then closes with 1012.
    Returns the URL, the data of every LISTEN received, and the scripts (fill before use)."""
    listens: list[dict[str, Any]] = []
    scripts: list[list[str]] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        first = True
        async for msg in ws:
            frame = orjson.loads(msg.data)
            if frame["type"] == "LISTEN":
                listens.append(frame["data"])
            await ws.send_str(orjson.dumps({"type": "RESPONSE", "nonce": frame.get("nonce", ""), "error": ""}).decode())
            if frame["type"] == "LISTEN" and first and scripts:
                first = False
                for line in scripts.pop(0):
                    if line == "close 1012":
                        await ws.close(code=1012)
                        return ws
                    await ws.send_str(line)
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/"), listens, scripts


async def test_positions_are_tracked_duplicates_dropped_and_sent_as_since_on_reconnect(
    scripted_server: tuple[str, list[dict[str, Any]], list[list[str]]],
) -> None:
    url, listens, scripts = scripted_server
    a, plain = "dream:update.a", "remote-control:command.7"
    scripts.append([*(_message(a, f"m{n}", n, "e1") for n in (1, 2, 2, 3)), _message(plain, "p"), "close 1012"])
    # after the reconnect: the recovery overlaps what was seen (3), then the live stream
    gap = '{"type":"GAP","data":{"topics":["dream:update.a"],"reason":"history_lost"}}'
    scripts.append([_message(a, "m3", 3, "e1"), _message(a, "m4", 4, "e1"), _message(a, "m2", 2, "e1"), gap])
    scripts[-1].append(_message(a, "n1", 1, "e2"))
    async with RealtimeClient(url, [a, plain], **FAST) as client:
        got = [await next_event(client) for _ in range(4)]
        assert [(e.message, e.offset, e.epoch) for e in got] == [
            ("m1", 1, "e1"), ("m2", 2, "e1"), ("m3", 3, "e1"), ("p", None, None)
        ]  # fmt: skip
        assert client.duplicates_dropped == 1
        assert await next_event(client) == Event("RECONNECTED", topics=(a, plain))  # before what was recovered
        assert listens[0] == {"topics": [a, plain]}
        assert listens[1] == {"topics": [a, plain], "since": {a: {"offset": 3, "epoch": "e1"}}}
        assert await next_event(client) == Event("MESSAGE", topic=a, message="m4", offset=4, epoch="e1")
        assert await next_event(client) == Event("GAP", topics=(a,), reason="history_lost")
        assert client.positions == {a: (4, "e1")}  # a GAP keeps the position
        assert await next_event(client) == Event("MESSAGE", topic=a, message="n1", offset=1, epoch="e2")
        assert client.duplicates_dropped == 3 and client.positions == {a: (1, "e2")}
        await client.unlisten([a])
        assert client.positions == {}


async def test_since_resumes_from_a_saved_position_and_auth_revoked_forgets_it(
    scripted_server: tuple[str, list[dict[str, Any]], list[list[str]]],
) -> None:
    url, listens, scripts = scripted_server
    a, b = "dream:update.a", "dream:update.b"
    revoked = '{"type":"AUTH_REVOKED","data":{"topics":["dream:update.a"]}}'
    scripts.append([_message(a, "m7", 7, "e"), _message(b, "b1", 1, "f"), revoked])
    since = {a: (6, "e"), "dream:update.c": (1, "g")}  # c: kept until a LISTEN names it
    async with RealtimeClient(url, [a, b], since=since, **FAST) as client:
        assert listens == [{"topics": [a, b], "since": {a: {"offset": 6, "epoch": "e"}}}]
        assert (await next_event(client)).message == "m7"
        assert (await next_event(client)).message == "b1"
        assert await next_event(client) == Event("AUTH_REVOKED", topics=(a,))
        assert client.positions == {b: (1, "f"), "dream:update.c": (1, "g")}
        await client.listen(["dream:update.c"])
        assert listens[1] == {"topics": ["dream:update.c"], "since": {"dream:update.c": {"offset": 1, "epoch": "g"}}}
    with pytest.raises(ValueError, match="epoch"):
        RealtimeClient(url, [a], since={a: (1, "x" * 65)})


# -- against a real server (memory broker, default policy: dream:update keeps 16) ---------


@pytest.fixture
def server(spawn: type[procs.Server]) -> procs.Server:
    return spawn(env={"API_KEYS": API_KEYS_JSON, **NO_DB})


async def published(url: str, topic: str, messages: range) -> None:
    for n in messages:
        await publish(url, topic, f"m{n}")


async def offsets_until(client: RealtimeClient, last: int) -> list[tuple[str, int | None]]:
    """``(message, offset)`` of the MESSAGEs up to offset ``last``; fails on any other event."""
    got: list[tuple[str, int | None]] = []
    while not got or got[-1][1] != last:
        event = await next_event(client)
        assert event.type == "MESSAGE", event
        got.append((event.message, event.offset))
    return got


async def test_since_gets_exactly_what_was_missed_then_the_live_stream(server: procs.Server) -> None:
    topic = "dream:update.x"
    async with RealtimeClient(server.url, [topic], **FAST) as first:
        await published(server.url, topic, range(1, 4))
        assert await offsets_until(first, 3) == [("m1", 1), ("m2", 2), ("m3", 3)]
        saved = first.positions
    epoch = saved[topic].epoch
    assert saved == {topic: (3, epoch)} and len(epoch) > 0
    await published(server.url, topic, range(4, 7))
    async with RealtimeClient(server.url, [topic], since=saved, **FAST) as second:
        assert await offsets_until(second, 6) == [("m4", 4), ("m5", 5), ("m6", 6)]
        await publish(server.url, topic, "live")
        assert await next_event(second) == Event("MESSAGE", topic=topic, message="live", offset=7, epoch=epoch)
        with pytest.raises(TimeoutError):
            await next_event(second, timeout=0.3)
        assert second.duplicates_dropped == 0 and second.positions == {topic: (7, epoch)}


async def test_since_while_publishing_has_no_duplicate_and_no_hole(server: procs.Server) -> None:
    topic = "dream:update.busy"
    async with RealtimeClient(server.url, [topic], **FAST) as first:
        await publish(server.url, topic, "m1")
        assert await offsets_until(first, 1) == [("m1", 1)]
        saved = first.positions
    busy = asyncio.create_task(published(server.url, topic, range(2, 16)))  # fewer than history holds
    try:
        async with RealtimeClient(server.url, [topic], since=saved, **FAST) as second:
            await busy
            got = await offsets_until(second, 15)
            assert got == [(f"m{n}", n) for n in range(2, 16)]
            assert second.duplicates_dropped == 0  # the server sent none twice
    finally:
        busy.cancel()


async def test_since_that_history_cannot_cover_is_a_gap_then_live(server: procs.Server) -> None:
    topic, plain = "dream:update.lost", "channel:update.x"  # channel:update keeps no history
    async with RealtimeClient(server.url, [topic], **FAST) as first:
        await published(server.url, topic, range(1, 21))  # 20 > the 16 kept
        assert (await offsets_until(first, 20))[-1] == ("m20", 20)
        epoch = first.positions[topic].epoch
    live = 20
    for since in ((1, epoch), (99, epoch), (20, "not-the-epoch")):  # too old, ahead, another epoch
        async with RealtimeClient(server.url, [topic], since={topic: since}, **FAST) as client:
            assert await next_event(client) == Event("GAP", topics=(topic,), reason="history_lost"), since
            live += 1
            await publish(server.url, topic, "live")
            assert await next_event(client) == Event("MESSAGE", topic=topic, message="live", offset=live, epoch=epoch)
    async with RealtimeClient(server.url, [plain], since={plain: (1, "e")}, **FAST) as client:
        assert await next_event(client) == Event("GAP", topics=(plain,), reason="history_lost")
        await publish(server.url, plain, "live")
        assert await next_event(client) == Event("MESSAGE", topic=plain, message="live")
        assert client.positions == {}  # a MESSAGE without offset: the topic has no history


class CuttableProxy:
    """A TCP proxy in front of a server: :meth:`cut` drops every connection through it and
    refuses new ones until :meth:`mend` (a network change, from the client's side)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._up = True
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        self._up = False
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    def mend(self) -> None:
        self._up = True

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if not self._up:
            client_w.transport.abort()
            return
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [client_w, server_w]
        await asyncio.gather(self._pipe(client_r, server_w), self._pipe(server_r, client_w))

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        dst.transport.abort()


@pytest.fixture
async def proxy(server: procs.Server) -> AsyncIterator[CuttableProxy]:
    proxy = CuttableProxy(server.port)
    await proxy.start()
    yield proxy
    await proxy.close()


async def test_a_dropped_connection_recovers_what_was_published_meanwhile(
    server: procs.Server, proxy: CuttableProxy
) -> None:
    topic = "dream:update.net"
    retries: list[str] = []
    url = f"http://127.0.0.1:{proxy.port}"
    async with RealtimeClient(url, [topic], on_retry=lambda r, _: retries.append(r), **FAST) as client:
        await published(server.url, topic, range(1, 3))
        assert await offsets_until(client, 2) == [("m1", 1), ("m2", 2)]
        proxy.cut()
        await published(server.url, topic, range(3, 6))  # while the client is away
        await wait_for(lambda: len(retries) >= 2)  # it noticed, and a reconnect was refused
        proxy.mend()
        assert await next_event(client, timeout=10) == Event("RECONNECTED", topics=(topic,))
        await publish(server.url, topic, "m6")
        assert await offsets_until(client, 6) == [(f"m{n}", n) for n in range(3, 7)]
        assert client.duplicates_dropped == 0 and client.reconnects >= 1


async def test_realtime_listen_since_prints_what_was_missed(server: procs.Server) -> None:
    topic = "dream:update.cli"
    async with RealtimeClient(server.url, [topic], **FAST) as first:
        await published(server.url, topic, range(1, 4))
        await offsets_until(first, 3)
        epoch = first.positions[topic].epoch
    proc = await asyncio.create_subprocess_exec(
        *procs.REALTIME, "listen", topic, "--url", server.url, "--since", f"{topic}=1:{epoch}",
        env={**os.environ}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        lines = [orjson.loads(await asyncio.wait_for(proc.stdout.readline(), 10)) for _ in range(2)]
        assert lines == [
            {"type": "MESSAGE", "topic": topic, "message": f"m{n}", "offset": n, "epoch": epoch} for n in (2, 3)
        ]
    finally:
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_a_token_refresh_relisten_with_since_replays_nothing(make_client: AppFactory) -> None:
    """The refresh LISTENs again on the same connection with ``since`` for topics it holds:
    the server ignores it (no replay, no GAP)."""
    server = await make_client(ws_token_ttl=2)
    url = base_url(server)
    topic = "remote-control:command.7"
    async with RealtimeClient(url, [topic], api_key=USER_KEY, refresh_margin=1.0, **FAST) as client:
        await published(url, topic, range(1, 3))
        assert await offsets_until(client, 2) == [("m1", 1), ("m2", 2)]
        await asyncio.sleep(2.6)  # past the first token's expiry: refreshed with since {topic: 2}
        await publish(url, topic, "m3")
        assert await offsets_until(client, 3) == [("m3", 3)]
        assert client.reconnects == 0 and client.duplicates_dropped == 0
