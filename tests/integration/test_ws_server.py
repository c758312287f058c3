"""Our WebSocket protocol over real sockets: who serves a connection, RFC 6455 behaviour.

A fresh connection whose first request is a ``/ws`` handshake is served by
:class:`realtime.server.WsProtocol` alone; any other request goes to aiohttp with the bytes
read so far; a handshake on a reused keep-alive connection is answered by aiohttp's route
and then adopted by the same protocol.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import os
import random
import signal
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import WSMsgType, web

from http_api.appkeys import NODE
from keys import KeyStore
from realtime import server as ws_server
from realtime.aiohttp_adapter import WS_CONTEXT, RealtimeRunner
from realtime.send_queue import SendQueue
from service.app import create_app
from tests.conftest import (
    API_KEYS_JSON,
    PUBLISHER_KEY,
    USER_KEY,
    AppFactory,
    auth,
    listen,
    make_settings,
    recv,
    wait_for,
    ws_token,
)
from tests.procs import Server
from tests.unit.test_websocket import client_frame

HANDSHAKE = (
    "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n{extra}\r\n"
)


class RawClient:
    """A WebSocket client on a bare TCP stream: exactly the bytes we choose."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    opened: list[RawClient] = []

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        cls.opened.append(client)
        return client

    async def handshake(self, version: str = "13", extra: str = "", pieces: int = 1, key: str = "") -> bytes:
        key = key or base64.b64encode(os.urandom(16)).decode()
        data = HANDSHAKE.format(key=key, version=version, extra=extra).encode()
        step = -(-len(data) // pieces)
        for i in range(0, len(data), step):
            self.writer.write(data[i : i + step])
            await self.writer.drain()
            await asyncio.sleep(0.01)
        return await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 3)

    async def send(self, frame: bytes) -> None:
        self.writer.write(frame)
        await self.writer.drain()

    async def frame(self) -> tuple[int, bytes]:
        """One server frame: (opcode, payload); server frames are never masked."""
        b0, b1 = await asyncio.wait_for(self.reader.readexactly(2), 3)
        assert not b1 & 0x80, "server frames must not be masked"
        size = b1 & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return b0 & 0x0F, await asyncio.wait_for(self.reader.readexactly(size), 3)

    async def json(self) -> dict[str, Any]:
        opcode, payload = await self.frame()
        assert opcode == 1, (opcode, payload)
        data: dict[str, Any] = orjson.loads(payload)
        return data

    async def closed(self) -> bool:
        """True once the server closed TCP (EOF within 3 s)."""
        try:
            rest = await asyncio.wait_for(self.reader.read(), 3)
        except (ConnectionError, TimeoutError):
            return False
        return rest == b""

    def close(self) -> None:
        self.writer.close()


@pytest.fixture(autouse=True)
async def close_raw_clients() -> AsyncIterator[None]:
    yield
    for client in RawClient.opened:
        client.close()
        with contextlib.suppress(ConnectionError):
            await client.writer.wait_closed()
    RawClient.opened.clear()


def text(payload: dict[str, Any]) -> bytes:
    return client_frame(1, orjson.dumps(payload))


def aiohttp_connections(client: Any) -> int:
    return len(client.server.runner.server.connections)


async def test_fresh_connection_is_served_without_aiohttp(make_client: AppFactory) -> None:
    client = await make_client()
    token = await ws_token(client)
    before = aiohttp_connections(client)  # the POST's keep-alive connection
    raw = await RawClient.connect(client.port)
    head = await raw.handshake(pieces=7)  # the head may arrive in pieces
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    await raw.send(text({"type": "LISTEN", "nonce": "1", "data": {"topics": ["dream:update.a"], "auth_token": token}}))
    assert await raw.json() == {"type": "RESPONSE", "nonce": "1", "error": ""}
    assert aiohttp_connections(client) == before
    client.app[NODE].on_publication("dream:update.a", "hello")
    assert (await raw.json())["data"] == {"topic": "dream:update.a", "message": "hello"}
    raw.close()


async def test_handshake_on_a_reused_keep_alive_connection_is_adopted(make_client: AppFactory) -> None:
    client = await make_client()
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        resp = await session.post(client.make_url("/auth/ws"), headers=auth(USER_KEY))
        token = (await resp.json())["token"]
        async with session.ws_connect(client.make_url("/ws")) as ws:
            assert aiohttp_connections(client) == 1  # the same socket: aiohttp answered, we serve
            assert (await listen(ws, ["dream:update.a"], token))["error"] == ""
            client.app[NODE].on_publication("dream:update.a", "hi")
            assert (await recv(ws))["data"]["message"] == "hi"
        await wait_for(lambda: not client.app[NODE].peers)
    await wait_for(lambda: aiohttp_connections(client) == 0)  # aiohttp forgot it when it closed


