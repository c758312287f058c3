"""History on Redis: the Redis Function library, RedisBroker's history, the barrier.

Against the shared Redis (names derived from the test's unique ``channel``; the library is
deleted at the end) and, where Redis restarts, a private redis-server without persistence.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from realtime.errors import BrokerUnavailable
from realtime.history import Position, Publication
from realtime.redis_broker import RedisBroker
from realtime.redis_functions import HistoryFunctions, function_names, history_key, meta_key, topic_channel
from tests.conftest import wait_for
from tests.integration.test_faults import PrivateRedis, private_redis  # noqa: F401 - a fixture
from topics import TopicPolicy, TopicRule

KEPT = TopicRule("test:kept", None, "any", 5, 60)
SHORT = TopicRule("test:short", None, "any", 3, 1)
PLAIN = TopicRule("test:plain", None, "any")
POLICY = TopicPolicy({rule.name: rule for rule in (KEPT, SHORT, PLAIN)})


class Recorder:
    """A broker event handler recording publications with their positions."""

    def __init__(self, wrote: bool = False) -> None:
        self.publications: list[tuple[str, str, int, str]] = []
        self.gaps = 0
        self.wrote = wrote  # what on_batch_end answers (True: a paced link rests after a read)
        self.ready: list[str] = []

    def on_publication(self, topic: str, message: str, offset: int = 0, epoch: str = "") -> None:
        self.publications.append((topic, message, offset, epoch))

    def on_control(self, message: dict[str, object]) -> None:
        pass

    def on_gap(self, topics: list[str] | None = None) -> None:
        self.gaps += 1

    def on_batch_end(self) -> bool:
        return self.wrote

    def on_listen_ready(self, topics: list[str]) -> None:
        self.ready.extend(topics)


async def watch(broker: RedisBroker, handler: Recorder, topic: str) -> None:
    """Have the broker receive ``topic``'s channel (per-topic routing), as a LISTEN would."""
    if not broker.watch(topic):
        await wait_for(lambda: topic in handler.ready)


