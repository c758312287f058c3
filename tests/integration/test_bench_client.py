"""The benchmark's WebSocket client against real servers over loopback: permessage-deflate
offered, taken or declined, and compressed messages inflated before the dialect sees them."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from bench.wsclient import Dialect, Stats, WsError, connect


class _Echo(Dialect):
    """Says hello on open and collects every text message; ready on the first."""

    def __init__(self) -> None:
        super().__init__([], "", Stats(sampled=False))
        self.texts: list[bytes] = []

    def opened(self) -> None:
        assert self.client is not None
        self.client.send_text(b"hello")

    def text(self, data: bytes) -> None:
        self.texts.append(data)
        if len(self.texts) == 2 and not self.ready.done():
            self.ready.set_result(None)


async def _server(compress: bool) -> TestServer:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=compress)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await ws.send_str(f"got {msg.data} " + "x" * 2000)  # compressible, > 1 KiB
                await ws.send_str("second")
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@pytest.mark.parametrize(
    ("server_compresses", "offered", "deflated"),
    [(True, True, True), (False, True, False), (True, False, False)],
    ids=["taken", "declined", "not-offered"],
)
async def test_permessage_deflate_offer(server_compresses: bool, offered: bool, deflated: bool) -> None:
    """Offered and taken: compressed messages are inflated; declined by the server, or not
    offered: plain frames. The dialect sees the same messages every way."""
    server = await _server(compress=server_compresses)
    try:
        dialect = _Echo()
        client = await asyncio.wait_for(connect("127.0.0.1", server.port, "/ws", dialect, deflate=offered), 5)
        assert client.deflated is deflated
        assert dialect.texts == [b"got hello " + b"x" * 2000, b"second"]
        client.close()
    finally:
        await server.close()


async def test_a_compressed_frame_without_negotiation_fails_the_connection() -> None:
    """RSV1 set though permessage-deflate was not negotiated (RFC 7692 6: the client must
    fail the connection): the dialect never becomes ready."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        writer.write(bytes((0xC1, 5)) + b"hello")  # FIN + RSV1 + text
        await writer.drain()
        await reader.read()  # until the client goes away
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    errors: list[object] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context.get("exception")))
    try:
        dialect = _Echo()
        with pytest.raises(WsError):  # the connection is closed, so LISTEN never completes
            await asyncio.wait_for(connect("127.0.0.1", port, "/ws", dialect, deflate=True), 2)
        assert dialect.texts == []
    finally:
        loop.set_exception_handler(None)
        server.close()
        await server.wait_closed()
