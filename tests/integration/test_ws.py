"""WebSocket protocol end to end, in-process app on loopback with the memory broker."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from typing import Any

import orjson
import pytest
from aiohttp import WSMsgType

from http_api.appkeys import NODE
from realtime.disconnect import CloseCode
from tests.conftest import (
    OTHER_KEY,
    PUBLISHER_KEY,
    AppFactory,
    assert_silent,
    auth,
    listen,
    recv,
    send,
    wait_for,
    ws_token,
)


async def publish(client: Any, topic: str, message: object) -> None:
    resp = await client.post("/publish", json={"topic": topic, "message": message}, headers=auth(PUBLISHER_KEY))
    assert resp.status == 202, await resp.text()


async def test_listen_publish_unlisten(make_client: AppFactory) -> None:
    client = await make_client()
    token = await ws_token(client)
    async with client.ws_connect("/ws") as ws:
        await send(ws, type="PING")
        assert await recv(ws) == {"type": "PONG"}
        reply = await listen(ws, ["remote-control:command.7", "channel:update.abc"], token, nonce="n1")
        assert reply == {"type": "RESPONSE", "nonce": "n1", "error": ""}
        await publish(client, "remote-control:command.7", {"event": "next"})
        got = await recv(ws)
        epoch = got["data"].pop("epoch")  # the topic keeps history: offset and epoch come along
        assert got == {
            "type": "MESSAGE",
            "data": {"topic": "remote-control:command.7", "message": '{"event":"next"}', "offset": 1},
        }
        assert isinstance(epoch, str)
        await publish(client, "channel:update.abc", "plain string")
        assert (await recv(ws))["data"] == {"topic": "channel:update.abc", "message": "plain string"}
        await publish(client, "dream:update.other", "not for us")
        await assert_silent(ws)
        await send(ws, type="UNLISTEN", nonce="u1", data={"topics": ["channel:update.abc"]})
        assert await recv(ws) == {"type": "RESPONSE", "nonce": "u1", "error": ""}
        await publish(client, "channel:update.abc", "after unlisten")
        await assert_silent(ws)


async def test_other_users_client_does_not_receive(make_client: AppFactory) -> None:
    client = await make_client()
    mine, theirs = await ws_token(client), await ws_token(client, OTHER_KEY)
    async with client.ws_connect("/ws") as ws7, client.ws_connect("/ws") as ws8:
        assert (await listen(ws7, ["remote-control:command.7"], mine))["error"] == ""
        assert (await listen(ws8, ["remote-control:command.7"], theirs))["error"] == "ERR_BADAUTH"
        assert (await listen(ws8, ["remote-control:command.8"], theirs))["error"] == ""
        await publish(client, "remote-control:command.7", "for 7")
        assert (await recv(ws7))["data"]["message"] == "for 7"
        await assert_silent(ws8)


async def test_every_error_code_over_the_socket(make_client: AppFactory) -> None:
    client = await make_client()
    async with client.ws_connect("/ws") as ws:
        await ws.send_str("{not json")
        assert (await recv(ws))["error"] == "ERR_BADMESSAGE"
        await ws.send_bytes(b"\x00\x01")
        assert (await recv(ws))["error"] == "ERR_BADMESSAGE"
        assert (await listen(ws, ["remote-control:command.7"]))["error"] == "ERR_BADAUTH"
        assert (await listen(ws, ["remote-control:command.7"], "bogus"))["error"] == "ERR_BADAUTH"
        assert (await listen(ws, ["no:such.topic"]))["error"] == "ERR_BADTOPIC"
        await send(ws, type="PING")  # still alive after all of that
        assert await recv(ws) == {"type": "PONG"}
    assert client.app[NODE].stats.refusals == {"ERR_BADMESSAGE": 2, "ERR_BADAUTH": 2, "ERR_BADTOPIC": 1}


async def test_oversized_frame_closes_1009(make_client: AppFactory) -> None:
    client = await make_client(max_frame_bytes=1024)
    async with client.ws_connect("/ws") as ws:
        await ws.send_str("x" * 2048)
        msg = await ws.receive(timeout=3)
        assert msg.type is WSMsgType.CLOSE and msg.data == 1009
    assert (await client.get("/health")).status == 200


async def test_listen_timeout_closes_4001(make_client: AppFactory) -> None:
    client = await make_client(listen_timeout=0.3)
    async with client.ws_connect("/ws") as ws:
        await send(ws, type="PING")  # a PING does not count as a LISTEN
        assert await recv(ws) == {"type": "PONG"}
        msg = await ws.receive(timeout=3)
        assert msg.type is WSMsgType.CLOSE and msg.data == CloseCode.LISTEN_TIMEOUT
        assert msg.extra == "no LISTEN in time"


async def test_idle_timeout_closes_4002(make_client: AppFactory) -> None:
    client = await make_client(idle_timeout=0.4)
    async with client.ws_connect("/ws") as ws:
        assert (await listen(ws, ["dream:update.a"]))["error"] == ""
        for _ in range(3):  # PINGs keep it alive
            await asyncio.sleep(0.2)
            await send(ws, type="PING")
            assert await recv(ws) == {"type": "PONG"}
        msg = await ws.receive(timeout=3)
        assert msg.type is WSMsgType.CLOSE and msg.data == CloseCode.IDLE_TIMEOUT


async def test_many_publications_arrive_in_order(make_client: AppFactory) -> None:
    client = await make_client()
    async with client.ws_connect("/ws") as ws:
        await listen(ws, ["dream:job:progress.j1"])
        for i in range(200):
            await publish(client, "dream:job:progress.j1", {"i": i})
        got = [orjson.loads((await recv(ws))["data"]["message"])["i"] for _ in range(200)]
        assert got == list(range(200))


def _raw_ws_handshake(port: int, rcvbuf: int) -> socket.socket:
    """A real WebSocket client on a raw socket with a tiny receive buffer, that never reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101")
    return sock


