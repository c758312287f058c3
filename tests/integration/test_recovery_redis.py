"""Zero loss across deploys and broker faults, on topics with history: real server processes,
a private redis-server, the Python client SDK reconnecting by itself.

Every test runs the same harness: clients (``RealtimeClient``, reconnecting to the other
instance on RECONNECT) listen to topics with history; a publisher calls the Redis Function
``<channel>_publish`` at a steady rate (and ``/publish`` on a live instance now and then) while
something goes wrong; at the end every client must have received every publication on its
topic exactly once, in order, with one epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from realtime.client import RealtimeClient
from realtime.redis_functions import function_names, history_key
from tests.conftest import API_KEYS_JSON, PUBLISHER_KEY, auth
from tests.integration.test_faults import PrivateRedis
from tests.procs import Server

TOPIC_COUNT = 100
RATE = 1000  # publications per second, over all topics
CHANNEL = "realtime"


@dataclass
class Listener:
    """One SDK client on one topic and what it received: (offset, epoch, message)."""

    topic: str
    client: RealtimeClient
    got: list[tuple[int, str, str]] = field(default_factory=list)
    gaps: list[Any] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        async for event in self.client:
            if event.type == "MESSAGE":
                assert event.offset is not None and event.epoch is not None
                self.got.append((event.offset, event.epoch, event.message or ""))
            elif event.type == "GAP":
                self.gaps.append(event)


def server_env(redis_url: str, **extra: str) -> dict[str, str]:
    return {
        "API_KEYS": API_KEYS_JSON,
        "REDIS_URL": redis_url,
        "REDIS_CHANNEL": CHANNEL,
        "SHUTDOWN_GRACE": "3",
        "CONNECT_RATE_PER_IP": "0",
        "LISTEN_RATE": "0",
        **extra,
    }


class Publisher:
    """Publishes ``n`` (a counter) on topic ``n % TOPIC_COUNT`` at ``RATE``/s through the Redis
    Function, every tenth through ``/publish`` on a live instance instead."""

    def __init__(self, redis_url: str, servers: list[Server]) -> None:
        self.redis = aioredis.from_url(redis_url)
        self.servers = servers
        self.sent: dict[str, list[str]] = {f"dream:job:progress.t{i}": [] for i in range(TOPIC_COUNT)}
        self.stop = asyncio.Event()
        self.done = asyncio.Event()
        self.kept: dict[str, list[tuple[int, str]]] = {}  # what Redis holds, read at the end
        self.http_refused = 0

    async def run(self) -> None:
        fn = function_names(CHANNEL).publish
        started = time.monotonic()
        async with aiohttp.ClientSession() as http:
            try:
                await self._loop(http, fn, started)
            finally:
                self.done.set()

    async def _loop(self, http: aiohttp.ClientSession, fn: str, started: float) -> None:
        n = 0
        while not self.stop.is_set():
            topic = f"dream:job:progress.t{n % TOPIC_COUNT}"
            message = f"n{n}"
            if not (n % 10 == 9 and await self._via_http(http, topic, message)):
                await self.redis.fcall(fn, 1, history_key(CHANNEL, topic), topic, message)
            self.sent[topic].append(message)
            n += 1
            ahead = n / RATE - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)

    async def _via_http(self, http: aiohttp.ClientSession, topic: str, message: str) -> bool:
        for server in self.servers:
            if server.proc.poll() is not None:
                continue
            with contextlib.suppress(aiohttp.ClientError):
                async with http.post(
                    server.url + "/publish", json={"topic": topic, "message": message}, headers=auth(PUBLISHER_KEY)
                ) as resp:
                    if resp.status == 202:
                        return True
                    self.http_refused += 1
        return False


async def until_ready(servers: list[Server], timeout: float = 15.0) -> None:
    """Wait until every server is subscribed to Redis (``/ready``): a LISTEN accepted before an
    instance's first subscription is rightly answered with GAP ``broker_reconnected``."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        for server in servers:
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(server.url + "/ready") as resp:
                        if resp.status == 200:
                            break
                assert time.monotonic() < deadline, f"{server.url} not ready"
                await asyncio.sleep(0.05)