async def test_other_requests_are_handed_to_aiohttp(make_client: AppFactory) -> None:
    client = await make_client()
    for request, status in [
        (b"GE", None),
        (b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", b"200"),
        (b"GET /wsx HTTP/1.1\r\nHost: x\r\n\r\n", b"404"),
    ]:
        if status is None:
            continue
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(request[:2])  # "GE": not enough to decide yet
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(request[2:])
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        assert head.split(b" ")[1] == status, head
        assert b"x-request-id" in head.lower()
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize(
    ("version", "key", "status", "error"),
    [("8", "", 426, "upgrade_required"), ("13", "c2hvcnQ=", 400, "bad_request")],
)
async def test_refused_handshakes_get_json(
    make_client: AppFactory, version: str, key: str, status: int, error: str
) -> None:
    client = await make_client()
    raw = await RawClient.connect(client.port)
    head = await raw.handshake(version=version, key=key)
    assert head.startswith(f"HTTP/1.1 {status}".encode()), head
    if status == 426:
        assert b"Sec-WebSocket-Version: 13" in head
    assert b"X-Request-ID: " in head
    if error:
        size = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        assert orjson.loads(await raw.reader.readexactly(size))["error"] == error
    raw.close()


async def test_plain_get_of_ws_is_a_json_400(make_client: AppFactory) -> None:
    client = await make_client()
    resp = await client.get("/ws")
    assert resp.status == 400 and (await resp.json())["error"] == "bad_request"
    assert resp.headers["X-Request-ID"]


async def test_ping_pong_and_fragmented_listen(make_client: AppFactory) -> None:
    client = await make_client()
    token = await ws_token(client)
    raw = await RawClient.connect(client.port)
    await raw.handshake()
    await raw.send(client_frame(0x9, b"are you there"))
    assert await raw.frame() == (0xA, b"are you there")
    body = orjson.dumps({"type": "LISTEN", "nonce": "f", "data": {"topics": ["dream:update.a"], "auth_token": token}})
    await raw.send(
        client_frame(1, body[:10], fin=False) + client_frame(0x9, b"") + client_frame(0, body[10:20], fin=False)
    )
    assert await raw.frame() == (0xA, b"")  # a control frame between fragments is answered at once
    await raw.send(client_frame(0, body[20:]))
    assert await raw.json() == {"type": "RESPONSE", "nonce": "f", "error": ""}
    await raw.send(client_frame(0xA, b"unsolicited"))  # ignored
    await raw.send(text({"type": "PING"}))
    assert await raw.json() == {"type": "PONG"}
    raw.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (client_frame(1, b'{"type":"PING"}', masked=False), 1002),
        (client_frame(1, b"\xff\xfe"), 1007),
        (client_frame(1, b"x", rsv=0x20), 1002),
        (client_frame(0x8, b"\x03"), 1002),
    ],
)
async def test_broken_frames_fail_the_connection(make_client: AppFactory, frame: bytes, code: int) -> None:
    client = await make_client()
    raw = await RawClient.connect(client.port)
    await raw.handshake()
    await raw.send(frame)
    opcode, payload = await raw.frame()
    assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == code and payload[2:]
    assert await raw.closed()
    await wait_for(lambda: not client.app[NODE].peers)
    assert (await client.get("/health")).status == 200


async def test_client_close_is_echoed_and_tcp_closed(make_client: AppFactory) -> None:
    client = await make_client()
    raw = await RawClient.connect(client.port)
    await raw.handshake()
    await raw.send(client_frame(0x8, struct.pack("!H", 4321) + b"bye"))
    assert await raw.frame() == (0x8, struct.pack("!H", 4321))
    assert await raw.closed()
    raw = await RawClient.connect(client.port)
    await raw.handshake()
    await raw.send(client_frame(0x8, b""))  # no code: answered with 1000
    assert await raw.frame() == (0x8, struct.pack("!H", 1000))
    assert await raw.closed()


async def test_server_close_waits_for_the_client_then_drops_it(
    make_client: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ws_server, "CLOSE_TIMEOUT", 0.3)
    client = await make_client(listen_timeout=0.2)
    raw = await RawClient.connect(client.port)
    await raw.handshake()
    opcode, payload = await raw.frame()
    assert opcode == 0x8 and payload == struct.pack("!H", 4001) + b"no LISTEN in time"
    await raw.send(text({"type": "PING"}))  # data after the server's CLOSE is ignored
    assert await raw.closed()  # never answered the CLOSE: dropped after CLOSE_TIMEOUT


