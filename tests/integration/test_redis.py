"""Integration with the real Redis: raw PUBLISH, /publish, invalid envelopes, link loss."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import redis.asyncio as aioredis

from http_api.appkeys import NODE
from realtime.backoff import backoff_delay
from realtime.redis_broker import RedisBroker
from realtime.redis_functions import topic_channel
from tests.conftest import (
    PUBLISHER_KEY,
    AppFactory,
    assert_silent,
    auth,
    kill_subscriber,
    listen,
    recv,
    wait_for,
    ws_token,
)


class Recorder:
    """A :class:`realtime.broker.BrokerEventHandler` that records what the broker tells it
    (the node's stand-in)."""

    def __init__(self, on_batch: Callable[[], bool] | None = None) -> None:
        self.publications: list[tuple[str, str]] = []
        self.messages: list[str] = []
        self.gaps: list[int] = []
        self._on_batch = on_batch

    def on_listen_ready(self, topics: list[str]) -> None:
        pass

    def on_publication(self, topic: str, message: str, offset: int = 0, epoch: str = "") -> None:
        self.publications.append((topic, message))
        self.messages.append(message)

    def on_control(self, message: dict[str, object]) -> None:
        pass

    def on_gap(self, topics: list[str] | None = None) -> None:
        self.gaps.append(1)

    def on_batch_end(self) -> bool:
        return self._on_batch() if self._on_batch is not None else False


async def redis_app(make_client: AppFactory, redis_url: str, channel: str, **kw: Any) -> Any:
    client = await make_client(redis_url=redis_url, redis_channel=channel, **kw)
    await wait_for(lambda: client.app[NODE].broker.ready)
    return client


async def test_raw_redis_publish_reaches_listener(
    make_client: AppFactory, redis_url: str, channel: str, redis_client: aioredis.Redis
) -> None:
    client = await redis_app(make_client, redis_url, channel)
    ready = await client.get("/ready")
    assert ready.status == 200
    assert (await ready.json())["dependencies"]["broker"] == {"kind": "redis", "state": "connected"}
    token = await ws_token(client)
    async with client.ws_connect("/ws") as ws:
        assert (await listen(ws, ["dream:update.abc", "remote-control:command.7"], token))["error"] == ""
        await redis_client.publish(channel, '{"topic":"dream:update.abc","message":{"status":"processed"}}')
        assert await recv(ws) == {
            "type": "MESSAGE",
            "data": {"topic": "dream:update.abc", "message": '{"status":"processed"}'},
        }
        await redis_client.publish(channel, orjson.dumps({"topic": "remote-control:command.7", "message": "next"}))
        assert (await recv(ws))["data"] == {"topic": "remote-control:command.7", "message": "next"}


async def test_http_publish_goes_through_redis(
    make_client: AppFactory, redis_url: str, channel: str, redis_client: aioredis.Redis
) -> None:
    client = await redis_app(make_client, redis_url, channel)
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(topic_channel(channel, "dream:job:progress.j1"))  # per-topic routing
    async with client.ws_connect("/ws") as ws:
        await listen(ws, ["dream:job:progress.j1"])
        resp = await client.post(
            "/publish", json={"topic": "dream:job:progress.j1", "message": {"pct": 50}}, headers=auth(PUBLISHER_KEY)
        )
        assert resp.status == 202
        assert (await recv(ws))["data"]["message"] == '{"pct":50}'
        envelope = None
        for _ in range(20):
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if msg is not None:
                envelope = orjson.loads(msg["data"])
                break
        assert envelope is not None and envelope.pop("epoch")  # the topic keeps history
        assert envelope == {"topic": "dream:job:progress.j1", "message": '{"pct":50}', "offset": 1}
        await send_unlisten(ws, "dream:job:progress.j1")
        await redis_client.publish(channel, '{"topic":"dream:job:progress.j1","message":"late"}')
        await assert_silent(ws)
    await pubsub.aclose()


async def send_unlisten(ws: Any, topic: str) -> None:
    await ws.send_str(orjson.dumps({"type": "UNLISTEN", "nonce": "u", "data": {"topics": [topic]}}).decode())
    assert (await recv(ws))["error"] == ""


async def test_invalid_envelopes_are_dropped_not_fatal(
    make_client: AppFactory, redis_url: str, channel: str, redis_client: aioredis.Redis
) -> None:
    client = await redis_app(make_client, redis_url, channel)
    async with client.ws_connect("/ws") as ws:
        await listen(ws, ["dream:update.a"])
        for junk in (
            b"not json",
            b"[]",
            b"42",
            b'{"topic": 5, "message": "x"}',
            b'{"message": "x"}',
            b"\xff\xfe",
            b"{}",
        ):
            await redis_client.publish(channel, junk)
        await redis_client.publish(channel, '{"topic":"dream:update.a","message":"still alive"}')
        assert (await recv(ws))["data"]["message"] == "still alive"
        assert client.app[NODE].broker.stats.invalid_envelopes == 7


async def test_other_channels_are_ignored(
    make_client: AppFactory, redis_url: str, channel: str, redis_client: aioredis.Redis
) -> None:
    client = await redis_app(make_client, redis_url, channel)
    async with client.ws_connect("/ws") as ws:
        await listen(ws, ["dream:update.a"])
        await redis_client.publish(channel + "-other", '{"topic":"dream:update.a","message":"wrong channel"}')
        await assert_silent(ws)


async def test_subscriber_killed_reconnects_and_sends_gap(
    make_client: AppFactory, redis_url: str, channel: str, redis_client: aioredis.Redis
) -> None:
    client = await redis_app(make_client, redis_url, channel)
    broker = client.app[NODE].broker
    assert isinstance(broker, RedisBroker)
    async with client.ws_connect("/ws") as ws:
        await listen(ws, ["channel:update.a"])
        await kill_subscriber(redis_client, broker.client_name)
        gap = await recv(ws, timeout=5)
        assert gap == {"type": "GAP", "data": {"topics": ["channel:update.a"], "reason": "broker_reconnected"}}
        assert broker.stats.reconnects == 1 and broker.ready
        await redis_client.publish(channel, '{"topic":"channel:update.a","message":"after"}')
        assert (await recv(ws))["data"]["message"] == "after"


async def test_publish_fails_with_503_when_redis_is_unreachable(make_client: AppFactory, channel: str) -> None:
    client = await make_client(redis_url="redis://127.0.0.1:1/0", redis_channel=channel)
    resp = await client.get("/ready")
    assert resp.status == 503
    assert (await resp.json())["dependencies"]["broker"] == {"kind": "redis", "state": "disconnected"}
    resp = await client.post("/publish", json={"topic": "dream:update.a", "message": "x"}, headers=auth(PUBLISHER_KEY))
    assert resp.status == 503 and (await resp.json())["error"] == "unavailable"
    assert (await client.get("/health")).status == 200


def test_backoff_is_capped_and_jittered() -> None:
    delays = [backoff_delay(n, 0.1, 1.0) for n in range(20)]
    assert all(0.05 <= d <= 1.0 for d in delays)
    assert max(delays[10:]) <= 1.0 and min(delays[10:]) >= 0.5
    assert len({round(backoff_delay(5), 6) for _ in range(20)}) > 1


async def test_redis_restart_like_outage(redis_url: str, channel: str, redis_client: aioredis.Redis) -> None:
    """The supervisor keeps retrying while the link is refused, then resubscribes."""
    handler = Recorder()
    got, gaps = handler.publications, handler.gaps
    broker = RedisBroker(redis_url, channel=channel, health_interval=0.5)
    await broker.start(handler)
    try:
        assert broker.ready
        for n in range(1, 4):
            await kill_subscriber(redis_client, broker.client_name)
            await wait_for(lambda n=n: broker.stats.reconnects == n and broker.ready, timeout=3)  # type: ignore[misc]
        assert len(gaps) == 3
        await redis_client.publish(channel, '{"topic":"t.a","message":"m"}')
        await wait_for(lambda: got == [("t.a", "m")], timeout=3)
    finally:
        await broker.close()
    assert not broker.ready
    await asyncio.sleep(0)


async def test_a_nested_envelope_does_not_cost_the_link(
    make_client: AppFactory, redis_url: str, channel: str, redis_client: aioredis.Redis
) -> None:
    client = await redis_app(make_client, redis_url, channel)
    broker = client.app[NODE].broker
    async with client.ws_connect("/ws") as ws:
        await listen(ws, ["dream:update.a"])
        nested = '{"topic":"dream:update.a","message":' + "[" * 300 + "]" * 300 + "}"
        pipe = redis_client.pipeline(transaction=False)
        pipe.publish(channel, nested)
        pipe.publish(channel, '{"topic":"dream:update.a","message":"after"}')
        await pipe.execute()
        assert await recv(ws) == {"type": "MESSAGE", "data": {"topic": "dream:update.a", "message": "after"}}
        assert broker.stats.reconnects == 0 and broker.stats.invalid_envelopes == 1


async def _paced_broker(
    redis_url: str, channel: str, interval: float, wrote: bool = True
) -> tuple[RedisBroker, list[str], list[int]]:
    """A broker with ``batch_interval``; returns it, the messages and the batch sizes."""
    batches: list[int] = []
    seen = 0

    def on_batch() -> bool:
        nonlocal seen
        batches.append(len(got) - seen)
        seen = len(got)
        return wrote

    handler = Recorder(on_batch)
    got = handler.messages
    broker = RedisBroker(redis_url, channel=channel, batch_interval=interval)
    await broker.start(handler)
    return broker, got, batches


async def test_reads_are_paced_while_publications_stream(
    redis_url: str, channel: str, redis_client: aioredis.Redis
) -> None:
    """After a read that fanned out, the link waits ``batch_interval`` before reading
    again: a stream is read in a few batches, in order, none lost."""
    broker, got, batches = await _paced_broker(redis_url, channel, 0.1)
    try:
        for n in range(40):
            await redis_client.publish(channel, orjson.dumps({"topic": "t.a", "message": str(n)}))
            await asyncio.sleep(0.005)
        await wait_for(lambda: len(got) == 40, timeout=3)
        assert got == [str(n) for n in range(40)]
        # 40 publications over >= 0.2 s, read at most once per 0.1 s (plus the first read)
        assert 2 <= len(batches) <= 10, batches  # unpaced: one read per publication
    finally:
        await broker.close()


async def test_reads_are_not_paced_when_nothing_was_written(
    redis_url: str, channel: str, redis_client: aioredis.Redis
) -> None:
    """Publications for topics nobody here listens to never pause the link."""
    broker, got, batches = await _paced_broker(redis_url, channel, 5.0, wrote=False)
    try:
        for n in range(10):
            await redis_client.publish(channel, orjson.dumps({"topic": "t.a", "message": str(n)}))
            await asyncio.sleep(0.01)
        await wait_for(lambda: len(got) == 10, timeout=1.0)  # paced, it would take >= 5 s
        assert len(batches) >= 5, batches
    finally:
        await broker.close()


def _push(channel: bytes, data: bytes) -> bytes:
    """One RESP2 pub/sub ``message`` push, as Redis sends it."""
    parts = [b"message", channel, data]
    return b"*3\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


async def test_the_link_rests_only_where_a_rest_pays() -> None:
    """The subscriber over a real socket whose other end plays Redis (the decision itself:
    tests/unit/test_read_pacing.py): an isolated publication, or two per interval of one
    frame each, is read as it comes; four at once within a stream pause reading for the
    interval (what arrives meanwhile waits in the socket), then reading resumes; two per
    interval that fan out wide rest too; once 32 KiB or more arrive within an interval, the
    link keeps reading (a rest could back data up into Redis's output buffer, which cuts
    slow subscribers)."""
    import socket as socket_module

    from realtime.redis_link import SubscriberLink

    loop = asyncio.get_running_loop()
    got: list[bytes] = []
    frames = [1]  # what on_batch_end answers: frames written for this read's publications
    ours, redis_end = socket_module.socketpair()
    transport, _ = await loop.connect_accepted_socket(
        lambda: SubscriberLink(b"c:control", got.append, lambda d: None, lambda: frames[0] * len(got), 0.6), ours
    )
    try:
        redis_end.sendall(_push(b"c", b"1"))
        await wait_for(lambda: got == [b"1"], timeout=2)
        assert transport.is_reading()  # isolated: a rest would only add a timer wake-up
        redis_end.sendall(_push(b"c", b"2"))
        await wait_for(lambda: got[-1:] == [b"2"], timeout=2)
        assert transport.is_reading()  # two within an interval, one frame each: not worth a rest
        got.clear()
        redis_end.sendall(b"".join(_push(b"c", b"%d" % n) for n in range(4)))
        await wait_for(lambda: len(got) == 4, timeout=2)
        assert not transport.is_reading()  # four at once in a stream: resting
        redis_end.sendall(_push(b"c", b"held"))
        await asyncio.sleep(0.1)
        assert got[-1:] == [b"3"]  # waiting in the socket
        await wait_for(lambda: got[-1:] == [b"held"], timeout=2)  # read after the rest
        await wait_for(transport.is_reading, timeout=2)  # (one more rest at most: the interval before was dense)
        await asyncio.sleep(1.0)  # a quiet spell
        got.clear()
        frames[0] = 100  # wide fan-out: two per interval merge into one write per listener
        redis_end.sendall(_push(b"c", b"w1"))
        await wait_for(lambda: got == [b"w1"], timeout=2)
        assert transport.is_reading()  # isolated
        got.clear()
        redis_end.sendall(_push(b"c", b"w2"))
        await wait_for(lambda: got == [b"w2"], timeout=2)
        assert not transport.is_reading()  # the second within the interval: rest
        await wait_for(transport.is_reading, timeout=2)
        await asyncio.sleep(1.0)
        frames[0] = 1
        got.clear()
        redis_end.sendall(b"".join(_push(b"c", b"%03d" % n + b"x" * 1000) for n in range(40)))  # 40 KB
        await wait_for(lambda: len(got) == 40, timeout=2)
        assert transport.is_reading()  # busy: no rest
        redis_end.sendall(b"".join(_push(b"c", b"small%d" % n) for n in range(4)))
        await wait_for(lambda: got[-1:] == [b"small3"], timeout=2)
        assert transport.is_reading()  # still busy within this interval and the next
    finally:
        transport.close()
        redis_end.close()


async def test_a_burst_larger_than_one_read_is_not_throttled(
    redis_url: str, channel: str, redis_client: aioredis.Redis
) -> None:
    """A burst of 4 MB is read at full speed, whatever the interval."""
    broker, got, _ = await _paced_broker(redis_url, channel, 0.5)
    try:
        pipe = redis_client.pipeline(transaction=False)
        for n in range(4000):
            pipe.publish(channel, orjson.dumps({"topic": "t.a", "message": f"{n:04d}" + "x" * 1000}))
        await pipe.execute()  # ~4 MB: 16+ full reads of 256 KB; paced, it would take >= 8 s
        await wait_for(lambda: len(got) == 4000, timeout=5)
        assert [m[:4] for m in got] == [f"{n:04d}" for n in range(4000)]
    finally:
        await broker.close()
