"""What one presence stats call costs on a topic with many entries (issue 18).

On the private ``redis-server`` of :mod:`bench.presence`, with the channel's Function library
loaded (:func:`realtime.redis_functions.library_code` of the bench's ``TOPICS_FILE``):

1. **Fill**: ``entries`` entries (``users`` distinct users, a small ``info`` each) are written
   to ``bench:pres.big`` with ``FCALL <p>_presence`` in calls of 500 (the server's chunk,
   :data:`realtime.presence.CHUNK`), ``pipeline`` calls per round trip, ``PRESENCE_TTL`` 600
   s; and 100 entries to ``bench:pres.small``. Entries/s and Redis CPU per 500-entry call
   (``INFO commandstats``): what a refresh of that many costs.
2. **Direct**: ``calls`` sequential ``FCALL <p>_presence_get`` with limit 0 (counts only) on
   each topic: round trip p50/p99 and Redis CPU per call (``usec_per_call`` of ``fcall``
   after ``CONFIG RESETSTAT``).
3. **In-band**: our server (Redis, one worker) on the same channel; one WebSocket sends
   ``calls`` PRESENCE requests for each topic back to back (round trip p50/p99, server CPU
   per call from ``/proc``, Redis CPU per call), ``calls`` more each 12 ms after the last
   reply, then ``burst`` at once (concurrent reads of one topic share one store call:
   requests/s). A reply is written by the server's paced flush (``WRITE_INTERVAL``, 8 ms
   by default): back to back, one reply per interval; spaced, the round trip itself.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis

from bench.private_redis import PrivateRedis
from bench.procstat import cpu, loadavg
from bench.scenarios import percentile
from bench.servers import Server
from realtime.presence import CHUNK, encode_entry
from realtime.redis_functions import function_names, library_code, presence_key
from topics.policy import load_policy

BIG = "bench:pres.big"
SMALL = "bench:pres.small"
FILL_TTL = 600
SPACED = 0.012
"""Seconds between spaced requests: more than ``WRITE_INTERVAL`` (8 ms), so no reply waits
for the paced flush."""


async def _fill(client: aioredis.Redis, channel: str, topic: str, entries: int, users: int, pipeline: int) -> None:
    name, key = function_names(channel).presence, presence_key(channel, topic)
    calls = []
    for first in range(0, entries, CHUNK):
        args: list[str | bytes] = [topic, str(FILL_TTL), str(min(CHUNK, entries - first))]
        for i in range(first, min(entries, first + CHUNK)):
            user, client_id = f"u{i % users}", f"bench.{i}"
            args += [client_id, user, encode_entry(user, client_id, {"device": f"d{i // users}"})]
        calls.append(args)
    for first in range(0, len(calls), pipeline):
        pipe = client.pipeline(transaction=False)
        for args in calls[first : first + pipeline]:
            pipe.fcall(name, 1, key, *args)
        await pipe.execute()


async def _fcall_stats(client: aioredis.Redis) -> dict[str, float]:
    row: dict[str, Any] = (await client.info("commandstats")).get("cmdstat_fcall", {})
    return {"calls": int(row.get("calls", 0)), "usec_per_call": float(row.get("usec_per_call", 0.0))}


async def _direct(client: aioredis.Redis, channel: str, topic: str, calls: int) -> dict[str, Any]:
    name, key = function_names(channel).presence_get, presence_key(channel, topic)
    await client.config_resetstat()
    times = []
    reply: list[Any] = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        reply = await client.fcall(name, 1, key, topic, 0)
        times.append((time.perf_counter_ns() - start) / 1e3)
    stats = await _fcall_stats(client)
    times.sort()
    return {
        "topic": topic,
        "connections": int(reply[0]),
        "users": int(reply[1]),
        "calls": calls,
        "rtt_us": {"p50": round(percentile(times, 50), 1), "p99": round(percentile(times, 99), 1)},
        "redis_usec_per_call": stats["usec_per_call"],
    }


async def _reply(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    """The next frame, a RESPONSE without error.

    Raises:
        RuntimeError: another frame, or an error.
    """
    reply: dict[str, Any] = orjson.loads((await ws.receive(timeout=10)).data)
    if reply.get("type") != "RESPONSE" or reply.get("error"):
        raise RuntimeError(f"PRESENCE answered {reply}"[:300])
    return reply


async def _inband(server: Server, client: aioredis.Redis, topic: str, calls: int, burst: int) -> dict[str, Any]:
    """``calls`` PRESENCE back to back, ``calls`` spaced, then ``burst`` at once, on one
    connection."""
    async with aiohttp.ClientSession() as http, http.ws_connect(server.url + "/ws") as ws:
        frame = orjson.dumps({"type": "PRESENCE", "nonce": "p", "data": {"topic": topic}}).decode()
        await ws.send_str(frame)  # warm: the first read of a topic
        first = await _reply(ws)
        await client.config_resetstat()
        server_cpu0 = cpu(server.pids())
        back_to_back = await _timed(ws, frame, calls, 0.0)
        server_cpu = (cpu(server.pids()) - server_cpu0).total
        stats = await _fcall_stats(client)
        spaced = await _timed(ws, frame, calls, SPACED)
        fcalls = (await _fcall_stats(client))["calls"]
        start = time.perf_counter_ns()
        for n in range(burst):
            await ws.send_str(frame.replace('"p"', f'"{n}"'))
        for _ in range(burst):
            reply = await _reply(ws)
        burst_s = (time.perf_counter_ns() - start) / 1e9
        burst_fcalls = (await _fcall_stats(client))["calls"] - fcalls
    return {
        "topic": topic,
        "first": first.get("data"),
        "data": reply.get("data"),
        "calls": calls,
        "rtt_us": back_to_back,
        "rtt_spaced_us": spaced,
        "server_us_per_call": round(1e6 * server_cpu / calls, 1),
        "redis_usec_per_call": stats["usec_per_call"],
        "fcalls": stats["calls"],
        "burst": burst,
        "burst_per_s": round(burst / burst_s, 1),
        "burst_fcalls": burst_fcalls,
    }


async def _timed(ws: aiohttp.ClientWebSocketResponse, frame: str, calls: int, gap: float) -> dict[str, float]:
    """Round trip p50/p99 (us) of ``calls`` requests, each sent ``gap`` s after the last reply."""
    times = []
    for _ in range(calls):
        if gap:
            await asyncio.sleep(gap)
        start = time.perf_counter_ns()
        await ws.send_str(frame)
        await _reply(ws)
        times.append((time.perf_counter_ns() - start) / 1e3)
    times.sort()
    return {"p50": round(percentile(times, 50), 1), "p99": round(percentile(times, 99), 1)}


async def _fill_and_direct(redis_proc: PrivateRedis, channel: str, opts: dict[str, Any]) -> dict[str, Any]:
    client = aioredis.from_url(redis_proc.url)
    try:
        await client.function_load(library_code(channel, load_policy(opts["topics_file"])), replace=True)
        await client.config_resetstat()
        cpu0, start = redis_proc.cpu(), time.monotonic()
        await _fill(client, channel, BIG, opts["entries"], opts["users"], opts["pipeline"])
        elapsed = time.monotonic() - start
        redis_cpu = (redis_proc.cpu() - cpu0).total
        fill_stats = await _fcall_stats(client)
        await _fill(client, channel, SMALL, 100, 25, 1)
        fill = {
            "entries": opts["entries"],
            "users": opts["users"],
            "chunk": CHUNK,
            "pipeline": opts["pipeline"],
            "elapsed_s": round(elapsed, 3),
            "entries_per_s": round(opts["entries"] / elapsed),
            "redis_usec_per_chunk_call": fill_stats["usec_per_call"],
            "redis_process_s": round(redis_cpu, 2),
            "memory_mb": round((await client.memory_usage(presence_key(channel, BIG)) or 0) / 2**20, 1),
            "info_memory_mb": round((await client.memory_usage(presence_key(channel, BIG) + ":info") or 0) / 2**20, 1),
        }
        direct = [await _direct(client, channel, topic, opts["calls"]) for topic in (BIG, SMALL) * opts["reps"]]
    finally:
        await client.aclose()
    return {"fill": fill, "direct": direct}


def run(redis_proc: PrivateRedis, topics_file: Path, opts: dict[str, Any]) -> dict[str, Any]:
    """Fill, then the direct and in-band reads (see the module docstring). ``opts``:
    ``entries``, ``users``, ``pipeline``, ``calls``, ``inband_calls``, ``burst``, ``reps``,
    ``root``."""
    server = Server("ours-redis", redis_proc.url, env={"TOPICS_FILE": str(topics_file)}, root=opts["root"])
    opts = opts | {"topics_file": str(topics_file)}
    load = loadavg()
    try:
        server.start()
        result = asyncio.run(_fill_and_direct(redis_proc, server.channel, opts))

        async def inband() -> list[dict[str, Any]]:
            client = aioredis.from_url(redis_proc.url)
            try:
                return [
                    await _inband(server, client, topic, opts["inband_calls"], opts["burst"])
                    for topic in (BIG, SMALL) * opts["reps"]
                ]
            finally:
                await client.aclose()

        result["inband"] = asyncio.run(inband())
    finally:
        server.stop()
    return result | {"loadavg_before": load, "loadavg_after": loadavg()}