async def test_silent_connection_is_dropped_after_head_timeout(make_client: AppFactory) -> None:
    client = await make_client(http_head_timeout=0.2)
    raw = await RawClient.connect(client.port)
    raw.writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\n")  # never finishes the head
    assert await raw.closed()


async def test_frames_sent_with_the_handshake_are_read(make_client: AppFactory) -> None:
    client = await make_client()
    raw = await RawClient.connect(client.port)
    key = base64.b64encode(os.urandom(16)).decode()
    raw.writer.write(HANDSHAKE.format(key=key, version="13", extra="").encode() + text({"type": "PING"}))
    await raw.reader.readuntil(b"\r\n\r\n")
    assert await raw.json() == {"type": "PONG"}
    raw.close()


async def test_limits_refuse_on_the_fast_path_with_json(make_client: AppFactory) -> None:
    client = await make_client(max_connections_per_ip=1)
    first = await RawClient.connect(client.port)
    assert (await first.handshake()).startswith(b"HTTP/1.1 101")
    second = await RawClient.connect(client.port)
    head = await second.handshake()
    assert head.startswith(b"HTTP/1.1 429") and b"X-Request-ID: " in head
    assert orjson.loads(await second.reader.read())["error"] == "too_many_requests"
    first.close()
    await wait_for(lambda: not client.app[NODE].peers)
    third = await RawClient.connect(client.port)
    assert (await third.handshake()).startswith(b"HTTP/1.1 101")  # the slot was released
    third.close()


async def test_ws_closes_on_server_close_code(make_client: AppFactory) -> None:
    """aiohttp's client sees our close codes and reasons."""
    client = await make_client(listen_timeout=0.2)
    async with client.ws_connect("/ws") as ws:
        msg = await ws.receive(timeout=3)
        assert msg.type is WSMsgType.CLOSE and msg.data == 4001 and msg.extra == "no LISTEN in time"


@pytest.mark.slow
@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
async def test_real_process_on_each_event_loop(spawn: type[Server], event_loop: str) -> None:
    """``realtime serve`` on asyncio and on uvloop: fast path, handoff, adoption, shutdown."""
    server = spawn(env={"API_KEYS": API_KEYS_JSON, "SHUTDOWN_GRACE": "0", "EVENT_LOOP": event_loop})
    lines = [orjson.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]
    assert [line["loop"] for line in lines if line["event"] == "listening"] == [event_loop]
    raw = await RawClient.connect(server.port)
    assert (await raw.handshake(pieces=3)).startswith(b"HTTP/1.1 101")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
        token = (await (await http.post(server.url + "/auth/ws", headers=auth(USER_KEY))).json())["token"]
        listen_frame = {"type": "LISTEN", "nonce": "n", "data": {"topics": ["dream:update.u"], "auth_token": token}}
        await raw.send(text(listen_frame))
        assert (await raw.json())["error"] == ""
        async with http.ws_connect(server.url + "/ws") as ws:  # reuses the POST's connection: adopted
            assert (await listen(ws, ["dream:update.u"], token))["error"] == ""
            async with aiohttp.ClientSession() as publisher:  # the only pooled connection is the WebSocket
                resp = await publisher.post(
                    server.url + "/publish",
                    json={"topic": "dream:update.u", "message": "m"},
                    headers=auth(PUBLISHER_KEY),
                )
                assert resp.status == 202
            assert (await recv(ws))["data"]["message"] == "m"
            assert (await raw.json())["data"]["message"] == "m"
            await raw.send(client_frame(0x9, b"p"))
            assert await raw.frame() == (0xA, b"p")
            server.proc.send_signal(signal.SIGTERM)
            assert await recv(ws, timeout=5) == {"type": "RECONNECT"}
            assert await raw.json() == {"type": "RECONNECT"}
            msg = await ws.receive(timeout=10)
            assert msg.type is WSMsgType.CLOSE and msg.data == 1001
    assert await asyncio.to_thread(server.stop) == 0


