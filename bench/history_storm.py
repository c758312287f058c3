"""Scenario 3, the reconnect storm: many connections resume at once, each behind.

One server (ours, one worker, the memory broker or Redis) with a topic name that keeps
history. The orchestrator first publishes ``behind + extra`` messages to each of ``topics``
topics through ``POST /publish`` while a probe connection learns each topic's last offset
and epoch, then opens ``conns`` connections at once from ``generators`` processes
(:mod:`bench.storm`), connection ``i`` LISTENing to topic ``i mod topics`` with ``since`` =
(last offset - ``behind``, epoch), and waits until every one received its ``behind``
recovered MESSAGEs in offset order. Then it publishes one live message per topic and takes
the stamp-to-parse latency of each connection's first live MESSAGE. ``GET /metrics`` before
and after gives the history reads the server made (``realtime_history_reads_total``).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import urllib.request
from array import array
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench import storm
from bench.procstat import cpu, listen_overflows, loadavg
from bench.publisher import payload
from bench.scenarios import percentile
from bench.servers import API_KEY, ROOT, Server
from bench.wsclient import PubSubDialect, Stats, connect

METRICS = ("realtime_history_reads_total", "realtime_messages_recovered_total", "realtime_history_lost_total")


class PositionProbe(PubSubDialect):
    """Remembers the last offset and epoch seen on each of its topics."""

    positions: dict[str, tuple[int, str]]

    def text(self, data: bytes) -> None:
        if data.startswith(b'{"type":"MESSAGE"'):
            msg = orjson.loads(data)["data"]
            self.positions[msg["topic"]] = (int(msg.get("offset", 0)), str(msg.get("epoch", "")))
        elif data.startswith(b'{"type":"RESPONSE"') and not self.ready.done():
            self.ready.set_result(None) if b'"error":""' in data else self.fail(data.decode())


async def publish_each(url: str, topics: list[str], rounds: int, size: int, *, first_seq: int = 0) -> list[str]:
    """``rounds`` messages to each topic through ``POST /publish`` (32 in flight), round by
    round so each topic's order is kept; a refused one is retried (5 tries, 0.2 s apart).

    Returns:
        The refusals (status and body), retried or not.
    """
    headers = {"Authorization": f"Api-Key {API_KEY}", "Content-Type": "application/json"}
    sem = asyncio.Semaphore(32)
    errors: list[str] = []

    async def post(http: aiohttp.ClientSession, topic: str, seq: int) -> None:
        for _ in range(5):
            async with sem:  # stamped once a request slot is free: the stamp starts the request
                body = orjson.dumps({"topic": topic, "message": payload(seq, size)})
                async with http.post(url + "/publish", data=body, headers=headers) as resp:
                    if resp.status == 202:
                        return
                    errors.append(f"{resp.status} {await resp.text()}"[:200])
            await asyncio.sleep(0.2)

    async with aiohttp.ClientSession() as http:
        for seq in range(first_seq, first_seq + rounds):
            await asyncio.gather(*(post(http, topic, seq) for topic in topics))
    return errors


async def prime(
    server: Server, topics: list[str], rounds: int, size: int
) -> tuple[dict[str, tuple[int, str]], list[str]]:
    """Publish ``rounds`` per topic while probes listen.

    Returns:
        topic -> (last offset, epoch) as the probes saw it, and the refused publications.

    Raises:
        TimeoutError: the probes did not see every topic's last publication in 30 s.
    """
    positions: dict[str, tuple[int, str]] = {}
    probes = []
    for i in range(0, len(topics), 50):
        dialect = PositionProbe(topics[i : i + 50], server.token, Stats(False))
        dialect.positions = positions
        probes.append(await connect("127.0.0.1", server.port, "/ws", dialect))
    errors = await publish_each(server.url, topics, rounds, size)
    deadline = time.monotonic() + 30
    while len(positions) < len(topics) or min(o for o, _ in positions.values()) < rounds:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the probes saw {len(positions)} of {len(topics)} topics; refused: {errors[:3]}")
        await asyncio.sleep(0.02)
    for probe in probes:
        probe.close()
    return dict(positions), errors


def scrape(server: Server) -> dict[str, float]:
    """The :data:`METRICS` counters from ``GET /metrics`` (absent ones left out)."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=5) as resp:  # noqa: S310 - loopback
        text = resp.read().decode()
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in METRICS:
            found[name] = float(value)
    return found


