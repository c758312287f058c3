"""``python -m bench.routing``: what per-topic routing saves an instance (issue 17).

The remote-control shape, on loopback against a private ``redis-server``
(:mod:`bench.private_redis`), bounded in count and time:

- ``--users`` users (10,000) with one device each: connection ``i`` LISTENs to the public
  topic ``channel:update.u<i>`` (no history; every connection sends the same valid WS
  token) on instance ``i mod N`` of N server instances (``--instances``, 1,2,4), each
  ``realtime serve`` with one worker and the Redis broker, all on one Redis and one
  ``REDIS_CHANNEL``. The connections come from ``--generators`` load-generator processes
  (:mod:`bench.loadgen`).
- The publisher (:mod:`bench.publisher`) sends ``--rate`` commands/s in total for
  ``--duration`` s, round-robin over the users (each instance gets its equal share), each
  carrying its sequence number in its topic. Mode ``single``: raw ``PUBLISH <channel>
  {"topic","message"}`` on the firehose, instances with ``REDIS_FIREHOSE=true``, so every
  instance receives every command. Mode ``topic``: ``PUBLISH <channel>:{<topic>} {...}``,
  instances with ``REDIS_FIREHOSE=false``, so each receives only its users' commands.

Measured per instance: CPU over the window (``/proc``), CPU over a quiet ``--idle`` s just
before it (what its idle connections cost), and the ``realtime_broker_received_total`` and
``realtime_messages_delivered_total`` deltas; for Redis, its process CPU and ``INFO
commandstats`` (``PUBLISH``) over the window; at the clients, loss, duplicates and latency
(64 sampled connections). Every (mode, N) gets fresh instances and connections, interleaved:
the N order rotates per repetition, the mode order alternates.

First, :mod:`bench.routing_fanout` measures Redis alone: CPU per ``PUBLISH`` to a channel
with k subscribers (k = 0, 1, 10, 100; the figure the firehose's cost grows with), and the
memory and CPU of 100,000 one-subscriber channels (what per-topic routing keeps in Redis),
and CPU per ``PUBLISH`` with Redis busy (``redis-benchmark``, 50 connections, k = 0, 1, 10).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import urllib.request
import uuid
from array import array
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
import redis

from bench import routing_fanout, routing_report
from bench.private_redis import PrivateRedis
from bench.procstat import Cpu, cpu, loadavg, raise_fd_limit
from bench.scenarios import SAMPLED_CONNECTIONS, Fleet, percentile
from bench.servers import OUR_EXTRA_ENV, ROOT, Server, source_state

MODES = ("single", "topic")
FIREHOSE = {"single": "true", "topic": "false"}
PUBLISH_MODE = {"single": "redis", "topic": "topic"}
"""The :mod:`bench.publisher` mode of each routing mode."""
METRICS = ("realtime_broker_received_total", "realtime_messages_delivered_total")


@dataclass(frozen=True)
class Shape:
    """One configuration's load: users, rate (commands/s), window and quiet window (s), payload
    size (bytes), handshakes in flight per generator."""

    users: int = 10_000
    rate: float = 1000.0
    duration: float = 10.0
    idle: float = 2.0
    size: int = 100
    concurrency: int = 200


def user_topic(i: int) -> str:
    """User ``i``'s topic."""
    return f"channel:update.u{i}"


