"""One load-generator process: holds WebSocket connections and counts what they receive.

The orchestrator (:mod:`bench.scenarios`) drives it over a :mod:`multiprocessing` pipe
with small dict commands; every reply is a dict:

- ``{"op": "connect", "host", "port", "path", "dialect": "pubsub"|"sio", "token",
  "tokens" (optional: connection ``i`` uses ``tokens[i % len]``),
  "conns": [[index, [topic, ...]], ...], "sample": [index, ...], "concurrency": int,
  "deflate": bool (optional: offer permessage-deflate)}`` opens (and LISTENs) every
  connection -> ``{"ok", "failed", "errors", "elapsed_s", "handshake_ns": bytes,
  "deflated"}`` (``array('q')`` of per-connection setup times; connections that
  negotiated permessage-deflate).
- ``{"op": "reset"}`` zeroes the counters -> ``{}``.
- ``{"op": "drain", "expected": {topic: count}, "timeout": s}`` waits until every
  expected message arrived or ``timeout`` -> ``{"received", "expected", "lost",
  "duplicated", "reordered", "latencies_ns": bytes, "last_ns", "open"}``.
- ``{"op": "drop"}`` closes every connection -> ``{}``.
- ``{"op": "close"}`` closes everything and ends the process -> ``{}``.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from multiprocessing.connection import Connection
from typing import Any

from bench.procstat import run_generator
from bench.wsclient import Dialect, PubSubDialect, SocketIODialect, Stats, WsClient, connect

DIALECTS: dict[str, type[Dialect]] = {"pubsub": PubSubDialect, "sio": SocketIODialect}


class Generator:
    """The connections of this process and their counters."""

    def __init__(self) -> None:
        self.clients: list[tuple[WsClient, list[str]]] = []

    async def connect(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Open the connections of ``cmd`` with bounded concurrency."""
        sem = asyncio.Semaphore(int(cmd.get("concurrency", 100)))
        sample = set(cmd.get("sample", []))
        handshakes = array("q")
        errors: list[str] = []
        dialect_cls = DIALECTS[cmd["dialect"]]

        tokens: list[str] = cmd.get("tokens") or [cmd.get("token", "")]
        deflate = bool(cmd.get("deflate", False))
        deflated = 0

        async def one(index: int, topics: list[str]) -> None:
            nonlocal deflated
            async with sem:
                dialect = dialect_cls(topics, tokens[index % len(tokens)], Stats(index in sample))
                start = time.monotonic_ns()
                try:
                    client = await asyncio.wait_for(
                        connect(cmd["host"], cmd["port"], cmd["path"], dialect, deflate=deflate),
                        cmd.get("timeout", 20),
                    )
                except (OSError, TimeoutError, Exception) as exc:  # noqa: BLE001 - reported, not raised
                    errors.append(f"{type(exc).__name__}: {exc}"[:300])
                    return
                handshakes.append(time.monotonic_ns() - start)
                deflated += client.deflated
                self.clients.append((client, topics))

        start = time.monotonic()
        await asyncio.gather(*(one(i, t) for i, t in cmd["conns"]))
        return {
            "ok": len(handshakes),
            "failed": len(errors),
            "errors": errors[:3],
            "elapsed_s": time.monotonic() - start,
            "handshake_ns": handshakes.tobytes(),
            "deflated": deflated,
        }

    def reset(self) -> dict[str, Any]:
        """Zero every connection's counters."""
        for client, _ in self.clients:
            client.dialect.stats.reset()
        return {}

    async def drain(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Wait for the expected messages (or the timeout), then count."""
        expected_by_topic: dict[str, int] = cmd["expected"]
        expected = sum(sum(expected_by_topic.get(t, 0) for t in topics) for _, topics in self.clients)
        deadline = time.monotonic() + float(cmd["timeout"])
        while time.monotonic() < deadline:
            if sum(c.dialect.stats.received for c, _ in self.clients) >= expected:
                break
            await asyncio.sleep(0.02)
        received = duplicated = reordered = lost = last_ns = 0
        latencies = array("q")
        for client, topics in self.clients:
            stats = client.dialect.stats
            want = sum(expected_by_topic.get(t, 0) for t in topics)
            received += stats.received
            duplicated += stats.duplicated
            reordered += stats.reordered
            lost += max(0, want - stats.unique)
            last_ns = max(last_ns, stats.last_ns)
            latencies.extend(stats.latencies)
        return {
            "received": received,
            "expected": expected,
            "lost": lost,
            "duplicated": duplicated,
            "reordered": reordered,
            "latencies_ns": latencies.tobytes(),
            "last_ns": last_ns,
            "open": sum(1 for c, _ in self.clients if not c.closed.done()),
        }

    async def close(self) -> dict[str, Any]:
        """Abort every connection."""
        for client, _ in self.clients:
            client.close()
        await asyncio.sleep(0.05)
        self.clients.clear()
        return {}


async def _serve(pipe: Connection) -> None:
    loop = asyncio.get_running_loop()
    gen = Generator()
    while True:
        cmd: dict[str, Any] = await loop.run_in_executor(None, pipe.recv)
        op = cmd["op"]
        if op == "connect":
            pipe.send(await gen.connect(cmd))
        elif op == "reset":
            pipe.send(gen.reset())
        elif op == "drain":
            pipe.send(await gen.drain(cmd))
        elif op == "drop":
            pipe.send(await gen.close())
        else:
            pipe.send(await gen.close())
            return


def main(pipe: Connection) -> None:
    """Process entry point: serve commands from ``pipe`` until ``close``."""
    run_generator(lambda: _serve(pipe))
