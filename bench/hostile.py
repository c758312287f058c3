"""``python -m bench.hostile``: a legitimate publisher and listener beside hostile clients.

One server (ours, memory broker, the production limits) on loopback. A legitimate listener
(one WebSocket LISTENing with a valid token, kernel receive stamps) and publisher
(``POST /publish`` at ``--rate`` msgs/s) run in one process from the source address
``127.0.0.2``, so the server's per-address limits tell them apart from the attackers
(:mod:`bench.attacks`, another process, from other loopback addresses). The same process probes
``GET /health`` four times a second. Reported: messages lost (must be 0), the listener's
publish-to-deliver p50/p99/max, ``/health`` latency, server CPU, and the attackers' counters.

Attack sets (``--attack``): ``none``; ``badsig`` (the issue-14 flood: 1,000 connections x 10
LISTENs/s with forged tokens); ``mixed`` (stalled heads, a bad-signature flood, a LISTEN
flood and oversized frames at once). ``--server-root`` runs another source tree (an export
of an older commit) for paired before/after runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench import attacks
from bench.procstat import cpu, raise_fd_limit
from bench.publisher import Publisher
from bench.scenarios import percentile
from bench.servers import API_KEY, Server
from bench.wsclient import PubSubDialect, Stats, connect

LEGIT_ADDR = "127.0.0.2"
TOPIC = "remote-control:command.7"
ATTACKS: dict[str, dict[str, dict[str, float]]] = {
    "none": {},
    "badsig": {"badsig": {"conns": 1000, "rate": 10}},
    "mixed": {
        "stalled": {"conns": 200},
        "badsig": {"conns": 400, "rate": 10},
        "listen": {"conns": 200, "rate": 20},
        "oversized": {"conns": 10, "rate": 2},
    },
}
SERVER_ENV = {
    # the production limits, back on (bench.servers turns them off for the fan-out runs)
    "MAX_CONNECTIONS_PER_IP": "1000",
    "MAX_CONNECTIONS_PER_USER": "20",
    "LISTEN_RATE": "10",
    "TOKEN_CHECK_RATE_PER_IP": "50",
    "LISTEN_TIMEOUT": "15",
    "IDLE_TIMEOUT": "330",
    "CONNECT_RATE_PER_IP": "20",
    "CONNECT_BURST_PER_IP": "40",
}
RAMP_RATE = 20.0
"""Connections per second per address the flood can open (``CONNECT_RATE_PER_IP``): the
measurement starts once the largest attack had time to reach its size."""


async def _legit(cmd: dict[str, Any], pipe: Connection) -> dict[str, Any]:
    port, url = int(cmd["port"]), f"http://127.0.0.1:{cmd['port']}"
    stats = Stats(sampled=True)
    client = await connect("127.0.0.1", port, "/ws", PubSubDialect([TOPIC], cmd["token"], stats), local_addr=LEGIT_ADDR)
    pipe.send({"ready": True})
    await asyncio.get_running_loop().run_in_executor(None, pipe.recv)  # the attack is under way
    stats.reset()
    health: list[float] = []
    done = asyncio.Event()

    async def probe() -> None:
        connector = aiohttp.TCPConnector(local_addr=(LEGIT_ADDR, 0), force_close=True)
        async with aiohttp.ClientSession(connector=connector) as http:
            while not done.is_set():
                started = time.monotonic()
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(url + "/health", timeout=aiohttp.ClientTimeout(total=10)) as resp:
                        await resp.read()
                health.append((time.monotonic() - started) * 1000)
                await asyncio.sleep(0.25)

    prober = asyncio.ensure_future(probe())
    rate, duration = float(cmd["rate"]), float(cmd["duration"])
    publish = {"mode": "http", "url": url, "api_key": API_KEY, "topics": [TOPIC], "size": 200, "local_addr": LEGIT_ADDR}
    pub = await Publisher(publish | {"rate": rate, "count": max(1, round(rate * duration))}).run()
    deadline = time.monotonic() + 5
    while stats.unique < pub["published"] and time.monotonic() < deadline:  # noqa: ASYNC110 - counts, no event
        await asyncio.sleep(0.05)
    done.set()
    await prober
    client.close()
    ms = sorted(x / 1e6 for x in stats.latencies)
    health.sort()
    return {
        "published": pub["published"],
        "publish_errors": pub["error_count"],
        "delivered": stats.unique,
        "lost": pub["published"] - stats.unique,
        "duplicated": stats.duplicated,
        "latency_ms": {k: round(percentile(ms, p), 2) for k, p in (("p50", 50), ("p99", 99), ("max", 100))},
        "health_ms": {k: round(percentile(health, p), 2) for k, p in (("p50", 50), ("p99", 99), ("max", 100))},
        "health_probes": len(health),
    }


def legit_main(pipe: Connection) -> None:
    """Process entry point of the legitimate client."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    cmd = pipe.recv()
    pipe.send(asyncio.run(_legit(cmd, pipe)))


