"""Horizontal scale: two real server processes on one Redis; exactly once, in order.

The load check publishes LOADCHECK_MESSAGES (default 100,000) messages over 100 topics
to 200 listeners (each topic has one listener on each instance) and counts: every
accepted message reaches every listener of its topic once, in publish order.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from realtime.redis_functions import function_names, history_key
from tests.conftest import API_KEYS_JSON, PUBLISHER_KEY, auth, listen
from tests.procs import Server

LOADCHECK_MESSAGES = int(os.environ.get("LOADCHECK_MESSAGES", "100000"))
TOPICS = 100


async def collect(ws: aiohttp.ClientWebSocketResponse, expected: int, into: list[int]) -> None:
    while len(into) < expected:
        msg = await ws.receive(timeout=30)
        assert msg.type is aiohttp.WSMsgType.TEXT, (msg.type, msg.data)
        frame = orjson.loads(msg.data)
        assert frame["type"] == "MESSAGE", frame
        into.append(orjson.loads(frame["data"]["message"])["n"])


async def start_pair(spawn: Any, redis_url: str, channel: str) -> tuple[Server, Server]:
    env = {"API_KEYS": API_KEYS_JSON, "REDIS_URL": redis_url, "REDIS_CHANNEL": channel, "SHUTDOWN_GRACE": "0"}
    env.update({"CONNECT_RATE_PER_IP": "0"})
    a = spawn(env=env)
    return a, spawn(env=env)


async def test_every_path_reaches_both_instances_once_in_order(
    spawn: type[Server],
    redis_url: str,
    channel: str,
    tmp_path: Path,
) -> None:
    a, b = await start_pair(spawn, redis_url, channel)
    redis = aioredis.from_url(redis_url)
    async with aiohttp.ClientSession() as http:
        sockets = [await http.ws_connect(s.url + "/ws") for s in (a, b, a, b)]
        for ws in sockets:
            assert (await listen(ws, ["dream:update.order"]))["error"] == ""
        got: list[list[int]] = [[] for _ in sockets]
        readers = [asyncio.create_task(collect(ws, 300, into)) for ws, into in zip(sockets, got, strict=True)]
        for n in range(300):  # one publisher, three paths, interleaved
            if n % 3 == 0:
                await redis.publish(channel, orjson.dumps({"topic": "dream:update.order", "message": {"n": n}}))
            else:
                target = a if n % 3 == 1 else b
                resp = await http.post(
                    target.url + "/publish",
                    json={"topic": "dream:update.order", "message": {"n": n}},
                    headers=auth(PUBLISHER_KEY),
                )
                assert resp.status == 202
        await asyncio.wait_for(asyncio.gather(*readers), 30)
        for into in got:
            assert into == list(range(300))  # exactly once each, in publish order
        for ws in sockets:
            await ws.close()
    await redis.aclose()
    for server in (a, b):
        assert await asyncio.to_thread(server.stop) == 0


@pytest.mark.slow
async def test_load_check_two_instances_200_listeners(
    spawn: type[Server],
    redis_url: str,
    channel: str,
) -> None:
    a, b = await start_pair(spawn, redis_url, channel)
    per_topic = LOADCHECK_MESSAGES // TOPICS
    redis = aioredis.from_url(redis_url)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        sockets: list[aiohttp.ClientWebSocketResponse] = []
        for t in range(TOPICS):
            for server in (a, b):
                ws = await http.ws_connect(server.url + "/ws", max_msg_size=0)
                assert (await listen(ws, [f"dream:job:progress.t{t}"]))["error"] == ""
                sockets.append(ws)
        got: list[list[int]] = [[] for _ in sockets]
        readers = [asyncio.create_task(collect(ws, per_topic, into)) for ws, into in zip(sockets, got, strict=True)]
        started = time.monotonic()
        accepted = 0
        for batch in range(per_topic):
            pipe = redis.pipeline(transaction=False)
            for t in range(TOPICS):
                envelope = {"topic": f"dream:job:progress.t{t}", "message": {"n": batch}}
                pipe.publish(channel, orjson.dumps(envelope))
            results = await pipe.execute()
            assert all(r == 2 for r in results), results[:5]  # both instances subscribed
            accepted += len(results)
            if batch % 10 == 9:
                await asyncio.sleep(0.01)  # open-loop pacing, about 100k/s at most
        await asyncio.wait_for(asyncio.gather(*readers), 120)
        elapsed = time.monotonic() - started
        assert accepted == per_topic * TOPICS
        for into in got:
            assert into == list(range(per_topic))  # none lost, none duplicated, in order
        print(f"load check: {accepted} messages, {accepted * 2} deliveries in {elapsed:.1f} s")
        for ws in sockets:
            await ws.close()
    await redis.aclose()
    for server in (a, b):
        assert await asyncio.to_thread(server.stop) == 0


async def test_offsets_are_gap_free_with_two_instances_and_concurrent_publishers(
    spawn: type[Server], redis_url: str, channel: str
) -> None:
    """Issue 16: /publish on each instance and FCALL from redis-cli, all at once, on one topic
    with history: offsets 1..N, each once, and every reader sees the same order."""
    a, b = await start_pair(spawn, redis_url, channel)
    topic, per_path = "dream:update.race", 60
    names = function_names(channel)
    async with aiohttp.ClientSession() as http:
        readers = [await http.ws_connect(s.url + "/ws") for s in (a, b, a, b)]
        for ws in readers:
            assert (await listen(ws, [topic]))["error"] == ""

        async def via_http(server: Server, tag: str) -> None:
            for i in range(per_path):
                resp = await http.post(
                    server.url + "/publish", json={"topic": topic, "message": f"{tag}{i}"}, headers=auth(PUBLISHER_KEY)
                )
                assert resp.status == 202

        host, port = redis_url.split("//")[1].split("/")[0].split(":")
        cli = await asyncio.create_subprocess_exec(
            "redis-cli", "-h", host, "-p", port, "-r", str(per_path),
            "FCALL", names.publish, "1", history_key(channel, topic), topic, "cli",
            stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await asyncio.gather(via_http(a, "a"), via_http(b, "b"), cli.wait())
        total = 3 * per_path
        seen: list[list[tuple[int, str]]] = []
        for ws in readers:
            got = []
            while len(got) < total:
                msg = await ws.receive(timeout=10)
                data = orjson.loads(msg.data)["data"]
                got.append((data["offset"], data["message"]))
            seen.append(got)
            await ws.close()
    assert [o for o, _ in seen[0]] == list(range(1, total + 1))  # gap-free, each once
    assert all(s == seen[0] for s in seen)  # the same order on both instances
    assert sum(m == "cli" for _, m in seen[0]) == per_path
    for server in (a, b):
        assert await asyncio.to_thread(server.stop) == 0
