"""The reconnect storm's client side: connections that LISTEN with ``since`` and recover.

One process (:func:`main`, driven over a pipe like :mod:`bench.loadgen`) holds a share of
the storm's connections. Each connection (:class:`RecoveringDialect`) LISTENs to one topic
with ``since = (offset, epoch)``, counts the MESSAGEs that follow the RESPONSE, checks that
the first ``expect`` carry offsets ``offset + 1 .. offset + expect`` in order, notes when the
last of them arrived, and then stamps the first live MESSAGE (an offset past those) against
its send stamp (``~<n>~<monotonic ns>~``, taken when parsed: a storm client is busy, so this
is an upper bound on the server's part).

Commands -> replies:

- ``{"op": "storm", "host", "port", "token", "conns": [[topic, offset, epoch], ...],
  "expect", "concurrency", "timeout"}`` opens every connection (at most ``concurrency``
  handshakes in flight) and waits until each recovered ``expect`` MESSAGEs or ``timeout`` s
  -> ``{"ok", "failed", "errors", "complete", "out_of_order", "gaps", "recovered_ns":
  bytes, "connected_ns": bytes, "catch_up_ns": bytes}`` (``array('q')`` of monotonic ns, one per
  complete connection / per open connection; ns from a complete connection's RESPONSE to its
  last recovered MESSAGE).
- ``{"op": "live", "timeout"}`` waits until every open connection got a live MESSAGE ->
  ``{"got", "latencies_ns": bytes}``.
- ``{"op": "close"}`` closes everything and ends the process -> ``{}``.
"""

from __future__ import annotations

import asyncio
import re
import time
from array import array
from multiprocessing.connection import Connection
from typing import Any, Final

import orjson

from bench.procstat import run_generator, serve_commands
from bench.wsclient import STAMP, Dialect, Stats, WsClient, connect

OFFSET: Final = re.compile(rb'"offset":(\d+)')


class RecoveringDialect(Dialect):
    """Our protocol: LISTEN with ``since``, then count recovered and live MESSAGEs."""

    def __init__(self, topic: str, token: str, since: int, epoch: str, expect: int) -> None:
        super().__init__([topic], token, Stats(False))
        self.since = since
        self.epoch = epoch
        self.expect = expect
        self.count = self.out_of_order = self.gaps = 0
        self.recovered_ns = self.live_latency_ns = 0
        self.connected_ns = 0

    def opened(self) -> None:
        topic = self.topics[0]
        data = {
            "topics": [topic],
            "auth_token": self.token,
            "since": {topic: {"offset": self.since, "epoch": self.epoch}},
        }
        assert self.client is not None
        self.client.send_text(orjson.dumps({"type": "LISTEN", "nonce": "s", "data": data}))

    def text(self, data: bytes) -> None:
        if data.startswith(b'{"type":"MESSAGE"'):
            match = OFFSET.search(data)
            offset = int(match[1]) if match else 0
            if offset > self.since + self.expect:
                self._live(data)
                return
            if offset != self.since + 1 + self.count:
                self.out_of_order += 1
            self.count += 1
            if self.count == self.expect:
                self.recovered_ns = time.monotonic_ns()
        elif data.startswith(b'{"type":"RESPONSE"') and not self.ready.done():
            if b'"error":""' in data:
                self.connected_ns = time.monotonic_ns()
                self.ready.set_result(None)
            else:
                self.fail(data.decode())
        elif data.startswith(b'{"type":"GAP"'):
            self.gaps += 1

    def _live(self, data: bytes) -> None:
        stamp = STAMP.search(data)
        if stamp is not None and not self.live_latency_ns:
            self.live_latency_ns = max(1, time.monotonic_ns() - int(stamp[2]))


class Storm:
    """This process's storm connections."""

    def __init__(self) -> None:
        self.clients: list[WsClient] = []
        self.dialects: list[RecoveringDialect] = []

    async def storm(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Open every connection of ``cmd`` and wait until they recovered (or the timeout)."""
        sem = asyncio.Semaphore(int(cmd["concurrency"]))
        errors: list[str] = []
        expect, deadline = int(cmd["expect"]), time.monotonic() + float(cmd["timeout"])

        async def one(topic: str, since: int, epoch: str) -> None:
            dialect = RecoveringDialect(topic, cmd["token"], since, epoch, expect)
            async with sem:
                try:
                    client = await asyncio.wait_for(
                        connect(cmd["host"], cmd["port"], "/ws", dialect), max(0.1, deadline - time.monotonic())
                    )
                except (OSError, TimeoutError, Exception) as exc:  # noqa: BLE001 - reported, not raised
                    errors.append(f"{type(exc).__name__}: {exc}"[:300])
                    return
            self.clients.append(client)
            self.dialects.append(dialect)

        await asyncio.gather(*(one(t, int(o), e) for t, o, e in cmd["conns"]))
        while time.monotonic() < deadline and any(d.count < expect for d in self.dialects):  # noqa: ASYNC110 - counts, no event
            await asyncio.sleep(0.01)
        done = [d for d in self.dialects if d.count >= expect]
        return {
            "ok": len(self.dialects),
            "failed": len(errors),
            "errors": errors[:3],
            "complete": len(done),
            "out_of_order": sum(d.out_of_order for d in self.dialects),
            "gaps": sum(d.gaps for d in self.dialects),
            "recovered_ns": array("q", (d.recovered_ns for d in done)).tobytes(),
            "connected_ns": array("q", (d.connected_ns for d in self.dialects)).tobytes(),
            "catch_up_ns": array("q", (d.recovered_ns - d.connected_ns for d in done)).tobytes(),
        }

    async def live(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Wait until every open connection got its first live MESSAGE (or the timeout)."""
        deadline = time.monotonic() + float(cmd["timeout"])
        while time.monotonic() < deadline and any(not d.live_latency_ns for d in self.dialects):  # noqa: ASYNC110 - counts, no event
            await asyncio.sleep(0.01)
        got = [d.live_latency_ns for d in self.dialects if d.live_latency_ns]
        return {"got": len(got), "latencies_ns": array("q", got).tobytes()}

    async def close(self) -> dict[str, Any]:
        """Abort every connection."""
        for client in self.clients:
            client.close()
        await asyncio.sleep(0.05)
        self.clients.clear()
        self.dialects.clear()
        return {}


async def _serve(pipe: Connection) -> None:
    storm = Storm()
    await serve_commands(pipe, {"storm": storm.storm, "live": storm.live}, storm.close)


def main(pipe: Connection) -> None:
    """Process entry point: serve commands from ``pipe`` until ``close``."""
    run_generator(lambda: _serve(pipe))
