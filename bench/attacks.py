"""Hostile clients for :mod:`bench.hostile`: bounded floods from loopback, in their own process.

Each attack is a fixed number of concurrent loops against ``127.0.0.1`` only, each loop paced
and stopped at a deadline, so the load offered is known and ends on time. Each kind comes from
its own loopback source address (:data:`SOURCES`), so each meets the server's per-address limits
on its own, as separate attackers would; a refused handshake is retried after 1-2 s.

- ``stalled``: sockets that send part of an HTTP request head and stop (slow loris); one
  the server drops is reopened after 0.2 s.
- ``badsig``: WebSocket connections sending LISTENs with a forged token (the real ``kid``
  of the server's key, a random signature: a full ES256 check if nothing stops it), a new
  signature in every LISTEN so no cache can help; a closed or refused connection reconnects
  after 0.5 s.
- ``listen``: connections sending LISTENs for a public topic (no token) as fast as asked.
- ``oversized``: connections that send one frame larger than ``MAX_FRAME_BYTES`` (64 KB).

Driven over a pipe: ``{"attacks": {name: {"conns": n, "rate": per conn per s}}, "port",
"token", "duration"}`` -> counters ``{name: {event: count}}`` (opened, sent, refused HTTP
statuses, replies by error code, closes by code, errors).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import re
import struct
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from bench.wsclient import client_frame

HOST = "127.0.0.1"
SOURCES = {"badsig": "127.0.0.1", "listen": "127.0.0.3", "oversized": "127.0.0.4", "stalled": "127.0.0.5"}
_ERROR = re.compile(rb'"error":"([A-Z_]*)"')
_HANDSHAKE = (
    "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
_STALLED_HEADS = (b"GET /health HTTP/1.1\r\nHost: x\r\nUser-Agent: slow", b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgr")


def forged(token: str) -> bytes:
    """``token`` with a random 64-byte signature (a new one each call)."""
    head, body, _ = token.split(".")
    signature = base64.urlsafe_b64encode(os.urandom(64)).rstrip(b"=").decode()
    return f"{head}.{body}.{signature}".encode()


async def _read_frames(reader: asyncio.StreamReader, counts: Counter[str]) -> None:
    """Count the server's frames (replies by error code) until it closes (counted by code)."""
    while True:
        b0, b1 = await reader.readexactly(2)
        size = b1 & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", await reader.readexactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", await reader.readexactly(8))
        payload = await reader.readexactly(size)
        opcode = b0 & 0x0F
        if opcode == 0x1:
            match = _ERROR.search(payload)
            if match is not None:
                counts[f"reply {match[1].decode() or 'ok'}"] += 1
        elif opcode == 0x8:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            counts[f"close {code}"] += 1
            return


async def _open_ws(
    port: int, counts: Counter[str], source: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(_HANDSHAKE.format(host=f"{HOST}:{port}", key=key).encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    if not head.startswith(b"HTTP/1.1 101"):
        counts[f"refused {head[9:12].decode(errors='replace')}"] += 1
        writer.close()
        return None
    counts["opened"] += 1
    return reader, writer


async def _ws_loop(
    port: int,
    deadline: float,
    rate: float,
    frame: Callable[[], bytes],
    counts: Counter[str],
    source: str,
    once: bool = False,
) -> None:
    """Connect, send ``frame()`` ``rate`` times per second until closed or the deadline; again."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(random.random() / max(rate, 1.0))  # spread the loops' phases
    while loop.time() < deadline:
        writer = None
        try:
            opened = await _open_ws(port, counts, source)
            if opened is None:
                await asyncio.sleep(1 + random.random())
                continue
            reader, writer = opened
            frames = asyncio.ensure_future(_read_frames(reader, counts))
            try:
                while loop.time() < deadline and not frames.done():
                    writer.write(frame())
                    counts["sent"] += 1
                    if once:
                        await asyncio.wait_for(asyncio.shield(frames), 5)
                        break
                    await asyncio.sleep(1 / rate)
            finally:
                frames.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await frames
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            counts[f"error {type(exc).__name__}"] += 1
        finally:
            if writer is not None:
                writer.close()
        await asyncio.sleep(1 / rate if once else 0.5)


async def _stalled_loop(port: int, deadline: float, counts: Counter[str], head: bytes, source: str) -> None:
    """Hold one socket that sent a partial head; reopen it when the server drops it."""
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        writer = None
        try:
            reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
            writer.write(head)
            counts["opened"] += 1
            left = deadline - loop.time()
            try:
                data = await asyncio.wait_for(reader.read(4096), max(0.0, left))
                counts["dropped by server" if not data else "answered"] += 1
            except TimeoutError:
                counts["held to the end"] += 1
        except OSError as exc:
            counts[f"error {type(exc).__name__}"] += 1
        finally:
            if writer is not None:
                writer.close()
        await asyncio.sleep(0.2)


async def run(cmd: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Run the attacks in ``cmd`` until its duration is over; returns their counters."""
    loop = asyncio.get_running_loop()
    port, token = int(cmd["port"]), str(cmd["token"])
    deadline = loop.time() + float(cmd["duration"])
    counters: dict[str, Counter[str]] = {}
    tasks = []
    for name, spec in cmd["attacks"].items():
        counts = counters[name] = Counter()
        conns, rate, source = int(spec["conns"]), float(spec.get("rate", 1.0)), SOURCES[name]
        for i in range(conns):
            if name == "stalled":
                coro = _stalled_loop(port, deadline, counts, _STALLED_HEADS[i % 2], source)
            elif name == "badsig":
                frame = lambda: client_frame(  # noqa: E731
                    b'{"type":"LISTEN","nonce":"b","data":{"topics":["remote-control:command.7"],"auth_token":"%s"}}'
                    % forged(token)
                )
                coro = _ws_loop(port, deadline, rate, frame, counts, source)
            elif name == "listen":
                body = client_frame(b'{"type":"LISTEN","nonce":"l","data":{"topics":["dream:update.flood"]}}')
                coro = _ws_loop(port, deadline, rate, _constant(body), counts, source)
            elif name == "oversized":
                coro = _ws_loop(port, deadline, rate, _constant(client_frame(b"x" * 65536)), counts, source, once=True)
            else:
                raise ValueError(f"unknown attack {name}")
            tasks.append(asyncio.ensure_future(coro))
    await asyncio.wait(tasks, timeout=float(cmd["duration"]) + 15)
    for task in tasks:
        task.cancel()
    return {name: dict(counts) for name, counts in counters.items()}


def _constant(frame: bytes) -> Callable[[], bytes]:
    return lambda: frame


def main(pipe: Connection) -> None:
    """Process entry point: one command in, counters out."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    cmd = pipe.recv()
    pipe.send(asyncio.run(run(cmd)))