async def _cleanup(url: str, channel: str) -> None:
    client = aioredis.from_url(url)
    try:
        with contextlib.suppress(ResponseError):  # never loaded
            await client.function_delete(function_names(channel).library)
        keys = [key async for key in client.scan_iter(match=f"{channel}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def functions(redis_url: str, channel: str) -> AsyncIterator[HistoryFunctions]:
    """The test channel's library on the shared Redis (deleted at the end, with its keys)."""
    client = aioredis.from_url(redis_url)
    funcs = HistoryFunctions(client, channel=channel, policy=POLICY)
    await funcs.load()
    try:
        yield funcs
    finally:
        await client.aclose()
        await _cleanup(redis_url, channel)


@pytest.fixture
async def cleanup(redis_url: str, channel: str) -> AsyncIterator[None]:
    """Delete the test channel's library and keys at the end."""
    yield
    await _cleanup(redis_url, channel)


async def _collect(pubsub: aioredis.client.PubSub, count: int, timeout: float = 10.0) -> list[dict[str, object]]:
    got: list[dict[str, object]] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while len(got) < count:
        assert asyncio.get_running_loop().time() < deadline, f"got {len(got)} of {count}"
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        if msg is not None:
            got.append(orjson.loads(msg["data"]))
    return got


async def test_concurrent_publishers_get_gap_free_offsets(
    redis_url: str, channel: str, functions: HistoryFunctions, redis_client: aioredis.Redis
) -> None:
    """asyncio publishers (a broker and the wrapper) and redis-cli processes at once: every
    offset once, in order, one epoch."""
    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.skip("no redis-cli")
    topic = "test:kept.race"
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(topic_channel(channel, topic))  # the Function publishes on the topic's channel
    broker = RedisBroker(redis_url, channel=channel, policy=POLICY)
    broker.start_publisher()
    host, port = (
        redis_client.connection_pool.connection_kwargs["host"],
        redis_client.connection_pool.connection_kwargs["port"],
    )
    command = [cli, "-h", str(host), "-p", str(port), "-r", "40"]
    command += ["FCALL", function_names(channel).publish, "1", history_key(channel, topic), topic, "from cli"]
    procs = [await asyncio.create_subprocess_exec(*command, stdout=subprocess.DEVNULL) for _ in range(3)]

    async def publisher(n: int) -> list[Position]:
        if n % 2:
            return [await functions.publish(topic, f"fn {n} {i}", KEPT) for i in range(50)]
        return [p for i in range(50) if (p := await broker.publish(topic, f"broker {n} {i}", KEPT)) is not None]

    try:
        positions = [p for batch in await asyncio.gather(*(publisher(n) for n in range(4))) for p in batch]
        assert [await asyncio.wait_for(proc.wait(), 10) for proc in procs] == [0, 0, 0]
        got = await _collect(pubsub, 4 * 50 + 3 * 40)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await broker.close()
        await pubsub.aclose()
    assert [m["offset"] for m in got] == list(range(1, 4 * 50 + 3 * 40 + 1))
    assert len({m["epoch"] for m in got}) == 1
    assert len(set(positions)) == 200 and {p.epoch for p in positions} == {got[0]["epoch"]}
    assert sum(m["message"] == "from cli" for m in got) == 120
    assert await pubsub_silent(redis_client, topic_channel(channel, topic))


async def pubsub_silent(client: aioredis.Redis, channel: str) -> bool:
    """Nothing more arrives on ``channel`` within a short timeout."""
    pubsub = client.pubsub()
    await pubsub.subscribe(channel)
    try:
        await pubsub.get_message(timeout=0.5)  # the confirmation
        return await pubsub.get_message(timeout=0.3) is None
    finally:
        await pubsub.aclose()


async def test_history_is_bounded_and_expires(
    channel: str, functions: HistoryFunctions, redis_client: aioredis.Redis
) -> None:
    topic = "test:kept.bounds"
    for i in range(12):
        last = await functions.publish(topic, f"m{i}", KEPT)
    assert last.offset == 12
    assert await redis_client.xlen(history_key(channel, topic)) == 5
    page = await functions.read(topic, 0, 100, KEPT)
    assert page.publications == [Publication(n, f"m{n - 1}") for n in range(8, 13)]
    assert (page.offset, page.epoch, page.first) == (12, last.epoch, 8)
    for key in (history_key(channel, topic), meta_key(channel, topic)):
        assert 0 < await redis_client.ttl(key) <= 60


async def test_expired_history_starts_a_new_epoch(
    channel: str, functions: HistoryFunctions, redis_client: aioredis.Redis
) -> None:
    topic = "test:short.ttl"
    for i in range(4):
        old = await functions.publish(topic, f"m{i}", SHORT)
    assert old.offset == 4 and await redis_client.xlen(history_key(channel, topic)) == 3
    keys = (history_key(channel, topic), meta_key(channel, topic))
    deadline = asyncio.get_running_loop().time() + 5
    while await redis_client.exists(*keys):
        assert asyncio.get_running_loop().time() < deadline, "keys did not expire"
        await asyncio.sleep(0.05)
    new = await functions.publish(topic, "again", SHORT)
    assert new.offset == 1 and new.epoch != old.epoch
    page = await functions.read(topic, 0, 10, SHORT)
    assert page.publications == [Publication(1, "again")] and page.first == 1


async def test_read_paging_and_a_read_creates_nothing(
    functions: HistoryFunctions, redis_client: aioredis.Redis, channel: str
) -> None:
    topic = "test:kept.paging"
    empty = await functions.read(topic, 0, 10, KEPT)
    assert (empty.publications, empty.offset, empty.epoch, empty.first) == ([], 0, "", 1)
    assert await redis_client.exists(meta_key(channel, topic), history_key(channel, topic)) == 0
    first = await functions.publish(topic, "m1", KEPT)
    assert first.offset == 1 and first.epoch != ""
    for i in range(2, 6):
        assert await functions.publish(topic, f"m{i}", KEPT) == Position(i, first.epoch)
    pages = [await functions.read(topic, since, 2, KEPT) for since in (0, 2, 4, 5, 99)]
    assert [[p.offset for p in page.publications] for page in pages] == [[1, 2], [3, 4], [5], [], []]
    assert {(page.offset, page.epoch, page.first) for page in pages} == {(5, first.epoch, 1)}
    assert (await functions.read(topic, 0, 0, KEPT)).publications == []
    for i in range(6, 9):
        await functions.publish(topic, f"m{i}", KEPT)
    page = await functions.read(topic, 1, 2, KEPT)  # fell out of history: from the first held
    assert page.publications == [Publication(4, "m4"), Publication(5, "m5")] and page.first == 4
    assert not page.covers(Position(1, first.epoch)) and page.covers(Position(3, first.epoch))


async def test_the_functions_refuse_bad_calls(
    channel: str, functions: HistoryFunctions, redis_client: aioredis.Redis
) -> None:
    names, topic = function_names(channel), "test:kept.bad"
    key = history_key(channel, topic)
    with pytest.raises(ResponseError, match="expected " + key.replace("{", r"\{").replace("}", r"\}")):
        await redis_client.fcall(names.publish, 1, history_key(channel, "test:kept.other"), topic, "m")
    with pytest.raises(ResponseError, match="keeps no history"):
        await redis_client.fcall(names.publish, 1, history_key(channel, "test:plain.a"), "test:plain.a", "m")
    for since, limit in (("-1", "1"), ("1", "x"), ("1.5", "1"), ("1", "")):
        with pytest.raises(ResponseError, match="non-negative integers"):
            await redis_client.fcall(names.history, 1, key, topic, since, limit)
    with pytest.raises(BrokerUnavailable, match="keeps no history"):
        await functions.publish("test:plain.a", "m", KEPT)
    assert await redis_client.exists(key, meta_key(channel, topic)) == 0


async def test_raw_fcall_message_is_delivered_as_is(
    redis_url: str, channel: str, functions: HistoryFunctions, redis_client: aioredis.Redis
) -> None:
    """A caller's text, JSON-looking or not, with quotes and non-ASCII, reaches the handler
    verbatim, with its position."""
    handler = Recorder()
    broker = RedisBroker(redis_url, channel=channel, policy=POLICY, probe_interval=0)
    await broker.start(handler)
    topic = "test:kept.raw"
    await watch(broker, handler, topic)
    texts = ['{"a": [1, 2]}', 'quote " slash / \\ tab \t é ✓', ""]
    try:
        for text in texts:
            await redis_client.fcall(function_names(channel).publish, 1, history_key(channel, topic), topic, text)
        page = await broker.history(topic, since=0, limit=10, rule=KEPT)
    finally:
        await broker.close()
    assert [(t, m, o) for t, m, o, _ in handler.publications] == [(topic, t, n) for n, t in enumerate(texts, 1)]
    assert page.publications == [Publication(n, t) for n, t in enumerate(texts, 1)]


async def test_raw_fcall_message_that_is_not_utf8_is_delivered_live(
    redis_url: str, channel: str, functions: HistoryFunctions, redis_client: aioredis.Redis
) -> None:
    """Bytes that are not UTF-8 go to history as they are; the live publication must not be
    dropped as an invalid envelope (it would reach listeners only once a later publication
    showed the hole): both carry the text with U+FFFD, as history reads decode it."""
    handler = Recorder()
    broker = RedisBroker(redis_url, channel=channel, policy=POLICY, probe_interval=0)
    await broker.start(handler)
    topic = "test:kept.bytes"
    await watch(broker, handler, topic)
    try:
        await redis_client.fcall(function_names(channel).publish, 1, history_key(channel, topic), topic, b"a\xffb")
        page = await broker.history(topic, since=0, limit=10, rule=KEPT)
    finally:
        await broker.close()
    assert page.publications == [Publication(1, "a\ufffdb")]
    assert [(t, m, o) for t, m, o, _ in handler.publications] == [(topic, "a\ufffdb", 1)]
    assert broker.stats.invalid_envelopes == 0


async def test_history_waits_for_the_publications_before_it(
    redis_url: str, channel: str, cleanup: None, redis_client: aioredis.Redis
) -> None:
    """When history() returns, every publication up to the page's offset was handed to the
    handler (the barrier), here after a burst another client made right before."""
    handler = Recorder(wrote=True)
    broker = RedisBroker(redis_url, channel=channel, policy=POLICY, probe_interval=0, batch_interval=0.05)
    await broker.start(handler)
    topic, names = "test:kept.barrier", function_names(channel)
    await watch(broker, handler, topic)
    try:
        for round_ in range(5):
            pipe = redis_client.pipeline(transaction=False)
            for i in range(200):
                pipe.fcall(names.publish, 1, history_key(channel, topic), topic, f"{round_} {i}")
            await pipe.execute()
            pages = await asyncio.gather(*(broker.history(topic, since=0, limit=1, rule=KEPT) for _ in range(3)))
            handled = [offset for _, _, offset, _ in handler.publications]
            assert handled[-1] >= max(page.offset for page in pages) == 200 * (round_ + 1)
    finally:
        await broker.close()
    assert handled == list(range(1, 1001))


async def test_history_returns_only_after_delivery_caught_up(
    redis_url: str, channel: str, cleanup: None, redis_client: aioredis.Redis
) -> None:
    """With the subscriber link not reading, a history read that Redis answered is held
    until the publications before it were read and handed on."""
    handler = Recorder()
    broker = RedisBroker(redis_url, channel=channel, policy=POLICY, probe_interval=0)
    await broker.start(handler)
    topic, names = "test:kept.held", function_names(channel)
    await watch(broker, handler, topic)
    try:
        link = broker._link
        assert link is not None and link.transport is not None
        link.transport.pause_reading()
        for i in range(3):
            await redis_client.fcall(names.publish, 1, history_key(channel, topic), topic, f"m{i}")
        read = asyncio.create_task(broker.history(topic, since=0, limit=10, rule=KEPT))
        done, _ = await asyncio.wait({read}, timeout=0.3)
        assert not done and handler.publications == []
        link.transport.resume_reading()
        page = await read
        assert page.offset == 3 and [offset for _, _, offset, _ in handler.publications] == [1, 2, 3]
    finally:
        await broker.close()


async def test_barrier_fails_when_the_link_is_lost(redis_url: str, channel: str) -> None:
    broker = RedisBroker(redis_url, channel=channel, policy=POLICY, probe_interval=0)
    await broker.start(Recorder())
    try:
        link = broker._link
        assert link is not None and broker.ready
        unwritten = link.barrier()
        written = link.barrier()
        assert written is not unwritten
        await asyncio.sleep(0)  # the shared PING is written; its PONG cannot be read yet
        late = link.barrier()  # the next pass's PING: never written
        link.drop("test")
        for fut in (unwritten, written):
            with pytest.raises(RuntimeError, match="test"):
                await fut
        with pytest.raises(ConnectionError):
            await late
        with pytest.raises(ConnectionError):
            await link.barrier()
    finally:
        await broker.close()
        await _cleanup(redis_url, channel)


async def test_restarted_redis_reloads_the_library(private_redis: PrivateRedis, channel: str) -> None:  # noqa: F811
    """Redis restarted without its data: the next call loads the library again (function
    not found -> load -> retry), and offsets restart at 1 in a new epoch."""
    client = aioredis.from_url(private_redis.url)
    functions = HistoryFunctions(client, channel=channel, policy=POLICY)
    topic = "test:kept.restart"
    try:
        for i in range(3):
            before = await functions.publish(topic, f"m{i}", KEPT)  # loaded on the first call
        private_redis.stop()
        with pytest.raises(BrokerUnavailable):
            await functions.publish(topic, "down", KEPT)
        private_redis.start()
        after = await functions.publish(topic, "back", KEPT)
        assert before.offset == 3 and after.offset == 1 and after.epoch != before.epoch
        assert (await functions.read(topic, 0, 10, KEPT)).publications == [Publication(1, "back")]
    finally:
        await client.aclose()


async def test_reconnect_reloads_the_library(private_redis: PrivateRedis, channel: str) -> None:  # noqa: F811
    handler = Recorder()
    broker = RedisBroker(private_redis.url, channel=channel, policy=POLICY, health_interval=0.2, probe_interval=0)
    await broker.start(handler)
    client = aioredis.from_url(private_redis.url)
    library = function_names(channel).library
    await watch(broker, handler, "test:kept.a")  # watched again on the next link by itself
    try:
        assert [lib[b"library_name"] for lib in await _libraries(client)] == [library.encode()]
        first = await broker.publish("test:kept.a", "before", KEPT)
        # delivered before the SIGKILL: Redis may write the FCALL's reply before the subscriber's
        # message, and a kill between the two writes (or an RST) loses it; not what this tests
        await wait_for(lambda: [m for _, m, _, _ in handler.publications] == ["before"], timeout=5)
        private_redis.stop()
        await wait_for(lambda: not broker.ready, timeout=5)
        private_redis.start()
        await wait_for(lambda: broker.ready, timeout=10)
        assert [lib[b"library_name"] for lib in await _libraries(client)] == [library.encode()]
        second = await broker.publish("test:kept.a", "after", KEPT)
        assert first is not None and second is not None
        assert second.offset == 1 and second.epoch != first.epoch and handler.gaps == 1
        await wait_for(lambda: [m for _, m, _, _ in handler.publications] == ["before", "after"], timeout=15)
    finally:
        await client.aclose()
        await broker.close()


async def _libraries(client: aioredis.Redis) -> list[dict[bytes, object]]:
    libraries: list[dict[bytes, object]] = await client.execute_command("FUNCTION", "LIST")  # type: ignore[no-untyped-call]
    return libraries


async def test_a_started_broker_refuses_history_while_unsubscribed(
    private_redis: PrivateRedis,  # noqa: F811
    channel: str,
) -> None:
    broker = RedisBroker(private_redis.url, channel=channel, policy=POLICY, health_interval=0.2, probe_interval=0)
    await broker.start(Recorder())
    try:
        private_redis.stop()
        await wait_for(lambda: not broker.ready, timeout=5)
        with pytest.raises(BrokerUnavailable, match="not subscribed"):
            await broker.publish("test:kept.a", "m", KEPT)
        with pytest.raises(BrokerUnavailable, match="not subscribed"):
            await broker.history("test:kept.a", since=0, limit=1, rule=KEPT)
    finally:
        await broker.close()


def test_cli_publish_prints_the_offset(
    redis_url: str,
    channel: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from service.cli import main

    policy = tmp_path / "topics.toml"
    policy.write_text('[topics."test:kept"]\ntarget = "any"\nhistory_size = 5\nhistory_ttl = 60\n')
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("REDIS_CHANNEL", channel)
    monkeypatch.setenv("TOPICS_FILE", str(policy))
    try:
        assert main(["publish", "test:kept.cli", "one"]) == 0
        assert main(["publish", "test:kept.cli", "two"]) == 0
        out = capsys.readouterr().out
        assert "published to test:kept.cli (offset 1, epoch " in out
        assert "published to test:kept.cli (offset 2, epoch " in out
    finally:
        asyncio.run(_cleanup(redis_url, channel))


async def test_more_reads_at_once_than_connections_wait_instead_of_failing(
    redis_url: str, channel: str, cleanup: None
) -> None:
    """A reconnect storm's reads of history: past the pool's connections, commands wait for
    one (redis-py's default pool raised MaxConnectionsError: 503s under load)."""
    broker = RedisBroker(redis_url, channel=channel, policy=POLICY, probe_interval=0)
    await broker.start(Recorder())
    try:
        pages = await asyncio.gather(
            *(broker.history(f"test:kept.t{i}", since=0, limit=10, rule=KEPT) for i in range(300))
        )
    finally:
        await broker.close()
    assert len(pages) == 300 and all(page.offset == 0 for page in pages)