def scrape(server: Server) -> dict[str, float]:
    """The :data:`METRICS` counters of one instance (absent ones are 0)."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=5) as resp:  # noqa: S310 - loopback
        text = resp.read().decode()
    found = dict.fromkeys(METRICS, 0.0)
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in found:
            found[name] = float(value)
    return found


def start_instances(redis_url: str, channel: str, count: int, mode: str, root: Path) -> list[Server]:
    """``count`` instances on one channel with the firehose of ``mode``, started in parallel.

    Raises:
        BenchError: one did not start (every started one is stopped first).
    """
    env = {"REDIS_FIREHOSE": FIREHOSE[mode], "METRICS_PROBE_INTERVAL": "0"}
    servers = [Server("ours-redis", redis_url, channel=channel, env=env, root=root) for _ in range(count)]
    try:
        with ThreadPoolExecutor(count) as pool:
            list(pool.map(lambda s: s.start(60.0), servers))
    except BaseException:
        stop_instances(servers)
        raise
    return servers


def stop_instances(servers: list[Server]) -> None:
    """Stop every instance (in parallel)."""
    with ThreadPoolExecutor(max(1, len(servers))) as pool:
        list(pool.map(Server.stop, servers))


def connect_users(servers: list[Server], fleet: Fleet, shape: Shape) -> dict[str, Any]:
    """Open one connection per user, user ``i`` on ``servers[i % N]``, dealt to the generators.

    Returns:
        ``{"ok", "failed", "errors", "elapsed_s"}``.
    """
    n, gens = len(servers), len(fleet.gens)
    sample = list(range(0, shape.users, max(1, shape.users // SAMPLED_CONNECTIONS)))
    ok = failed = 0
    errors: list[str] = []
    start = time.monotonic()
    for j, server in enumerate(servers):
        mine = list(range(j, shape.users, n))
        base = {"op": "connect", "host": "127.0.0.1", "port": server.port, "path": "/ws", "dialect": "pubsub"}
        base |= {"token": server.token, "sample": sample, "concurrency": shape.concurrency, "timeout": 60}
        replies = fleet.all([base | {"conns": [[i, [user_topic(i)]] for i in mine[g::gens]]} for g in range(gens)])
        ok += sum(r["ok"] for r in replies)
        failed += sum(r["failed"] for r in replies)
        errors += [e for r in replies for e in r["errors"]]
    return {"ok": ok, "failed": failed, "errors": errors[:3], "elapsed_s": round(time.monotonic() - start, 2)}


def _idle(servers: list[Server], seconds: float) -> list[float]:
    """Each instance's CPU (% of one core) over ``seconds`` of quiet."""
    before, start = [cpu(s.pids()) for s in servers], time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - start
    return [100 * (cpu(s.pids()) - c).total / wall for s, c in zip(servers, before, strict=True)]


def measure(servers: list[Server], fleet: Fleet, redis_proc: PrivateRedis, mode: str, shape: Shape) -> dict[str, Any]:
    """One window of ``mode`` on ``servers`` (connected): see the module docstring.

    Returns:
        The run's figures: per instance (CPU, idle CPU, received, delivered), Redis, clients.
    """
    gens = len(fleet.gens)
    fleet.all([{"op": "reset"}] * gens)
    idle = _idle(servers, shape.idle)
    before = [scrape(s) for s in servers]
    client = redis.Redis.from_url(redis_proc.url)
    client.config_resetstat()
    load = loadavg()
    cpu0, redis0, clients0 = [cpu(s.pids()) for s in servers], redis_proc.cpu(), cpu(fleet.client_pids())
    t0 = time.monotonic()
    fleet.pub.send(
        {"op": "publish", "mode": PUBLISH_MODE[mode], "redis_url": redis_proc.url, "channel": servers[0].channel}
        | {"topics": [user_topic(i) for i in range(shape.users)], "rate": shape.rate, "size": shape.size}
        | {"count": max(1, round(shape.rate * shape.duration)), "url": servers[0].url, "api_key": ""}
    )
    pub = fleet.pub.recv()
    drain = fleet.all([{"op": "drain", "expected": pub["per_topic"], "timeout": 10 + shape.duration}] * gens)
    wall = time.monotonic() - t0
    used = [cpu(s.pids()) - c for s, c in zip(servers, cpu0, strict=True)]
    redis_used, clients_used = redis_proc.cpu() - redis0, cpu(fleet.client_pids()) - clients0
    stat = client.info("commandstats").get("cmdstat_publish", {})
    client.close()
    after = [scrape(s) for s in servers]
    instances = [_instance(u, i, b, a, wall) for u, i, b, a in zip(used, idle, before, after, strict=True)]
    return _figures(pub, drain, wall, instances, redis_used, clients_used, stat) | {"loadavg_before": load}


