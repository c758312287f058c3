"""Sockets that never finish a request: head and body deadlines, idle keep-alive, the
per-address cap on pending sockets, shedding the oldest under file-descriptor pressure, and
aiohttp's own 400s answered as JSON.

The file-descriptor test runs a real server process with ``RLIMIT_NOFILE`` lowered to 256. The
registry alone, on a fake clock: tests/unit/test_stall.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest

from http_api.security import SECURITY_HEADERS
from realtime.aiohttp_adapter import WS_CONTEXT
from realtime.stall import IDLE
from tests.conftest import API_KEYS_JSON, PUBLISHER_KEY, AppFactory
from tests.procs import REALTIME, free_port

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class LimitedServer:
    """``realtime serve`` in a process whose file-descriptor limit is ``nofile``."""

    def __init__(self, cwd: Path, env: dict[str, str], nofile: int) -> None:
        self.port = free_port()
        self.log = cwd / f"server-{self.port}.log"
        base = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "API_KEYS", "WS_SIGNING_KEYS")}

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*REALTIME, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=cwd,
                env={**base, "LOG_FORMAT": "json", "DATABASE_URL": "none", "KEYS_DIR": str(cwd / "keys"), **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=limit,  # only setrlimit, before exec
            )
        deadline = time.monotonic() + 15
        while b'"listening"' not in self.log.read_bytes():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "server did not start: " + self.log.read_text()
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[type[LimitedServer]]:
    servers: list[LimitedServer] = []

    class Tracked(LimitedServer):
        def __init__(self, env: dict[str, str], nofile: int = 256) -> None:
            super().__init__(tmp_path, env, nofile)
            servers.append(self)

    yield Tracked
    for server in servers:
        server.stop()


@contextlib.asynccontextmanager
async def streams() -> AsyncIterator[list[Stream]]:
    opened: list[Stream] = []
    try:
        yield opened
    finally:
        for _, writer in opened:
            writer.transport.abort()


async def closed_by_server(reader: asyncio.StreamReader, timeout: float) -> bool:
    """``True`` when the server closes (FIN or RST) within ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