def _masked_text(payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + mask + body


@pytest.mark.slow
async def test_slow_consumer_is_closed_and_others_get_everything(make_client: AppFactory) -> None:
    client = await make_client()  # default queue bounds: 1 MiB, 1,000 frames
    node = client.app[NODE]
    slow = await asyncio.to_thread(_raw_ws_handshake, client.port, 4096)
    slow.sendall(_masked_text(b'{"type":"LISTEN","data":{"topics":["dream:update.a"]}}'))
    async with client.ws_connect("/ws") as fast1, client.ws_connect("/ws") as fast2:
        await listen(fast1, ["dream:update.a"])
        await listen(fast2, ["dream:update.a"])
        await wait_for(lambda: len(node.index.get("dream:update.a") or ()) == 3)
        payload = "p" * 8000
        received: dict[int, list[int]] = {1: [], 2: []}

        async def reader(ws: Any, n: int) -> None:
            while len(received[n]) < 1000:
                frame = await recv(ws, timeout=10)
                received[n].append(orjson.loads(frame["data"]["message"])["i"])

        readers = [asyncio.create_task(reader(fast1, 1)), asyncio.create_task(reader(fast2, 2))]
        for i in range(1000):
            node.on_publication("dream:update.a", orjson.dumps({"i": i, "p": payload}).decode())
            if i % 10 == 0:  # 80 KB every 5 ms: easy for a reading client, > 1 MiB for the slow one
                await asyncio.sleep(0.005)
        await asyncio.wait_for(asyncio.gather(*readers), 15)
        assert received[1] == list(range(1000)) and received[2] == list(range(1000))
        await wait_for(lambda: len(node.index.get("dream:update.a") or ()) == 2)
        assert node.stats.slow_consumers == 1
        closed = [p for p in node.peers.values() if p.ws.close_code == CloseCode.SLOW_CONSUMER]
        assert closed == []  # the slow peer is gone from the node entirely
    slow.close()


async def socket_connection(scheduler: Any) -> tuple[Any, asyncio.BaseTransport, socket.socket]:
    """A :class:`SendQueue` writing to one end of a real socket pair; returns it, its
    transport and the other end (non-blocking) to read what it wrote."""
    from realtime.send_queue import SendQueue

    ours, theirs = socket.socketpair()
    transport, _ = await asyncio.get_running_loop().connect_accepted_socket(asyncio.Protocol, ours)
    conn = SendQueue("t", transport, scheduler, max_bytes=1 << 20, max_messages=1000, on_overflow=lambda c: None)  # type: ignore[arg-type]
    theirs.setblocking(False)
    return conn, transport, theirs


async def test_flush_scheduler_spaces_flushes_under_load() -> None:
    """First flush on the next pass; later ones at most once per interval."""
    from realtime.send_queue import FlushScheduler

    scheduler = FlushScheduler(asyncio.get_running_loop(), interval=0.05)
    conn, transport, theirs = await socket_connection(scheduler)
    conn.send(b"a")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert theirs.recv(100) == b"a"  # not delayed after a quiet spell
    conn.send(b"b")
    conn.send(b"c")
    await asyncio.sleep(0.01)
    with pytest.raises(BlockingIOError):
        theirs.recv(100)  # held back: the last flush was less than 50 ms ago
    await asyncio.sleep(0.06)
    assert theirs.recv(100) == b"bc"  # merged into one write
    transport.close()
    theirs.close()


def test_flush_spacing_stretches_for_long_flushes_up_to_a_cap() -> None:
    """Pure: the interval, or twice the last flush's duration, at most three intervals."""
    from realtime.send_queue import flush_spacing

    assert flush_spacing(0.008, 0.001) == 0.008  # 50 writes: the interval
    assert flush_spacing(0.008, 0.009) == 0.018  # 1,000 writes: writing takes half the time
    assert flush_spacing(0.008, 0.05) == pytest.approx(0.024)  # 5,000 writes: capped
    assert flush_spacing(0.0, 0.05) == 0.0  # interval 0: every pass


async def test_a_long_merging_flush_stretches_the_spacing_of_the_next() -> None:
    """A flush that took 120 ms (wide fan-out) and merged three frames per write spaces the
    next one 240 ms after it began (twice 120 ms, under the cap of three 100 ms intervals),
    not 100 ms. One that wrote a single frame per connection (many topics) does not."""
    from realtime.send_queue import FlushScheduler

    for frames_per_write, stretched in ((3, True), (1, False)):
        scheduler = FlushScheduler(asyncio.get_running_loop(), interval=0.1)
        flushed: list[float] = []
        slow_flush = lambda self, n=frames_per_write: time.sleep(0.12) or n  # noqa: E731
        slow = type("Conn", (), {"id": "slow", "flush": slow_flush, "flushed_at": -1e9})()
        flush = lambda self, out=flushed: out.append(time.monotonic()) or 1  # noqa: E731
        conn = type("Conn", (), {"id": "c", "flush": flush, "flushed_at": time.monotonic()})()  # getting a stream
        scheduler.mark(slow)
        start = time.monotonic()
        scheduler.flush()
        scheduler.mark(conn)  # after the slow flush ended: unstretched, it goes on the next pass
        await asyncio.sleep(max(0.0, start + 0.18 - time.monotonic()))
        assert bool(flushed) is not stretched
        await wait_for(lambda out=flushed: bool(out), timeout=2)  # type: ignore[misc]
        if stretched:
            assert flushed[0] - start >= 0.238  # (the fallback timer may fire ~1 ms early)
        scheduler.close()


async def test_flush_now_writes_at_once_and_restarts_the_interval() -> None:
    """``FlushScheduler.flush`` (a broker's end of batch) writes now, replaces the
    scheduled pass, and the next scheduled flush is an interval later."""
    from realtime.send_queue import FlushScheduler

    scheduler = FlushScheduler(asyncio.get_running_loop(), interval=0.05)
    conn, transport, theirs = await socket_connection(scheduler)
    conn.send(b"a")
    assert scheduler.pending
    scheduler.flush()
    assert not scheduler.pending and theirs.recv(100) == b"a"
    await asyncio.sleep(0.01)  # the cancelled pass did nothing
    conn.send(b"b")
    await asyncio.sleep(0.01)
    with pytest.raises(BlockingIOError):
        theirs.recv(100)  # paced from the flush made now
    await asyncio.sleep(0.06)
    assert theirs.recv(100) == b"b"
    transport.close()
    theirs.close()


async def test_on_batch_end_flushes_and_says_whether_the_batch_delivered() -> None:
    """``Node.on_batch_end`` (called by the Redis link after each read) writes queued frames
    at once, and reports the frames written only when a publication of the batch reached a
    listener here: replies alone, or other topics, must not pace the link."""
    from realtime.broker import MemoryBroker
    from realtime.node import Node
    from topics import load_policy

    node = Node(broker=MemoryBroker(), policy=load_policy(None), verify=lambda t: None, write_interval=0.05)  # type: ignore[arg-type,return-value]
    conn, transport, theirs = await socket_connection(node.scheduler)
    node.index.add("dream:update.a", conn)
    node.on_publication("dream:update.b", "nobody listens")
    assert node.on_batch_end() == 0
    conn.send(b"reply")  # e.g. a PONG: pending, but not a delivery
    assert node.on_batch_end() == 0 and theirs.recv(100) == b"reply"  # flushed all the same
    node.on_publication("dream:update.a", "m")
    node.on_publication("dream:update.a", "n")
    assert node.on_batch_end() == 2  # two frames, one write
    assert theirs.recv(1000).count(b"dream:update.a") == 2  # written now, not on the scheduled pass
    assert node.on_batch_end() == 0  # the count is per batch
    transport.close()
    theirs.close()


async def test_wrong_token_types_are_bad_messages(make_client: AppFactory) -> None:
    client = await make_client()
    async with client.ws_connect("/ws") as ws:
        for token in ([1], {"a": 1}, 5, True):
            reply = await listen(ws, ["remote-control:command.7"], token)  # type: ignore[arg-type]
            assert reply["error"] == "ERR_BADMESSAGE", (token, reply)
    assert "ERR_SERVER" not in client.app[NODE].stats.refusals


async def test_deeply_nested_messages_are_400(make_client: AppFactory) -> None:
    client = await make_client()
    nested: object = "x"
    for _ in range(300):
        nested = [nested]
    resp = await client.post(
        "/publish", json={"topic": "dream:update.a", "message": nested}, headers=auth(PUBLISHER_KEY)
    )
    assert resp.status == 400 and "message" in (await resp.json())["fields"]
    resp = await client.post("/publish", json={"topic": "dream:update.a", "message": "ok"})
    assert resp.status == 401 and resp.headers["X-Request-ID"]  # errors carry the request id too
