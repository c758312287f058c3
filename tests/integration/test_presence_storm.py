"""Presence under a LISTEN storm (issue 18): 3,000 LISTENs to presence topics arriving at
once are written in a few pipelined batches, not 3,000 round trips. An in-process app on a
private redis-server (so ``INFO commandstats`` counts this test's calls alone)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import ClientWebSocketResponse

from realtime.presence import TopicChanges
from realtime.redis_functions import function_names, presence_key
from realtime.redis_presence import RedisPresence
from tests.conftest import AppFactory, recv, wait_for
from tests.integration.test_faults import PrivateRedis, private_redis  # noqa: F401 - a fixture

pytestmark = pytest.mark.slow

CROWD_POLICY = """
[topics."crowd:room"]
target = "any"
presence = true
"""
TOPICS = [f"crowd:room.r{i}" for i in range(3)]
CONNS = 3000
CHANNEL = "presence-storm"


async def fcalls(client: aioredis.Redis) -> int:
    """``FCALL``s Redis executed so far (``INFO commandstats``)."""
    stats: dict[str, Any] = await client.info("commandstats")
    return int(stats.get("cmdstat_fcall", {}).get("calls", 0))


@pytest.mark.parametrize(("bursts", "spacing"), [(1, 0.0), (100, 0.01)], ids=["at-once", "over-1s"])
async def test_a_listen_storm_is_written_in_a_few_batches(
    private_redis: PrivateRedis,  # noqa: F811 - the fixture
    make_client: AppFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    bursts: int,
    spacing: float,
) -> None:
    """3,000 LISTENs at once (one burst), or in 100 bursts of 30 every 10 ms (3,000/s)."""
    policy = tmp_path / "topics.toml"
    policy.write_text(CROWD_POLICY)
    batches: list[int] = []  # FCALLs per store call: one pipeline, one round trip each
    written: list[int] = []  # entries written by the calls that returned
    apply = RedisPresence.apply

    async def counted(self: RedisPresence, changes: list[TopicChanges], ttl: float) -> None:
        batches.append(len(changes))
        await apply(self, changes, ttl)
        written.append(sum(len(c.upserts) for c in changes))

    monkeypatch.setattr(RedisPresence, "apply", counted)
    app = await make_client(
        redis_url=private_redis.url,
        redis_channel=CHANNEL,
        redis_probe_interval=0,
        topics_file=str(policy),
        listen_rate=0,
        max_connections_per_ip=0,
        connect_rate_per_ip=0,
        max_pending_per_ip=0,
        listen_timeout=120,
    )
    sem = asyncio.Semaphore(100)
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))  # the test client's pools 100

    async def connect() -> ClientWebSocketResponse:
        async with sem:
            return await http.ws_connect(app.make_url("/ws"))

    sockets = await asyncio.gather(*(connect() for _ in range(CONNS)))
    raw = aioredis.from_url(private_redis.url)
    try:
        before = await fcalls(raw)
        frames = [
            orjson.dumps({"type": "LISTEN", "nonce": "s", "data": {"topics": [TOPICS[i % len(TOPICS)]]}}).decode()
            for i in range(CONNS)
        ]
        size = CONNS // bursts
        for start in range(0, CONNS, size):
            pairs = zip(sockets[start : start + size], frames[start : start + size], strict=True)
            await asyncio.gather(*(ws.send_str(frame) for ws, frame in pairs))
            await asyncio.sleep(spacing)
        replies = await asyncio.gather(*(recv(ws, timeout=30) for ws in sockets))
        assert all(r["type"] == "RESPONSE" and r["error"] == "" for r in replies)
        await wait_for(lambda: sum(written) == CONNS, timeout=10)
        calls = await fcalls(raw) - before
        print(f"\n{CONNS} LISTENs in {bursts} burst(s): {len(batches)} round trips, {calls} FCALLs")
        assert calls == sum(batches)  # nothing else called Redis's functions
        assert len(batches) <= CONNS // 10 and calls <= CONNS // 10  # far fewer than one per LISTEN
        if bursts == 1:
            assert len(batches) <= 5 and calls <= 30  # 500 entries per FCALL, one pipeline per pass
        name = function_names(CHANNEL).presence_get
        for topic in TOPICS:  # and every entry is there
            counts = await raw.fcall(name, 1, presence_key(CHANNEL, topic), topic, 0)
            assert counts[:2] == [CONNS // len(TOPICS), 0]
    finally:
        await raw.aclose()
        for ws in sockets:
            await ws.close()
        await http.close()