async def start_listeners(servers: list[Server], per_topic: int = 1) -> list[Listener]:
    await until_ready(servers)
    listeners = []
    urls = [s.url for s in servers]
    for i in range(TOPIC_COUNT * per_topic):
        topic = f"dream:job:progress.t{i % TOPIC_COUNT}"
        order = urls[i % len(urls) :] + urls[: i % len(urls)]  # half start on each instance
        client = RealtimeClient(order, [topic], backoff_initial=0.05, backoff_max=0.5, response_timeout=5)
        await client.start()
        listener = Listener(topic, client)
        listener.task = asyncio.create_task(listener.run())
        listeners.append(listener)
    return listeners


async def finish(publisher: Publisher, listeners: list[Listener], timeout: float = 20) -> None:
    """Stop publishing, read what Redis holds for every topic (the truth: a /publish answered
    503 may still have run, as a cut connection's reply can be lost), and wait until every
    listener has as many publications."""
    publisher.stop.set()
    await publisher.done.wait()
    for topic in publisher.sent:
        entries = await publisher.redis.xrange(history_key(CHANNEL, topic))
        publisher.kept[topic] = [(int(eid.split(b"-")[0]), fields[b"m"].decode()) for eid, fields in entries]
    deadline = time.monotonic() + timeout
    while lagging := [lst for lst in listeners if len(lst.got) < len(publisher.kept[lst.topic])]:
        assert time.monotonic() < deadline, "listeners did not catch up: " + "; ".join(
            f"{lst.topic} got {len(lst.got)} of {len(publisher.kept[lst.topic])}, last offsets "
            f"{[o for o, _, _ in lst.got][-3:]}, gaps {lst.gaps}, url {lst.client.url}, "
            f"reconnects {lst.client.reconnects}"
            for lst in lagging[:3]
        )
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)  # anything doubled would arrive by now
    for lst in listeners:
        await lst.client.close()
        if lst.task is not None:
            lst.task.cancel()
    await publisher.redis.aclose()


def assert_exactly_once_in_order(publisher: Publisher, listeners: list[Listener]) -> None:
    for lst in listeners:
        kept, sent = publisher.kept[lst.topic], publisher.sent[lst.topic]
        assert len(kept) < 300, "history was trimmed: the check needs all of it"
        assert [o for o, _ in kept] == list(range(1, len(kept) + 1))
        received = [(o, m) for o, _, m in lst.got]
        first_wrong = next(
            (i for i, (a, b) in enumerate(zip(received, kept, strict=False)) if a != b), min(len(received), len(kept))
        )
        assert received == kept, (
            f"{lst.topic}: holes or duplicates: got {len(received)} of {len(kept)}, from index {first_wrong}: "
            f"{received[max(0, first_wrong - 2) : first_wrong + 3]} vs {kept[max(0, first_wrong - 2) : first_wrong + 3]}, "
            f"gaps {lst.gaps}"
        )
        messages = iter(m for _, m in kept)
        assert all(m in messages for m in sent), f"{lst.topic}: an accepted publication is missing"
        assert len({e for _, e, _ in lst.got}) == 1, f"{lst.topic}: the epoch changed"
        assert lst.gaps == [], f"{lst.topic}: {lst.gaps}"


async def run_through(
    redis_url: str, servers: list[Server], fault: Callable[[], Awaitable[None]], *, settle: float = 1.0
) -> tuple[Publisher, list[Listener]]:
    listeners = await start_listeners(servers)
    publisher = Publisher(redis_url, servers)
    pub_task = asyncio.create_task(publisher.run())
    await asyncio.sleep(settle)
    await fault()
    await asyncio.sleep(settle)
    await finish(publisher, listeners)
    await pub_task
    return publisher, listeners


@pytest.fixture
def redis_server(tmp_path: Path) -> Any:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.mark.slow
async def test_rolling_deploy_loses_nothing_and_doubles_nothing(
    spawn: type[Server], redis_server: PrivateRedis
) -> None:
    env = server_env(redis_server.url)
    servers = [spawn(env=env), spawn(env=env)]

    async def restart(i: int) -> None:
        old = servers[i]
        assert await asyncio.to_thread(old.stop) == 0
        servers[i] = spawn(env=env, port=old.port)  # the same address: clients find it again
        await asyncio.sleep(1.0)

    async def deploy() -> None:
        await restart(0)
        await restart(1)

    publisher, listeners = await run_through(redis_server.url, servers, deploy)
    assert sum(len(p) for p in publisher.sent.values()) > 3 * RATE
    assert_exactly_once_in_order(publisher, listeners)
    assert sum(lst.client.reconnects for lst in listeners) >= TOPIC_COUNT  # every client moved at least once