async def test_client_that_stops_reading_cannot_hold_its_socket(
    make_client: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CLOSE (or EOF) with our output unread: the socket is dropped after CLOSE_TIMEOUT."""
    monkeypatch.setattr(ws_server, "CLOSE_TIMEOUT", 0.3)
    client = await make_client()
    node = client.app[NODE]
    for how in ("close", "eof"):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", client.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        raw = RawClient(reader, writer)
        RawClient.opened.append(raw)
        await raw.handshake()
        await raw.send(client_frame(0x9, b"x" * 125) * 3000)  # ~400 KB of PONGs we never read
        await asyncio.sleep(0.2)
        assert len(node.peers) == 1
        if how == "close":
            await raw.send(client_frame(0x8, struct.pack("!H", 1000)))
        else:
            writer.write_eof()
        await wait_for(lambda: not node.peers, timeout=3)
        assert client.app[WS_CONTEXT].limiter.open_count("127.0.0.1") == 0


async def test_close_reply_behind_a_late_frame_is_seen(
    make_client: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ws_server, "CLOSE_TIMEOUT", 3.0)
    client = await make_client(listen_timeout=0.2)
    raw = await RawClient.connect(client.port)
    await raw.handshake()
    assert (await raw.frame())[0] == 0x8  # 4001
    started = asyncio.get_running_loop().time()
    await raw.send(client_frame(0x9, b"late") + client_frame(0x8, struct.pack("!H", 4001)))
    assert await raw.closed()
    assert asyncio.get_running_loop().time() - started < 1.0  # not the 3 s CLOSE_TIMEOUT


async def test_frames_right_behind_a_handshake_on_a_reused_connection(make_client: AppFactory) -> None:
    client = await make_client()
    raw = await RawClient.connect(client.port)
    raw.writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await raw.reader.readuntil(b"\r\n\r\n")
    size = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    await raw.reader.readexactly(size)
    key = base64.b64encode(os.urandom(16)).decode()
    raw.writer.write(HANDSHAKE.format(key=key, version="13", extra="").encode() + text({"type": "PING"}))
    assert (await raw.reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    assert await raw.json() == {"type": "PONG"}
    raw.close()


async def test_no_upgrade_once_shutdown_started(make_client: AppFactory) -> None:
    client = await make_client()
    client.app[WS_CONTEXT].shutting_down = True
    raw = await RawClient.connect(client.port)
    head = await raw.handshake()
    assert head.startswith(b"HTTP/1.1 503")
    assert orjson.loads(await raw.reader.read())["error"] == "unavailable"
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/ws")
    assert info.value.status == 503


async def test_handshakes_are_counted_in_metrics(make_client: AppFactory) -> None:
    client = await make_client(max_connections_per_ip=1, metrics_enabled=True)
    first = await RawClient.connect(client.port)
    await first.handshake()
    second = await RawClient.connect(client.port)
    assert (await second.handshake()).startswith(b"HTTP/1.1 429")
    text_metrics = await (await client.get("/metrics")).text()
    assert 'realtime_ws_handshakes_total{status="101"} 1.0' in text_metrics
    assert 'realtime_ws_handshakes_total{status="429"} 1.0' in text_metrics
    first.close()


async def test_random_bytes_after_the_handshake_never_hurt_the_server(make_client: AppFactory) -> None:
    """Garbage, truncated and oversized frames: each connection ends or stays; the server lives."""
    rng = random.Random(5)
    client = await make_client(max_frame_bytes=1024)
    blobs = [rng.randbytes(rng.randint(1, 3000)) for _ in range(30)]
    blobs += [client_frame(1, rng.randbytes(rng.randint(0, 2000)))[: rng.randint(1, 2100)] for _ in range(30)]
    for blob in blobs:
        raw = await RawClient.connect(client.port)
        await raw.handshake()
        await raw.send(blob)
        raw.close()
    await wait_for(lambda: not client.app[NODE].peers, timeout=10)
    assert client.app[WS_CONTEXT].limiter.open_count("127.0.0.1") == 0
    assert (await client.get("/health")).status == 200


def test_a_closed_connection_is_freed_without_the_cycle_collector(key_store: KeyStore) -> None:
    """uvloop's transport keeps its protocol after ``connection_lost``; the connection drops
    the transport then, so nothing of a closed connection waits for ``gc`` (whose full
    collections took ~30 ms each with thousands of connections)."""
    import uvloop

    async def scenario() -> list[object]:
        runner = RealtimeRunner(create_app(make_settings(), key_store=key_store))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        node = runner.app[NODE]
        gc.collect()
        gc.disable()
        try:
            for _ in range(3):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                key = base64.b64encode(os.urandom(16)).decode()
                writer.write(HANDSHAKE.format(key=key, version="13", extra="").encode() + text({"type": "PING"}))
                await reader.readuntil(b"\r\n\r\n")
                _, size = await reader.readexactly(2)
                assert orjson.loads(await reader.readexactly(size)) == {"type": "PONG"}
                writer.close()
                await writer.wait_closed()
            await wait_for(lambda: not node.peers)
            await asyncio.sleep(0.05)
            gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds unreachable goes to gc.garbage
            gc.collect()
            return [o for o in gc.garbage if isinstance(o, ws_server.WsProtocol | SendQueue)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
            await runner.cleanup()

    assert uvloop.run(scenario()) == []
