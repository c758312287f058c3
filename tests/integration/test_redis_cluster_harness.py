"""The local Redis Cluster harness (tests/redis_cluster.py) against real ``redis-server``
processes, and what Redis 7.0 and redis-py do with sharded pub/sub on it: one subscriber
connection per master, a failover after SIGKILL, a slot moved under a subscriber.

Each test has a cluster of its own (the ``redis_cluster`` fixture), so killing a node or
moving a slot disturbs nobody else.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import ClusterCrossSlotError, MovedError
from redis.exceptions import ConnectionError as RedisConnectionError

from realtime.redis_cluster import Address, SlotMap, diff, key_slot, parse_moved
from tests.redis_cluster import HOST, LocalCluster

pytestmark = pytest.mark.slow


def data_channel(topic: str, channel: str = "realtime") -> str:
    """A topic's sharded data channel, ``<channel>:{<topic>}`` (realtime/redis_functions.py)."""
    return f"{channel}:{{{topic}}}"


def channel_on(view: SlotMap, master: Address) -> str:
    """A data channel of a fresh topic whose slot ``master`` owns."""
    while True:
        name = data_channel(f"channel:update.{uuid.uuid4().hex[:8]}")
        if view.master_for_key(name) == master:
            return name


@asynccontextmanager
async def node_client(address: Address) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis(host=address.host, port=address.port, socket_timeout=5)
    try:
        yield client
    finally:
        await client.aclose()


@asynccontextmanager
async def cluster_client(cluster: LocalCluster) -> AsyncIterator[RedisCluster]:
    client = RedisCluster(startup_nodes=[ClusterNode(HOST, port) for port in cluster.ports])
    try:
        await client.initialize()
        yield client
    finally:
        await client.aclose()


