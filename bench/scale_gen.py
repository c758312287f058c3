"""The many-connections benchmark's client side: idle connections LISTENing to one topic.

One process (:func:`main`, driven over a pipe like :mod:`bench.storm`) holds a share of
:mod:`bench.scale`'s connections. Its sockets are bound to its own loopback source
addresses (``127.0.0.2`` and up), dealt round-robin, so that past ~28,000 connections the
ephemeral-port range (``net.ipv4.ip_local_port_range``, per source address) is not the
limit. Each connection LISTENs to one public topic (no token) and then stays idle; every
stamped MESSAGE (``~<seq>~<monotonic ns>~``) it receives is noted with the time it was
parsed (an upper bound on delivery: one process parses thousands of connections one after
another), and, on the ``sample`` connections spread over the opening order, with the
kernel's receive time (``SO_TIMESTAMPNS``, see :mod:`bench.wsclient`).

Commands -> replies:

- ``{"op": "open", "host", "port", "topic", "addrs", "count", "concurrency", "sample",
  "timeout"}`` opens ``count`` connections (at most ``concurrency`` handshakes in flight)
  -> ``{"ok", "sources", "failed", "errors", "setup_ns": bytes, "done_ns": bytes}`` (``array('q')``:
  per open connection, ns from its connect to its RESPONSE, and the monotonic ns of that
  RESPONSE; ``sources``: source address -> connections).
- ``{"op": "wait", "seq", "timeout"}`` waits until every open connection got publication
  ``seq`` (or the timeout) -> ``{"got", "dupes", "lost_conns", "parsed_ns": bytes,
  "kernel_ns": bytes}`` (monotonic ns of each arrival: parse time on all, kernel time on
  the sampled ones).
- ``{"op": "close"}`` closes everything and ends the process -> ``{}``.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from multiprocessing.connection import Connection
from typing import Any

from bench.procstat import run_generator, serve_commands
from bench.wsclient import STAMP, PubSubDialect, Stats, WsClient, connect


class Arrivals:
    """Every stamped MESSAGE this process received, by publication number."""

    def __init__(self) -> None:
        self.parsed: dict[int, array[int]] = {}
        self.kernel: dict[int, array[int]] = {}

    def note(self, data: bytes, rx_ns: int) -> int:
        """Note the publication in ``data`` (parse time now, kernel time ``rx_ns`` if known).

        Returns:
            Its number, -1 when ``data`` carries no stamp.
        """
        match = STAMP.search(data)
        if match is None:
            return -1
        seq = int(match[1])
        self.parsed.setdefault(seq, array("q")).append(time.monotonic_ns())
        if rx_ns:
            self.kernel.setdefault(seq, array("q")).append(rx_ns)
        return seq


class IdleListener(PubSubDialect):
    """LISTEN to one public topic without a token; note each stamped MESSAGE once."""

    def __init__(self, topic: str, arrivals: Arrivals, sampled: bool) -> None:
        super().__init__([topic], "", Stats(sampled))
        self.arrivals = arrivals
        self.last_seq = -1
        self.dupes = 0

    def opened(self) -> None:
        assert self.client is not None
        self.client.send_text(b'{"type":"LISTEN","nonce":"s","data":{"topics":["%s"]}}' % self.topics[0].encode())

    def text(self, data: bytes) -> None:
        if data.startswith(b'{"type":"MESSAGE"'):
            seq = self.arrivals.note(data, self.stats.rx_ns)
            if seq >= 0 and seq <= self.last_seq:
                self.dupes += 1
            self.last_seq = max(seq, self.last_seq)
        else:
            super().text(data)


class Crowd:
    """This process's connections."""

    def __init__(self) -> None:
        self.arrivals = Arrivals()
        self.clients: list[WsClient] = []
        self.listeners: list[IdleListener] = []

    async def open(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Open the connections of ``cmd`` (see the module docstring)."""
        sem = asyncio.Semaphore(int(cmd["concurrency"]))
        addrs: list[str] = cmd["addrs"]
        count, sample = int(cmd["count"]), max(1, int(cmd["sample"]))
        every = max(1, count // sample)
        deadline = time.monotonic() + float(cmd["timeout"])
        errors: list[str] = []
        setup, done = array("q"), array("q")

        async def one(i: int) -> None:
            listener = IdleListener(cmd["topic"], self.arrivals, i % every == every // 2)
            async with sem:
                start = time.monotonic_ns()
                try:
                    left = max(0.1, deadline - time.monotonic())
                    coro = connect(cmd["host"], cmd["port"], "/ws", listener, local_addr=addrs[i % len(addrs)])
                    client = await asyncio.wait_for(coro, left)
                except Exception as exc:  # noqa: BLE001 - reported, not raised
                    errors.append(f"{type(exc).__name__}: {exc}"[:300])
                    return
                now = time.monotonic_ns()
            setup.append(now - start)
            done.append(now)
            self.clients.append(client)
            self.listeners.append(listener)

        first = len(self.clients)
        await asyncio.gather(*(one(i) for i in range(count)))
        return {
            "ok": len(setup),
            "sources": _sources(self.clients[first:]),
            "failed": len(errors),
            "errors": sorted(set(errors))[:5],
            "setup_ns": setup.tobytes(),
            "done_ns": done.tobytes(),
        }

    async def wait(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Wait until every open connection got publication ``seq`` (or the timeout)."""
        seq, deadline = int(cmd["seq"]), time.monotonic() + float(cmd["timeout"])
        live = sum(1 for c in self.clients if c.transport is not None and not c.transport.is_closing())
        while len(self.arrivals.parsed.get(seq, ())) < live and time.monotonic() < deadline:  # noqa: ASYNC110 - counts, no event
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)  # late duplicates, if any
        return {
            "got": len(self.arrivals.parsed.get(seq, ())),
            "open": live,
            "dupes": sum(d.dupes for d in self.listeners),
            "lost_conns": len(self.clients) - live,
            "parsed_ns": self.arrivals.parsed.get(seq, array("q")).tobytes(),
            "kernel_ns": self.arrivals.kernel.get(seq, array("q")).tobytes(),
        }

    async def close(self) -> dict[str, Any]:
        """Abort every connection."""
        for client in self.clients:
            client.close()
        await asyncio.sleep(0.1)
        self.clients.clear()
        self.listeners.clear()
        return {}


def _sources(clients: list[WsClient]) -> dict[str, int]:
    """How many of ``clients`` have each local (source) address."""
    found: dict[str, int] = {}
    for client in clients:
        name = client.transport.get_extra_info("sockname") if client.transport is not None else None
        if name:
            found[name[0]] = found.get(name[0], 0) + 1
    return found


async def _serve(pipe: Connection) -> None:
    crowd = Crowd()
    await serve_commands(pipe, {"open": crowd.open, "wait": crowd.wait}, crowd.close)


def main(pipe: Connection) -> None:
    """Process entry point: serve commands from ``pipe`` until ``close``."""
    run_generator(lambda: _serve(pipe))
