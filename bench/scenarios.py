"""The measurements: fan-out runs, idle memory per connection, connection setup rate.

:class:`Fleet` owns the load-generator processes (:mod:`bench.loadgen`) and the
publisher process (:mod:`bench.publisher`); the functions here drive one server
(:class:`bench.servers.Server`) through one scenario and return a JSON-ready dict.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from array import array
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from bench import loadgen, publisher
from bench.procstat import Cpu, cpu, listen_overflows, loadavg, rss_bytes
from bench.servers import API_KEY, Server

CLIENT_LIMIT_PCT = 80.0
"""A generator process above this share of one core may be the bottleneck."""
SAMPLED_CONNECTIONS = 64
"""About this many connections, spread over the connection order, record latencies."""


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted values (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(pct / 100 * len(sorted_values) + 0.5) - 1))
    return float(sorted_values[rank])


class Fleet:
    """``workers`` load-generator processes and one publisher process."""

    def __init__(self, workers: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs: list[BaseProcess] = []
        for target in [loadgen.main] * workers + [publisher.main]:
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=target, args=(theirs,), daemon=True)
            proc.start()
            self.pipes.append(mine)
            self.procs.append(proc)
        self.gens = self.pipes[:-1]
        self.pub = self.pipes[-1]

    def all(self, cmds: list[dict[str, Any]], timeout: float = 120.0) -> list[dict[str, Any]]:
        """Send one command to each generator, then collect every reply."""
        for pipe, cmd in zip(self.gens, cmds, strict=True):
            pipe.send(cmd)
        replies = []
        for pipe in self.gens:
            if not pipe.poll(timeout):
                raise TimeoutError("a load generator did not answer")
            replies.append(pipe.recv())
        return replies

    def close_connections(self) -> None:
        """Close every generator's connections but keep the processes."""
        self.all([{"op": "drop"}] * len(self.gens))

    def client_pids(self) -> list[int]:
        """Generator and publisher process ids."""
        return [p.pid for p in self.procs if p.pid is not None]

    def stop(self) -> None:
        """End every process (close command, then terminate stragglers)."""
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send({"op": "close"})
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)