async def next_message(pubsub: Any, timeout: float = 3.0) -> dict[str, Any]:
    """The next pub/sub message (subscription replies included), or fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        message = await pubsub.get_message(timeout=max(0.0, deadline - loop.time()))
        if message is not None:
            result: dict[str, Any] = message
            return result
    raise AssertionError(f"no message within {timeout} s")


async def subscribe(pubsub: Any, *names: str) -> dict[str, Any]:
    """SSUBSCRIBE and read the reply (an error reply is raised by the read)."""
    await pubsub.ssubscribe(*names)
    return await next_message(pubsub)


async def assert_no_message(pubsub: Any, timeout: float = 0.3) -> None:
    message = await pubsub.get_message(timeout=timeout)
    assert message is None, f"expected nothing, got {message}"


def test_cluster_forms_and_slots_match_redis(redis_cluster: LocalCluster) -> None:
    cluster = redis_cluster
    assert len(cluster.masters()) == 3
    assert len(cluster.replicas()) == 3
    for master in cluster.masters():
        assert len(cluster.replicas(master)) == 1
    view = cluster.slot_map()
    assert view.covered()
    assert cluster.seeds == [f"127.0.0.1:{port}" for port in cluster.ports]
    for port in cluster.ports:  # every node, replicas too, tells the same topology both ways
        assert cluster.slot_map(port) == view
        assert SlotMap.from_slots(cluster.call(port, "CLUSTER", "SLOTS")).masters() == view.masters()
    names = [
        "foo",
        "{}",
        "{a}{b}",
        "a{}{b}",
        "{{a}}",
        "é",
        *(f"realtime:{{user:remote-control.{i}}}" for i in range(200)),
    ]
    with cluster.client(cluster.ports[0]) as node:
        pipe = node.pipeline(transaction=False)
        for name in names:
            pipe.execute_command("CLUSTER", "KEYSLOT", name)
        assert pipe.execute() == [key_slot(name) for name in names]


async def test_sharded_pubsub_with_one_subscriber_per_master(redis_cluster: LocalCluster) -> None:
    view = redis_cluster.slot_map()
    masters = sorted(view.masters())
    channels = {master: channel_on(view, master) for master in masters}
    async with cluster_client(redis_cluster) as publisher, AsyncExitStack() as stack:
        subscribers = []
        for master in masters:
            node = await stack.enter_async_context(node_client(master))
            pubsub = node.pubsub()
            await pubsub.ssubscribe(channels[master])
            assert (await next_message(pubsub))["type"] == "ssubscribe"
            subscribers.append(pubsub)
            count = await node.execute_command("PUBSUB", "SHARDNUMSUB", channels[master])
            assert count == [channels[master].encode(), 1]
        for master, pubsub in zip(masters, subscribers, strict=True):
            assert await publisher.spublish(channels[master], f"to {master}") == 1  # routed by slot
            message = await next_message(pubsub)
            assert (message["type"], message["data"]) == ("smessage", f"to {master}".encode())
            assert message["channel"] == channels[master].encode()
        for pubsub in subscribers:  # a master's subscriber sees its own shard only
            await assert_no_message(pubsub)
            await pubsub.aclose()


async def test_sharded_subscribe_is_per_slot_and_per_owner(redis_cluster: LocalCluster) -> None:
    """What a per-master subscriber must respect: one SSUBSCRIBE names channels of one slot,
    a non-owner answers MOVED, and a non-owner counts no subscribers (ask the owner)."""
    view = redis_cluster.slot_map()
    first, second = sorted(view.masters())[:2]
    mine, also_mine, theirs = channel_on(view, first), channel_on(view, first), channel_on(view, second)
    assert key_slot(mine) != key_slot(also_mine)
    async with node_client(first) as node:
        pubsub = node.pubsub()
        with pytest.raises(ClusterCrossSlotError):
            await subscribe(pubsub, mine, also_mine)
        await pubsub.aclose()
        pubsub = node.pubsub()
        with pytest.raises(MovedError) as moved:
            await subscribe(pubsub, theirs)
        await pubsub.aclose()
        assert parse_moved(str(moved.value)) == (key_slot(theirs), second.host, second.port)
        assert await node.execute_command("PUBSUB", "SHARDNUMSUB", theirs) == [theirs.encode(), 0]


async def test_redis_py_cluster_pubsub_across_nodes(redis_cluster: LocalCluster) -> None:
    """redis-py 8.2's ``RedisCluster.pubsub()``: ``ssubscribe`` opens one connection per node
    owning a channel; ``get_sharded_message`` polls them in turn."""
    view = redis_cluster.slot_map()
    channels = [channel_on(view, master) for master in sorted(view.masters())]
    async with cluster_client(redis_cluster) as client:
        pubsub = client.pubsub()
        await pubsub.ssubscribe(*channels)
        assert len(pubsub.node_pubsub_mapping) == 3
        for name in channels:
            assert await client.spublish(name, "x") == 1
        received = set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while len(received) < len(channels) and loop.time() < deadline:
            message = await pubsub.get_sharded_message(ignore_subscribe_messages=True, timeout=0.2)
            if message is not None:
                received.add(message["channel"].decode())
        assert received == set(channels)
        await pubsub.aclose()


async def test_failover_after_a_master_is_killed(redis_cluster: LocalCluster) -> None:
    view = redis_cluster.slot_map()
    master = sorted(view.masters())[0]
    name = channel_on(view, master)
    meta = name + ":meta"
    async with node_client(master) as node:
        await node.hset(meta, "o", 41)
        assert await node.execute_command("WAIT", 1, 2000) == 1  # on the replica too
        pubsub = node.pubsub()
        await pubsub.ssubscribe(name)
        assert (await next_message(pubsub))["type"] == "ssubscribe"
        redis_cluster.kill(master.port)
        with pytest.raises(RedisConnectionError):  # (redis-py reconnects once: refused)
            await pubsub.get_message(timeout=2)
        await pubsub.aclose()
    promoted = await asyncio.to_thread(redis_cluster.wait_failover, master.port)
    after = redis_cluster.slot_map()
    change = diff(view, after)
    assert change.removed == {master} and change.added == {Address(HOST, promoted)}
    assert {(m.start, m.end) for m in change.moves} == set(view.slots_of(master))
    async with node_client(after.master_for_key(name)) as node, cluster_client(redis_cluster) as publisher:
        assert await node.hget(meta, "o") == b"41"  # the slot's keys survived on the replica
        pubsub = node.pubsub()
        await pubsub.ssubscribe(name)
        assert (await next_message(pubsub))["type"] == "ssubscribe"
        assert await publisher.spublish(name, "after") == 1
        assert (await next_message(pubsub))["data"] == b"after"
        await pubsub.aclose()


async def test_a_demoted_master_pushes_sunsubscribe_and_replicas_serve_shard_channels(
    redis_cluster: LocalCluster,
) -> None:
    view = redis_cluster.slot_map()
    master = sorted(view.masters())[0]
    replica = view.replicas(master)[0]
    name = channel_on(view, master)
    async with node_client(master) as old, node_client(replica) as other:
        on_master, on_replica = old.pubsub(), other.pubsub()
        assert (await subscribe(on_master, name))["type"] == "ssubscribe"
        assert (await subscribe(on_replica, name))["type"] == "ssubscribe"  # no READONLY needed
        assert await old.spublish(name, "both") == 1  # counts the master's own subscribers
        assert (await next_message(on_master))["data"] == b"both"
        assert (await next_message(on_replica))["data"] == b"both"  # propagated to the replica
        await asyncio.to_thread(redis_cluster.manual_failover, replica.port)
        pushed = await next_message(on_master)  # the old master, now a replica, drops them
        assert (pushed["type"], pushed["channel"]) == ("sunsubscribe", name.encode())
        await assert_no_message(on_replica)  # the promoted replica keeps its subscribers
        assert await other.spublish(name, "after") == 1
        assert (await next_message(on_replica))["data"] == b"after"
        await on_master.aclose()
        await on_replica.aclose()


async def test_moving_a_slot_pushes_sunsubscribe(redis_cluster: LocalCluster) -> None:
    view = redis_cluster.slot_map()
    source, target = sorted(view.masters())[:2]
    name = channel_on(view, source)
    history = name + ":history"
    async with node_client(source) as old:
        await old.xadd(history, {"m": "kept"}, id="1-0")
        pubsub = old.pubsub()
        await pubsub.ssubscribe(name)
        assert (await next_message(pubsub))["type"] == "ssubscribe"
        slot = await asyncio.to_thread(redis_cluster.move_slot_of, name, target.port)
        assert slot == key_slot(name)
        pushed = await next_message(pubsub)  # Redis 7.0 drops the slot's shard subscribers
        assert (pushed["type"], pushed["channel"], pushed["data"]) == ("sunsubscribe", name.encode(), 0)
        await pubsub.aclose()
        with pytest.raises(MovedError) as moved:
            await old.xlen(history)
        assert parse_moved(str(moved.value)) == (slot, target.host, target.port)
    after = redis_cluster.slot_map()
    assert diff(view, after).moves == ((slot, slot, source, target),)
    async with node_client(target) as new, cluster_client(redis_cluster) as publisher:
        assert [e[1] for e in await new.xrange(history)] == [{b"m": b"kept"}]  # the keys moved along
        pubsub = new.pubsub()
        await pubsub.ssubscribe(name)
        assert (await next_message(pubsub))["type"] == "ssubscribe"
        assert await publisher.spublish(name, "moved") == 1
        assert (await next_message(pubsub))["data"] == b"moved"
        await pubsub.aclose()


def test_moving_a_range_of_slots(redis_cluster: LocalCluster) -> None:
    view = redis_cluster.slot_map()
    target = view.master_for(16383)
    redis_cluster.move_slots(range(100, 110), target.port)
    assert diff(view, redis_cluster.slot_map()).moves == ((100, 109, view.master_for(100), target),)


def test_reshard_with_redis_cli(redis_cluster: LocalCluster) -> None:
    view = redis_cluster.slot_map()
    source, target = sorted(view.masters())[:2]
    redis_cluster.reshard(source.port, target.port, slots=10)
    change = diff(view, redis_cluster.slot_map())
    assert sum(m.end - m.start + 1 for m in change.moves) == 10
    assert {(m.old, m.new) for m in change.moves} == {(source, target)}
    assert not change.added and not change.removed