class Generators:
    """``count`` :mod:`bench.storm` processes."""

    def __init__(self, count: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs: list[BaseProcess] = []
        for _ in range(count):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=storm.main, args=(theirs,), daemon=True)
            proc.start()
            self.pipes.append(mine)
            self.procs.append(proc)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def all(self, cmds: list[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
        for pipe, cmd in zip(self.pipes, cmds, strict=True):
            pipe.send(cmd)
        replies = []
        for pipe in self.pipes:
            if not pipe.poll(timeout):
                raise TimeoutError("a storm generator did not answer")
            replies.append(pipe.recv())
        return replies

    def stop(self) -> None:
        for pipe in self.pipes:
            pipe.send({"op": "close"})
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)


def _ms(values: array[int], origin: int) -> list[float]:
    return sorted((v - origin) / 1e6 for v in values)


def _storm_cmds(
    server: Server, positions: dict[str, tuple[int, str]], opts: dict[str, Any], gens: int
) -> list[dict[str, Any]]:
    topics = sorted(positions)
    conns = [
        [
            topics[i % len(topics)],
            positions[topics[i % len(topics)]][0] - opts["behind"],
            positions[topics[i % len(topics)]][1],
        ]
        for i in range(opts["conns"])
    ]
    base = {"op": "storm", "host": "127.0.0.1", "port": server.port, "token": server.token, "expect": opts["behind"]}
    base |= {"concurrency": opts["concurrency"], "timeout": opts["timeout"]}
    return [base | {"conns": conns[g::gens]} for g in range(gens)]


def run(broker: str, redis_url: str, topics_file: Path, opts: dict[str, Any]) -> dict[str, Any]:
    """One storm (see the module docstring). ``opts``: ``conns``, ``topics``, ``behind``,
    ``extra``, ``generators``, ``concurrency`` (per generator), ``timeout`` (s), ``size``,
    ``root`` (the source tree our server runs from)."""
    server = Server(
        "ours-memory" if broker == "memory" else "ours-redis",
        redis_url,
        env={"TOPICS_FILE": str(topics_file)},
        root=opts.get("root", ROOT),
    )
    gens = Generators(opts["generators"])
    try:
        server.start()
        topics = [f"bench:hist.t{i}" for i in range(opts["topics"])]
        positions, refused = asyncio.run(prime(server, topics, opts["behind"] + opts["extra"], opts["size"]))
        time.sleep(0.5)  # the probes' streams are gone before the storm
        before = scrape(server)
        overflows, load = listen_overflows(), loadavg()
        cpu0 = {pid: cpu([pid]) for pid in gens.pids()}
        server_cpu0, start = cpu(server.pids()), time.monotonic_ns()
        replies = gens.all(_storm_cmds(server, positions, opts, len(gens.pipes)), opts["timeout"] + 30)
        wall = (time.monotonic_ns() - start) / 1e9
        server_cpu = cpu(server.pids()) - server_cpu0
        gen_cpu = {pid: cpu([pid]) - c for pid, c in cpu0.items()}
        after = scrape(server)
        result = _storm_figures(replies, start, wall, opts)
        live = _live(server, gens, positions, opts)
        result |= {
            "broker": broker,
            "prime_refused": refused[:5],
            "prime_refused_count": len(refused),
            "listen_overflows": listen_overflows() - overflows,
            "server_cpu_s": round(server_cpu.total, 3),
            "server_cpu_pct": round(100 * server_cpu.total / wall, 1),
            "generator_cpu_pct": [round(100 * c.total / wall, 1) for c in gen_cpu.values()],
            "metrics": {k.removeprefix("realtime_").removesuffix("_total"): after[k] - before.get(k, 0) for k in after},
            "live": live,
            "loadavg_before": load,
            "loadavg_after": loadavg(),
        }
        return result
    finally:
        gens.stop()
        server.stop()


def _storm_figures(replies: list[dict[str, Any]], start: int, wall: float, opts: dict[str, Any]) -> dict[str, Any]:
    recovered, connected, catch_up = array("q"), array("q"), array("q")
    for reply in replies:
        recovered.frombytes(reply["recovered_ns"])
        connected.frombytes(reply["connected_ns"])
        catch_up.frombytes(reply["catch_up_ns"])
    catch_ms = _ms(catch_up, 0)
    rec_ms, conn_ms = _ms(recovered, start), _ms(array("q", (c for c in connected if c)), start)
    complete = sum(r["complete"] for r in replies)
    return {
        "conns": opts["conns"],
        "topics": opts["topics"],
        "behind": opts["behind"],
        "opened": sum(r["ok"] for r in replies),
        "failed": sum(r["failed"] for r in replies),
        "errors": [e for r in replies for e in r["errors"]][:3],
        "complete": complete,
        "all_recovered": complete == opts["conns"],
        "out_of_order": sum(r["out_of_order"] for r in replies),
        "gaps": sum(r["gaps"] for r in replies),
        "all_recovered_s": round(rec_ms[-1] / 1000, 3) if rec_ms and complete == opts["conns"] else None,
        "recovered_ms": {"p50": round(percentile(rec_ms, 50), 1), "p99": round(percentile(rec_ms, 99), 1)},
        "all_connected_s": round(conn_ms[-1] / 1000, 3) if conn_ms else None,
        "catch_up_ms": {k: round(percentile(catch_ms, p), 1) for k, p in (("p50", 50), ("p99", 99), ("max", 100))},
        "wall_s": round(wall, 3),
    }


def _live(
    server: Server, gens: Generators, positions: dict[str, tuple[int, str]], opts: dict[str, Any]
) -> dict[str, Any]:
    """One live publication per topic; the latency of each connection's first live MESSAGE."""
    errors = asyncio.run(publish_each(server.url, sorted(positions), 1, opts["size"], first_seq=10**6))
    replies = gens.all([{"op": "live", "timeout": 10}] * len(gens.pipes), 40)
    lat = array("q")
    for reply in replies:
        lat.frombytes(reply["latencies_ns"])
    ms = sorted(x / 1e6 for x in lat)
    return {
        "publish_errors": len(errors),
        "got": len(ms),
        "latency_ms": {k: round(percentile(ms, p), 2) for k, p in (("p50", 50), ("p99", 99), ("max", 100))},
    }