def open_listeners(
    server: Server,
    fleet: Fleet,
    listeners: int,
    topics: list[str],
    *,
    concurrency: int = 100,
    tokens: list[str] | None = None,
    deflate: bool = False,
) -> dict[str, Any]:
    """Open ``listeners`` connections, connection ``i`` LISTENing to ``topics[i % len]``.

    Connections are dealt round-robin to the generators; about
    :data:`SAMPLED_CONNECTIONS` of them, evenly spaced, record latencies.

    ``deflate``: the clients offer permessage-deflate.

    Returns:
        ``{"ok", "failed", "errors", "elapsed_s", "conn_per_s", "handshake_ms": {p50, p99, max},
        "listen_overflows", "deflated"}`` (SYNs the kernel dropped because the accept queue was
        full: each costs the client a 1 s SYN retransmission; connections that negotiated
        permessage-deflate).
    """
    stride = max(1, listeners // SAMPLED_CONNECTIONS)
    n = len(fleet.gens)
    cmds = [
        {
            "op": "connect",
            "host": "127.0.0.1",
            "port": server.port,
            "path": server.path,
            "dialect": server.dialect,
            "token": server.token,
            "tokens": tokens or [],
            "conns": [[i, [topics[i % len(topics)]]] for i in range(w, listeners, n)],
            "sample": list(range(0, listeners, stride)),
            "concurrency": concurrency,
            "deflate": deflate,
        }
        for w in range(n)
    ]
    overflows = listen_overflows()
    replies = fleet.all(cmds)
    overflows = listen_overflows() - overflows
    handshakes = array("q")
    for reply in replies:
        handshakes.frombytes(reply["handshake_ns"])
    ms = sorted(x / 1e6 for x in handshakes)
    elapsed = max(r["elapsed_s"] for r in replies)
    ok = sum(r["ok"] for r in replies)
    return {
        "ok": ok,
        "failed": sum(r["failed"] for r in replies),
        "errors": [e for r in replies for e in r["errors"]][:3],
        "elapsed_s": round(elapsed, 3),
        "conn_per_s": round(ok / elapsed, 1) if elapsed else 0.0,
        "handshake_ms": {"p50": percentile(ms, 50), "p99": percentile(ms, 99), "max": ms[-1] if ms else 0.0},
        "listen_overflows": overflows,
        "deflated": sum(r.get("deflated", 0) for r in replies),
    }


def measure(
    server: Server,
    fleet: Fleet,
    topics: list[str],
    *,
    rate: float,
    duration: float,
    size: int,
    listeners: int,
    mode: str | None = None,
) -> dict[str, Any]:
    """Publish ``rate`` msgs/s for ``duration`` s over ``topics`` and count the deliveries.

    ``mode``: the publisher's mode (:mod:`bench.publisher`), by default the server's.

    Returns:
        One run's figures: offered and delivered rates, latency (ms), loss, duplicates,
        server and client CPU, server CPU microseconds per delivery, load averages.
    """
    count = max(1, round(rate * duration))
    before_load = loadavg()
    fleet.all([{"op": "reset"}] * len(fleet.gens))
    server_pids, client_pids = server.pids(), fleet.client_pids()
    client_cpu0 = {pid: cpu([pid]) for pid in client_pids}
    server_cpu0, t0 = cpu(server_pids), time.monotonic()
    fleet.pub.send(
        {"op": "publish", "mode": mode or server.publish_mode, "redis_url": server.redis_url, "channel": server.channel}
        | {"url": server.url, "api_key": API_KEY, "topics": topics}
        | {"rate": rate, "count": count, "size": size}
    )
    pub = fleet.pub.recv()
    drain = fleet.all([{"op": "drain", "expected": pub["per_topic"], "timeout": 5 + duration}] * len(fleet.gens))
    wall = time.monotonic() - t0
    server_cpu = cpu(server.pids()) - server_cpu0
    client_cpu = {pid: cpu([pid]) - c0 for pid, c0 in client_cpu0.items()}
    return _figures(pub, drain, wall, server_cpu, client_cpu, rate, listeners, before_load)


def _figures(
    pub: dict[str, Any],
    drain: list[dict[str, Any]],
    wall: float,
    server_cpu: Cpu,
    client_cpu: dict[int, Cpu],
    rate: float,
    listeners: int,
    before_load: list[float],
) -> dict[str, Any]:
    lat = array("q")
    for reply in drain:
        lat.frombytes(reply["latencies_ns"])
    ms = sorted(x / 1e6 for x in lat)
    received = sum(r["received"] for r in drain)
    last_ns = max(r["last_ns"] for r in drain)
    span = max(1e-9, (max(last_ns, pub["end_ns"]) - pub["start_ns"]) / 1e9)
    pub_span = max(1e-9, (pub["end_ns"] - pub["start_ns"]) / 1e9)
    client_pct = {str(pid): round(100 * c.total / wall, 1) for pid, c in client_cpu.items()}
    client_total = sum(c.total for c in client_cpu.values())
    return {
        "offered_msgs_per_s": rate,
        "published": pub["published"],
        "publish_errors": pub["error_count"],
        "publish_rate": round(pub["published"] / pub_span, 1),
        "expected": sum(r["expected"] for r in drain),
        "delivered": received,
        "lost": sum(r["lost"] for r in drain),
        "duplicated": sum(r["duplicated"] for r in drain),
        "reordered": sum(r["reordered"] for r in drain),
        "open_connections": sum(r["open"] for r in drain),
        "listeners": listeners,
        "deliveries_per_s": round(received / span, 1),
        "latency_ms": {
            "p50": round(percentile(ms, 50), 3),
            "p99": round(percentile(ms, 99), 3),
            "max": round(ms[-1], 3) if ms else 0.0,
            "samples": len(ms),
        },
        "wall_s": round(wall, 3),
        "server_cpu": {
            "user_s": round(server_cpu.user, 3),
            "system_s": round(server_cpu.system, 3),
            "pct": round(100 * server_cpu.total / wall, 1),
        },
        "server_us_per_delivery": round(1e6 * server_cpu.total / received, 3) if received else None,
        "client_cpu": {
            "total_s": round(client_total, 3),
            "pct_by_process": client_pct,
            "max_pct": max(client_pct.values(), default=0.0),
            "us_per_delivery": round(1e6 * client_total / received, 3) if received else None,
        },
        "client_limited": max(client_pct.values(), default=0.0) > CLIENT_LIMIT_PCT,
        "loadavg_before": before_load,
        "loadavg_after": loadavg(),
    }


def passed(run: dict[str, Any], p99_limit_ms: float = 100.0) -> bool:
    """No loss, no duplicates, p99 under the limit, and the publisher kept its rate."""
    return bool(
        run["lost"] == 0
        and run["duplicated"] == 0
        and run["publish_errors"] == 0
        and run["latency_ms"]["p99"] < p99_limit_ms
        and run["publish_rate"] >= 0.9 * run["offered_msgs_per_s"]
    )


def overloaded(run: dict[str, Any], p99_limit_ms: float = 500.0) -> bool:
    """Loss, duplicates, p99 over ``p99_limit_ms``, or under 90% of the offered rate
    published or delivered: no point offering more."""
    offered = run["offered_msgs_per_s"] * run["expected"] / max(1, run["published"])
    return bool(
        run["lost"]
        or run["duplicated"]
        or run["latency_ms"]["p99"] > p99_limit_ms
        or run["publish_rate"] < 0.9 * run["offered_msgs_per_s"]
        or run["deliveries_per_s"] < 0.9 * offered
    )


def idle_memory(
    server: Server, fleet: Fleet, connections: int, settle_s: float = 2.0, *, compression: bool = False
) -> dict[str, Any]:
    """RSS growth of the server tree per idle, LISTENing connection.

    The baseline is taken after one warm-up connection (so lazily built state is in
    it); RSS is read again ``settle_s`` after the last connection is up. With
    ``compression`` the clients offer permessage-deflate (the server must have been
    started with :attr:`Server.compression` to enable it where that is a setting);
    ``deflated`` counts the connections that negotiated it.
    """
    topics = [f"channel:update.{i}" for i in range(1000)]
    open_listeners(server, fleet, 1, topics, deflate=compression)
    time.sleep(settle_s)
    base = rss_bytes(server.pids())
    setup = open_listeners(server, fleet, connections, topics, deflate=compression)
    time.sleep(settle_s)
    grown = rss_bytes(server.pids())
    return {
        "connections": setup["ok"],
        "failed": setup["failed"],
        "compression": compression,
        "deflated": setup["deflated"],
        "rss_before_mb": round(base / 2**20, 1),
        "rss_after_mb": round(grown / 2**20, 1),
        "kb_per_connection": round((grown - base) / 1024 / max(1, setup["ok"]), 2),
        "loadavg": loadavg(),
    }