def _instance(
    used: Cpu, idle_pct: float, before: dict[str, float], after: dict[str, float], wall: float
) -> dict[str, Any]:
    return {
        "cpu_pct": round(100 * used.total / wall, 2),
        "idle_pct": round(idle_pct, 2),
        "received": int(after[METRICS[0]] - before[METRICS[0]]),
        "delivered": int(after[METRICS[1]] - before[METRICS[1]]),
    }


def _figures(
    pub: dict[str, Any],
    drain: list[dict[str, Any]],
    wall: float,
    instances: list[dict[str, Any]],
    redis_used: Cpu,
    clients_used: Cpu,
    stat: dict[str, Any],
) -> dict[str, Any]:
    lat = array("q")
    for reply in drain:
        lat.frombytes(reply["latencies_ns"])
    ms = sorted(x / 1e6 for x in lat)
    published = pub["published"]
    span = max(1e-9, (pub["end_ns"] - pub["start_ns"]) / 1e9)
    return {
        "published": published,
        "publish_errors": pub["error_count"],
        "publish_rate": round(published / span, 1),
        "expected": sum(r["expected"] for r in drain),
        "delivered": sum(r["received"] for r in drain),
        "lost": sum(r["lost"] for r in drain),
        "duplicated": sum(r["duplicated"] for r in drain),
        "reordered": sum(r["reordered"] for r in drain),
        "open_connections": sum(r["open"] for r in drain),
        "latency_ms": {k: round(percentile(ms, p), 2) for k, p in (("p50", 50), ("p99", 99), ("max", 100))},
        "wall_s": round(wall, 3),
        "instances": instances,
        "cpu_pct_per_instance": round(statistics.fmean(i["cpu_pct"] for i in instances), 2),
        "idle_pct_per_instance": round(statistics.fmean(i["idle_pct"] for i in instances), 2),
        "received_per_instance": round(statistics.fmean(i["received"] for i in instances), 1),
        "redis": {
            "cpu_pct": round(100 * redis_used.total / wall, 2),
            "process_us_per_publish": round(1e6 * redis_used.total / published, 2) if published else None,
            "publish_calls": int(stat.get("calls", 0)),
            "usec_per_call": float(stat.get("usec_per_call", 0.0)),
        },
        "clients_cpu_pct": round(100 * clients_used.total / wall, 1),
        "loadavg_after": loadavg(),
    }


def configuration(
    redis_proc: PrivateRedis, fleet: Fleet, count: int, mode: str, shape: Shape, root: Path
) -> dict[str, Any]:
    """Fresh instances and connections for (``count``, ``mode``), one measured window.

    Raises:
        RuntimeError: a connection failed to open.
    """
    servers = start_instances(redis_proc.url, f"bench-{uuid.uuid4().hex[:12]}", count, mode, root)
    try:
        setup = connect_users(servers, fleet, shape)
        if setup["failed"]:
            raise RuntimeError(f"connections failed: {setup}")
        warm = Shape(**(asdict(shape) | {"duration": 0.5, "idle": 0.1}))
        measure(servers, fleet, redis_proc, mode, warm)  # first deliveries on every path
        return measure(servers, fleet, redis_proc, mode, shape) | {"setup": setup}
    finally:
        fleet.close_connections()
        stop_instances(servers)


