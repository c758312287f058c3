"""Per-topic routing on one Redis: an instance subscribes to a topic's channel while it has a
listener of it, answers a LISTEN only once subscribed, and receives nothing else (issue 17).
In-process apps on loopback, the real Redis (each test its own channel)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import redis.asyncio as aioredis

from http_api.appkeys import NODE
from realtime.redis_broker import RedisBroker
from realtime.redis_functions import topic_channel
from tests.conftest import PUBLISHER_KEY, AppFactory, assert_silent, auth, listen, recv, send, wait_for
from tests.integration.test_faults import PrivateRedis, private_redis  # noqa: F401 - a fixture


async def numsub(redis: aioredis.Redis, *channels: str) -> dict[str, int]:
    reply = await redis.execute_command("PUBSUB", "NUMSUB", *channels)  # type: ignore[no-untyped-call]
    return {name.decode(): count for name, count in zip(reply[::2], reply[1::2], strict=True)}


def broker_of(client: Any) -> RedisBroker:
    broker = client.app[NODE].broker
    assert isinstance(broker, RedisBroker)
    return broker


async def test_an_instance_receives_only_the_topics_its_clients_listen_to(
    make_client: AppFactory, redis_url: str, channel: str, redis_client: aioredis.Redis
) -> None:
    a = await make_client(redis_url=redis_url, redis_channel=channel, redis_probe_interval=0)
    b = await make_client(redis_url=redis_url, redis_channel=channel, redis_probe_interval=0)
    async with a.ws_connect("/ws") as on_a, b.ws_connect("/ws") as on_b:
        assert (await listen(on_a, ["channel:update.x"]))["error"] == ""
        assert (await listen(on_b, ["channel:update.y"]))["error"] == ""
        x, y, z = (topic_channel(channel, f"channel:update.{t}") for t in "xyz")
        assert await numsub(redis_client, x, y, z) == {x: 1, y: 1, z: 0}
        for topic in ("channel:update.x", "channel:update.y", "channel:update.z") * 10:
            resp = await a.post("/publish", json={"topic": topic, "message": "m"}, headers=auth(PUBLISHER_KEY))
            assert resp.status == 202
        for ws in (on_a, on_b):
            for _ in range(10):
                assert (await recv(ws))["type"] == "MESSAGE"
            await assert_silent(ws)
        assert broker_of(a).stats.received == 10  # x only: nothing for y or z reaches a
        assert broker_of(b).stats.received == 10
        await send(on_a, type="UNLISTEN", nonce="u", data={"topics": ["channel:update.x"]})
        assert (await recv(on_a))["error"] == ""
        await wait_for(lambda: broker_of(a).stats.received == 10)
        for _ in range(50):  # unsubscribed once the last listener left
            if (await numsub(redis_client, x))[x] == 0:
                break
            await asyncio.sleep(0.02)
        assert (await numsub(redis_client, x))[x] == 0


class SlowProxy:
    """A TCP proxy in front of a Redis that passes what the instance sends ``delay`` seconds
    late (in order): its SUBSCRIBE commands reach Redis after a publication made the instant
    a client has its RESPONSE, unless the RESPONSE waits for the confirmation."""

    def __init__(self, port: int, delay: float) -> None:
        self.port, self.delay = port, delay
        self.server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.port)

        async def late(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                await asyncio.sleep(self.delay)  # in order: one chunk at a time
                dst.write(data)

        async def now(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)

        try:
            await asyncio.gather(late(reader, up_w), now(up_r, writer))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_w):
                w.transport.abort()


async def test_a_publication_right_after_the_response_is_always_delivered(
    make_client: AppFactory,
    private_redis: PrivateRedis,  # noqa: F811
) -> None:
    """The RESPONSE waits for the SUBSCRIBE of the topic's channel: a publication made the
    instant the client has it reaches the client, for every one of 50 new topics, though the
    instance's commands reach Redis 50 ms late."""
    proxy = SlowProxy(private_redis.port, 0.05)
    await proxy.start()
    redis = aioredis.from_url(private_redis.url)
    client = await make_client(redis_url=proxy.url, redis_channel="realtime", redis_probe_interval=0, listen_rate=0)
    try:
        async with client.ws_connect("/ws") as ws:
            for n in range(50):
                topic = f"channel:update.seam{n}"
                await send(ws, type="LISTEN", nonce=f"n{n}", data={"topics": [topic]})
                assert await recv(ws) == {"type": "RESPONSE", "nonce": f"n{n}", "error": ""}
                envelope = orjson.dumps({"topic": topic, "message": str(n)})
                assert await redis.publish(topic_channel("realtime", topic), envelope) == 1
                assert (await recv(ws))["data"] == {"topic": topic, "message": str(n)}
    finally:
        await redis.aclose()
        await proxy.close()


async def test_raw_publish_on_the_firehose_still_reaches_listeners_and_can_be_turned_off(
    make_client: AppFactory, redis_url: str, channel: str, redis_client: aioredis.Redis
) -> None:
    on = await make_client(redis_url=redis_url, redis_channel=channel, redis_probe_interval=0)
    off = await make_client(redis_url=redis_url, redis_channel=channel, redis_probe_interval=0, redis_firehose=False)
    async with on.ws_connect("/ws") as ws_on, off.ws_connect("/ws") as ws_off:
        for ws in (ws_on, ws_off):
            assert (await listen(ws, ["channel:update.f"]))["error"] == ""
        raw = orjson.dumps({"topic": "channel:update.f", "message": "raw"})
        assert await redis_client.publish(channel, raw) == 1  # only the instance with the firehose
        assert (await recv(ws_on))["data"]["message"] == "raw"
        await assert_silent(ws_off)
        resp = await off.post(
            "/publish", json={"topic": "channel:update.f", "message": "routed"}, headers=auth(PUBLISHER_KEY)
        )
        assert resp.status == 202
        for ws in (ws_on, ws_off):
            assert (await recv(ws))["data"]["message"] == "routed"  # once each: never also via the firehose
            await assert_silent(ws)


async def test_subscriptions_are_batched_per_event_loop_pass(
    make_client: AppFactory,
    private_redis: PrivateRedis,  # noqa: F811
) -> None:
    """20 connections LISTEN to 50 new topics each, all at once: a few SUBSCRIBE commands, not 1,000."""
    client = await make_client(redis_url=private_redis.url, redis_channel="realtime", redis_probe_interval=0)
    admin = aioredis.from_url(private_redis.url)
    try:
        await admin.config_resetstat()
        sockets = [await client.ws_connect("/ws") for _ in range(20)]
        for i, ws in enumerate(sockets):
            topics = [f"channel:update.c{i}t{t}" for t in range(50)]
            await send(ws, type="LISTEN", nonce="b", data={"topics": topics})
        for ws in sockets:
            assert (await recv(ws))["error"] == ""
        stats = await admin.info("commandstats")
        assert stats["cmdstat_subscribe"]["calls"] <= 20, stats["cmdstat_subscribe"]
        assert (await admin.execute_command("PUBSUB", "NUMSUB", "realtime:{channel:update.c19t49}"))[1] == 1  # type: ignore[no-untyped-call]
        for ws in sockets:
            await ws.close()
    finally:
        await admin.aclose()
