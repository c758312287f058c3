"""Pure parts of the Redis Cluster broker: seed parsing, per-slot SSUBSCRIBE batching, the
sharded history library, the ``sunsubscribe`` bookkeeping of a shard link."""

from __future__ import annotations

import asyncio

import hiredis
import pytest

from realtime.errors import SettingsError
from realtime.redis_cluster import Address, key_slot
from realtime.redis_cluster_broker import parse_nodes
from realtime.redis_cluster_links import ShardLink, SupervisorPasses
from realtime.redis_cluster_topics import ShardTopics
from realtime.redis_functions import library_code
from realtime.redis_link import shard_commands
from realtime.settings import BrokerSettings
from realtime.topic_subscriptions import TopicSubscriptions
from topics import DEFAULT_POLICY


def test_seed_nodes_parse() -> None:
    assert parse_nodes(" 10.0.0.1:7000, redis-a:7001,[::1]:7002 ") == [
        Address("10.0.0.1", 7000),
        Address("redis-a", 7001),
        Address("::1", 7002),
    ]
    for bad in ("", "host", "host:port", ":7000"):
        with pytest.raises(ValueError, match=r"host:port|no seed"):
            parse_nodes(bad)


def test_the_setting_is_checked() -> None:
    BrokerSettings(redis_cluster_nodes="a:1,b:2").validate()
    with pytest.raises(SettingsError, match="REDIS_CLUSTER_NODES"):
        BrokerSettings(redis_cluster_nodes="a:1,b").validate()


def commands(raw: bytes) -> list[list[bytes]]:
    reader = hiredis.Reader()
    reader.feed(raw)
    out = []
    while (command := reader.gets()) is not False:
        out.append(command)
    return out


def test_ssubscribe_is_one_command_per_slot() -> None:
    channels = [b"realtime:{a}", b"realtime:{b}", b"x{a}y", b"realtime:{c}"]
    sent = commands(shard_commands("SSUBSCRIBE", channels))
    assert sorted(name for command in sent for name in command[1:]) == sorted(channels)
    for command in sent:
        assert command[0] == b"SSUBSCRIBE"
        assert len({key_slot(name) for name in command[1:]}) == 1
    assert len(sent) == len({key_slot(name) for name in channels})


def test_the_cluster_library_spublishes() -> None:
    assert "redis.call('SPUBLISH'" in library_code("realtime", DEFAULT_POLICY, sharded=True)
    single = library_code("realtime", DEFAULT_POLICY)
    assert "redis.call('PUBLISH'" in single and "SPUBLISH" not in single


class FakeLink:
    def __init__(self) -> None:
        self.written: list[tuple[str, list[bytes]]] = []
        self.transport = None

    def ssubscribe(self, channels: list[bytes]) -> None:
        self.written.append(("SSUBSCRIBE", channels))

    def sunsubscribe(self, channels: list[bytes]) -> None:
        self.written.append(("SUNSUBSCRIBE", channels))


def test_only_an_unasked_sunsubscribe_means_a_lost_subscription() -> None:
    names = TopicSubscriptions("realtime")
    link = FakeLink()
    shard = ShardLink(Address("h", 1), link)  # type: ignore[arg-type]
    shard.subscribe(["a", "b"], names)
    shard.confirmed.update({"a", "b"})
    shard.unsubscribe(["a"], names)
    assert shard.sent == {"b"} and shard.confirmed == {"b"}
    assert shard.unsubscribe_acknowledged("a")  # the reply to ours
    assert not shard.unsubscribe_acknowledged("a")  # pushed by Redis
    assert not shard.unsubscribe_acknowledged("b")


def test_a_moved_slot_is_forgotten_alone() -> None:
    names = TopicSubscriptions("realtime")
    shard = ShardLink(Address("h", 1), FakeLink())  # type: ignore[arg-type]
    slot = key_slot(names.channel_of("a"))
    other = next(t for t in (f"x{i}" for i in range(100)) if key_slot(names.channel_of(t)) != slot)
    shard.subscribe(["a", other], names)
    shard.confirmed.update({"a", other})
    shard.unsubscribe(["a"], names)  # its reply is owed; the MOVED refused it
    shard.subscribe(["a"], names)
    assert shard.forget_slot(slot, names) == (["a"], [])
    assert shard.sent == {other} and shard.confirmed == {other}
    assert not shard.unsubscribe_acknowledged("a")  # nothing owed any more: a push means a loss


def test_a_moved_reply_moves_one_slot_and_asks_for_a_refresh() -> None:
    calls: list[object] = []
    topics = ShardTopics("realtime", on_stale=lambda: calls.append("stale"), on_moved=lambda *a: calls.append(a))
    shard = ShardLink(Address("10.0.0.1", 7000), FakeLink())  # type: ignore[arg-type]
    slot = key_slot(topics.names.channel_of("a"))
    shard.subscribe(["a"], topics.names)
    assert topics.on_refused(shard, f"MOVED {slot} :7001")  # an empty host: the answering node's
    assert calls == [(slot, Address("10.0.0.1", 7001)), "stale"]
    assert shard.sent == set()
    assert not topics.on_refused(shard, "ERR unknown command")  # anything else costs the link
    assert not topics.on_refused(shard, "MOVED nonsense")


async def test_supervisor_passes_wake_every_waiter_once() -> None:
    passes = SupervisorPasses()
    waiters = [asyncio.create_task(passes.next(5)) for _ in range(3)]
    await asyncio.sleep(0)
    passes.ended()
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    began = asyncio.get_running_loop().time()
    await passes.next(0.05)  # no pass ends: returns after the bound
    assert asyncio.get_running_loop().time() - began >= 0.04