def order(reps: int, counts: list[int]) -> list[tuple[int, int, str]]:
    """The interleaved plan: (rep, N, mode), N order rotated per rep, modes alternated."""
    plan = []
    for rep in range(reps):
        rotated = counts[rep % len(counts) :] + counts[: rep % len(counts)]
        for k, count in enumerate(rotated):
            modes = MODES if (rep + k) % 2 == 0 else MODES[::-1]
            plan += [(rep, count, mode) for mode in modes]
    return plan


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every configuration of the plan (and the fan-out scenario) on one private redis-server."""
    shape = Shape(users=args.users, rate=args.rate, duration=args.duration, idle=args.idle)
    counts = [int(x) for x in args.instances.split(",")]
    result: dict[str, Any] = {
        "meta": {
            "source": source_state(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "args": vars(args) | {"out": str(args.out), "server_root": str(args.server_root)},
            "shape": asdict(shape),
            "server_env": dict(OUR_EXTRA_ENV),
            "loadavg_before": loadavg(),
        },
        "runs": [],
    }
    with PrivateRedis() as redis_proc:
        if not args.no_fanout:
            result["fanout"] = routing_fanout.run(
                redis_proc, ks=args.fanout_k, rate=args.rate, count=args.fanout_count, size=shape.size
            )
            result["subscriptions"] = routing_fanout.subscriptions(redis_proc, args.subs_channels)
            result["saturated"] = [
                routing_fanout.saturated(redis_proc, k, requests=args.sat_requests, clients=50, size=shape.size)
                for k in args.sat_k
            ]
        fleet = Fleet(args.generators)
        try:
            for rep, count, mode in order(args.reps, counts):
                started = time.monotonic()
                one = configuration(redis_proc, fleet, count, mode, shape, args.server_root or ROOT)
                result["runs"].append(one | {"rep": rep, "n": count, "mode": mode})
                print(routing_report.line(result["runs"][-1], time.monotonic() - started), flush=True)
        finally:
            fleet.stop()
    result["summary"] = routing_report.summarize(result["runs"])
    result["meta"] |= {"finished": time.strftime("%Y-%m-%d %H:%M:%S"), "loadavg_after": loadavg()}
    return result


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.routing", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=10_000, help="connections, one topic each")
    parser.add_argument("--instances", default="1,2,4", help="instance counts N")
    parser.add_argument("--rate", type=float, default=1000.0, help="commands/s in total")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured window")
    parser.add_argument("--idle", type=float, default=2.0, help="seconds of quiet measured before each window")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--generators", type=int, default=2, help="load-generator processes")
    parser.add_argument("--fanout-k", default="0,1,10,100", help="subscriber counts of the fan-out scenario")
    parser.add_argument("--fanout-count", type=int, default=3000, help="PUBLISHes per fan-out step")
    parser.add_argument("--subs-channels", type=int, default=100_000, help="channels of the subscription-cost step")
    parser.add_argument("--sat-k", default="0,1,10", help="subscriber counts of the saturated step")
    parser.add_argument("--sat-requests", type=int, default=200_000, help="PUBLISHes per saturated step")
    parser.add_argument("--no-fanout", action="store_true", help="skip the Redis fan-out and subscription scenarios")
    parser.add_argument("--quick", action="store_true", help="tiny counts (the smoke test)")
    parser.add_argument("--server-root", type=Path, help="run our server from this source tree")
    parser.add_argument(
        "--server-env", action="append", default=[], metavar="NAME=VALUE", help="a setting for every instance"
    )
    parser.add_argument("--out", type=Path, help="write the JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.users, args.instances, args.rate, args.duration, args.idle = 40, "1,2", 100.0, 1.0, 0.2
        args.fanout_k, args.fanout_count, args.subs_channels = "0,2", 100, 1000
        args.sat_k, args.sat_requests = "2", 1000
    args.fanout_k = [int(k) for k in str(args.fanout_k).split(",")]
    args.sat_k = [int(k) for k in str(args.sat_k).split(",")]
    for item in args.server_env:
        name, eq, value = item.partition("=")
        if not eq or not name:
            parser.error(f"--server-env wants NAME=VALUE, got {item!r}")
        OUR_EXTRA_ENV[name] = value
    return args


def main(argv: list[str] | None = None) -> int:
    """Run, print the table, write the JSON (``--out``); 1 if a run lost or duplicated commands."""
    args = _parse(argv)
    raise_fd_limit()
    result = run(args)
    print(routing_report.table(result))
    if args.out:
        args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2, default=str))
    broken = any(r["lost"] or r["duplicated"] or r["publish_errors"] for r in result["runs"])
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