@pytest.mark.slow
async def test_client_kill_of_the_subscribers_loses_nothing(spawn: type[Server], redis_server: PrivateRedis) -> None:
    env = server_env(redis_server.url)
    servers = [spawn(env=env), spawn(env=env)]
    admin = aioredis.from_url(redis_server.url)

    async def kill() -> None:
        await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")

    publisher, listeners = await run_through(redis_server.url, servers, kill)
    await admin.aclose()
    assert_exactly_once_in_order(publisher, listeners)
    assert all(lst.client.reconnects == 0 for lst in listeners)  # the instances recovered, not the clients


class CuttingProxy:
    """A TCP proxy in front of a Redis whose :meth:`cut` drops every connection and refuses
    new ones for a while: the instances' network to Redis is down, Redis keeps its data."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.open: set[asyncio.StreamWriter] = set()
        self.down_until = 0.0
        self.server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    async def cut(self, seconds: float) -> None:
        self.down_until = time.monotonic() + seconds
        for writer in list(self.open):
            writer.transport.abort()
        await asyncio.sleep(seconds)

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.open):
            writer.transport.abort()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if time.monotonic() < self.down_until:
            client_w.transport.abort()
            return
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.open |= {client_w, redis_w}
        try:
            await asyncio.gather(self._pipe(client_r, redis_w), self._pipe(redis_r, client_w))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            for writer in (client_w, redis_w):
                self.open.discard(writer)
                writer.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.transport.abort()


@pytest.mark.slow
async def test_a_10_s_network_outage_between_instances_and_redis_loses_nothing(
    spawn: type[Server], redis_server: PrivateRedis
) -> None:
    proxy = CuttingProxy(redis_server.port)
    await proxy.start()
    env = server_env(proxy.url)
    servers = [spawn(env=env), spawn(env=env)]

    async def outage() -> None:
        await proxy.cut(10)

    publisher, listeners = await run_through(redis_server.url, servers, outage, settle=2.0)
    await proxy.close()
    assert_exactly_once_in_order(publisher, listeners)
    assert all(lst.client.reconnects == 0 for lst in listeners)


@pytest.mark.slow
async def test_redis_restarted_without_data_changes_the_epoch_and_says_history_lost(
    spawn: type[Server], redis_server: PrivateRedis
) -> None:
    env = server_env(redis_server.url)
    server = spawn(env=env)
    topic = "dream:update.restart"
    fn = function_names(CHANNEL).publish
    client = RealtimeClient(server.url, [topic], backoff_initial=0.05, backoff_max=0.5)
    await client.start()
    events: list[Any] = []

    async def read() -> None:
        async for event in client:
            events.append(event)

    reader = asyncio.create_task(read())

    async def publish(message: str) -> list[Any]:
        redis = aioredis.from_url(redis_server.url)
        try:
            reply: list[Any] = await redis.fcall(fn, 1, history_key(CHANNEL, topic), topic, message)
            return reply
        finally:
            await redis.aclose()

    async def wait_events(count: int) -> None:
        deadline = time.monotonic() + 15
        while len(events) < count:
            assert time.monotonic() < deadline, events
            await asyncio.sleep(0.05)

    for i in range(3):
        await publish(f"before {i}")
    await wait_events(3)
    old_epoch = events[0].epoch
    redis_server.stop()
    redis_server.start()  # the same port, no data: history, offsets and the function are gone
    deadline = time.monotonic() + 15
    while True:  # the instance reloads the library once it is back
        try:
            reply = await publish("after 0")
            break
        except Exception:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
    assert reply[0] == 1 and (reply[1].decode() if isinstance(reply[1], bytes) else reply[1]) != old_epoch
    await publish("after 1")
    await wait_events(6)
    kinds = [(e.type, getattr(e, "reason", None)) for e in events]
    assert kinds[:3] == [("MESSAGE", None)] * 3
    assert ("GAP", "history_lost") in kinds[3:], kinds  # never a wrong replay
    gap = kinds.index(("GAP", "history_lost"))
    after = [e for e in events[gap:] if e.type == "MESSAGE"]  # "after 0" may precede the GAP's read
    assert [(e.offset, e.message) for e in after][-1] == (2, "after 1")
    assert [e.offset for e in after] == list(range(3 - len(after), 3))  # no hole after the GAP
    assert old_epoch not in {e.epoch for e in after}
    await client.close()
    reader.cancel()
    assert await asyncio.to_thread(server.stop) == 0