def run(attack: str, *, duration: float, rate: float, redis_url: str, root: Path | None = None) -> dict[str, Any]:
    """One run: start the server, the legitimate client and the attackers; returns the figures."""
    server = Server("ours-memory", redis_url, env=SERVER_ENV)
    if root is not None:
        server.root = root
    ctx = multiprocessing.get_context("spawn")
    procs = []
    try:
        server.start()
        legit_pipe, theirs = ctx.Pipe()
        legit = ctx.Process(target=legit_main, args=(theirs,), daemon=True)
        legit.start()
        procs.append(legit)
        legit_pipe.send({"port": server.port, "token": server.token, "rate": rate, "duration": duration})
        if not legit_pipe.poll(30):
            raise TimeoutError("the legitimate client did not connect")
        legit_pipe.recv()
        attack_pipe, theirs = ctx.Pipe()
        attacker = ctx.Process(target=attacks.main, args=(theirs,), daemon=True)
        attacker.start()
        procs.append(attacker)
        largest = max((spec["conns"] for spec in ATTACKS[attack].values()), default=0)
        warmup = largest / RAMP_RATE + 3.0 if largest else 0.0
        cmd = {
            "attacks": ATTACKS[attack],
            "port": server.port,
            "token": server.token,
            "duration": duration + warmup + 6,
        }
        attack_pipe.send(cmd)
        time.sleep(warmup)  # the flood reaches its size before the measurement starts
        cpu0, t0 = cpu(server.pids()), time.monotonic()
        legit_pipe.send({"go": True})
        if not legit_pipe.poll(duration + 60):
            raise TimeoutError("the legitimate client did not report")
        result: dict[str, Any] = legit_pipe.recv()
        used = cpu(server.pids()) - cpu0
        result["server_cpu_pct"] = round(100 * used.total / (time.monotonic() - t0), 1)
        result["attacks"] = attack_pipe.recv() if attack_pipe.poll(duration + 60) else {"error": "no report"}
        result.update(attack=attack, duration_s=duration, rate=rate, attack_spec=ATTACKS[attack])
        result["passed"] = result["lost"] == 0 and result["publish_errors"] == 0 and result["latency_ms"]["p99"] < 50
        return result
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
        server.stop()


def main(argv: list[str] | None = None) -> int:
    """Run ``--attack`` for ``--duration`` seconds; print and write the JSON; 1 if it failed."""
    parser = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__)
    parser.add_argument("--attack", choices=sorted(ATTACKS), default="mixed")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds measured (default 60)")
    parser.add_argument("--rate", type=float, default=50.0, help="legitimate publications per second")
    parser.add_argument("--server-root", type=Path, help="run the server from this source tree")
    parser.add_argument("--out", type=Path, help="write the JSON result here")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="unused: memory broker")
    args = parser.parse_args(argv)
    raise_fd_limit()
    result = run(args.attack, duration=args.duration, rate=args.rate, redis_url=args.redis_url, root=args.server_root)
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2)
    if args.out:
        args.out.write_bytes(text)
    print(text.decode())
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