async def get(port: int, path: str = "/health", timeout: float = 3.0) -> tuple[bytes, bytes]:
    """One ``GET`` on a fresh connection (``Connection: close``): (head, body)."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            return head, await reader.read()
        finally:
            writer.transport.abort()


STALLS = (
    b"GET /health HTTP/1.1\r\nHost: x\r\n",  # a partial head to an HTTP route
    b"G",  # a single byte
    b"",  # nothing at all
    b"GET /ws HTTP/1.1\r\nHost: x\r\n",  # a partial WebSocket handshake
)


@pytest.mark.slow
@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
async def test_health_answers_with_the_fd_limit_used_up_by_stalled_sockets(
    limited: type[LimitedServer], event_loop: str
) -> None:
    server = limited(
        {"EVENT_LOOP": event_loop, "HTTP_HEAD_TIMEOUT": "3", "MAX_PENDING_PER_IP": "0", "API_KEYS": API_KEYS_JSON}
    )
    async with streams() as opened:
        for i in range(250):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(STALLS[i % len(STALLS)])
            opened.append((reader, writer))
        await asyncio.sleep(0.2)  # let the server accept them all
        started = time.monotonic()
        head, body = await get(server.port)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert orjson.loads(body) == {"status": "ok"}
        assert time.monotonic() - started < 2.0
        # the survivors go at the head timeout (3 s), none later
        results = await asyncio.gather(*(closed_by_server(reader, 3 + 2.5) for reader, _ in opened))
        assert all(results), f"{results.count(False)} stalled sockets still open"
    head, _ = await get(server.port)
    assert head.startswith(b"HTTP/1.1 200")
    assert server.proc.poll() is None


async def connect(port: int, data: bytes = b"") -> Stream:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if data:
        writer.write(data)
    return reader, writer


@pytest.mark.parametrize("stall", [*STALLS, b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Le"])
async def test_a_stalled_head_is_closed_at_the_head_timeout(make_client: AppFactory, stall: bytes) -> None:
    client = await make_client(http_head_timeout=0.6)
    async with streams() as opened:
        opened.append(await connect(client.port, stall))
        reader = opened[0][0]
        assert not await closed_by_server(reader, 0.3)  # not at once: at the deadline
        assert await closed_by_server(reader, 1.5)
    guard = client.app[WS_CONTEXT].guard
    assert guard.pending() == 0 and guard.closed["head_timeout"] == 1


async def test_a_trickled_body_gets_a_json_408_at_the_body_timeout(make_client: AppFactory) -> None:
    client = await make_client(http_body_timeout=0.8)
    head = (
        "POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n"
        f"Authorization: Api-Key {PUBLISHER_KEY}\r\n\r\n"
    )
    async with streams() as opened:
        reader, writer = await connect(client.port, head.encode())
        opened.append((reader, writer))
        started = time.monotonic()
        for byte in b'{"topic":':  # a byte every 0.05 s, then nothing (a client still sending
            writer.write(bytes([byte]))  # when the server closes gets a reset instead)
            await asyncio.sleep(0.05)
        data = await asyncio.wait_for(reader.read(), 3)  # the answer, then the server closes
    assert 0.7 < time.monotonic() - started < 2.5
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    assert head_bytes.startswith(b"HTTP/1.1 408"), data
    assert b"Connection: close" in head_bytes and b"X-Request-ID: " in head_bytes
    assert orjson.loads(body) == {
        "error": "request_timeout",
        "message": "the request body did not arrive within 0.8 seconds",
    }


async def test_an_unread_body_is_cut_at_the_body_timeout(make_client: AppFactory) -> None:
    """A route that does not read the body answers at once; aiohttp then reads the rest
    (lingering, up to 10 s): the body timeout ends that."""
    client = await make_client(http_body_timeout=0.6)
    async with streams() as opened:
        reader, writer = await connect(client.port, b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nx")
        opened.append((reader, writer))
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)).startswith(b"HTTP/1.1 200")
        assert await closed_by_server(reader, 2.0)


async def test_idle_keep_alive_connections_close(make_client: AppFactory) -> None:
    client = await make_client(http_keepalive_timeout=0.6)
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    async with streams() as opened:
        reader, writer = await connect(client.port, request)
        opened.append((reader, writer))
        for _ in range(2):  # kept alive between requests
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
            assert head.startswith(b"HTTP/1.1 200")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            assert client.app[WS_CONTEXT].guard.pending(IDLE) == 1
            writer.write(request)
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert await closed_by_server(reader, 2.0)
    assert client.app[WS_CONTEXT].guard.pending() == 0


async def test_pending_sockets_per_address_are_capped_oldest_first(make_client: AppFactory) -> None:
    client = await make_client(max_pending_per_ip=3)
    async with streams() as opened:
        for _ in range(4):  # a burst of fresh ones is admitted beyond the cap
            opened.append(await connect(client.port, b"GET /health HTTP/1.1\r\n"))
            await asyncio.sleep(0.05)  # arrive in order
        assert not await closed_by_server(opened[0][0], 1.0)  # past PER_IP_GRACE from here on
        for _ in range(2):
            opened.append(await connect(client.port, b"GET /health HTTP/1.1\r\n"))
        assert await closed_by_server(opened[0][0], 1.0)
        assert await closed_by_server(opened[1][0], 1.0)
        for reader, _ in opened[2:]:
            assert not await closed_by_server(reader, 0.2)
        # upgraded WebSockets are not pending: they never count against the cap
        sockets = [await client.ws_connect("/ws") for _ in range(4)]
        assert all(not ws.closed for ws in sockets)
        head, _ = await get(client.port)
        assert head.startswith(b"HTTP/1.1 200"), head
        for ws in sockets:
            await ws.close()
    assert client.app[WS_CONTEXT].guard.closed["per_ip"] >= 2


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /health HTTP/1.1<script>alert(1)</script>\r\nHost: x\r\n\r\n",
        b"GET /<script>alert(1)</script> HTTP/9.9\r\n\r\n",
        b"GET <script>alert(1)</script> HTTP/1.1\r\n\r\n",
        b"G<script>alert(1)</script>T /health HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01<script>alert(1)</script>\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header<script>alert(1)</script>: y\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nX: " + b"<script>alert(1)</script>" * 400 + b"\r\n\r\n",
        b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: <script>alert(1)</script>\r\n\r\n",
    ],
)
async def test_unparsable_requests_get_the_apis_json_400(make_client: AppFactory, request_bytes: bytes) -> None:
    client = await make_client()
    async with asyncio.timeout(3):
        reader, writer = await connect(client.port, request_bytes)
        try:
            data = await reader.read()
        finally:
            writer.transport.abort()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400")), data
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    assert headers[b"Content-Type"].startswith(b"application/json")
    for name, value in SECURITY_HEADERS.items():
        assert headers[name.encode()] == value.encode()
    assert b"X-Request-ID" in headers and b"Strict-Transport-Security" in headers
    parsed = orjson.loads(body)
    assert parsed["error"] == "bad_request" and parsed["message"].startswith("malformed request")
    assert b"script" not in data  # the request is never echoed
