"""Unit tests of presence (realtime/presence.py): client_info checks, the in-process store, and
the engine's batching, refresh, retry and close, on the in-process store (no I/O)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from realtime.errors import BrokerUnavailable
from realtime.presence import (
    BATCH_WINDOW,
    MAX_CLIENT_INFO_BYTES,
    BadClientInfo,
    MemoryPresence,
    Presence,
    PresenceSnapshot,
    TopicChanges,
    check_client_info,
    encode_entry,
)
from topics import TopicRule

ROOM = TopicRule("chat:room:message", None, "any", presence=True, join_leave=True)
QUIET = TopicRule("remote-control:command", None, "self", presence=True)


def test_client_info_accepts_a_small_object() -> None:
    info = {"device": "tv", "tags": ["a", {"b": 1}]}
    assert check_client_info(info) is info
    assert check_client_info({}) == {}


@pytest.mark.parametrize(
    "info",
    [
        [1],
        "x",
        None,
        5,
        {"a": {"b": {"c": {}}}},
        {"a": [[[1]]]},
        {"x": "y" * MAX_CLIENT_INFO_BYTES},
    ],
)
def test_client_info_refuses_what_is_not_a_small_shallow_object(info: Any) -> None:
    with pytest.raises(BadClientInfo):
        check_client_info(info)


def test_an_entry_never_holds_more_than_user_client_and_info() -> None:
    assert orjson.loads(encode_entry("7", "i.c-1", None)) == {"user": "7", "client": "i.c-1", "info": {}}
    assert orjson.loads(encode_entry(None, "i.c-2", {"d": 1})) == {"user": None, "client": "i.c-2", "info": {"d": 1}}


def test_a_snapshot_omits_clients_beyond_the_cap() -> None:
    assert PresenceSnapshot(5, 2, None).as_data() == {"connections": 5, "users": 2}
    assert PresenceSnapshot(0, 0, []).as_data() == {"connections": 0, "users": 0, "clients": []}


def changes(
    topic: str, upserts: dict[str, str | None], removes: list[str] = (), join_leave: bool = True
) -> TopicChanges:  # type: ignore[assignment]
    return TopicChanges(
        topic, join_leave, {c: (u, encode_entry(u, c, None)) for c, u in upserts.items()}, list(removes)
    )


async def test_the_memory_store_counts_users_and_sends_join_and_leave_once() -> None:
    events: list[tuple[str, str, str]] = []
    store = MemoryPresence(lambda topic, kind, entry: events.append((topic, kind, entry["client"])))
    await store.apply([changes("t", {"a": "7", "b": "7", "c": None})], ttl=60)
    await store.apply([changes("t", {"a": "7"})], ttl=60)  # a refresh: no second JOIN
    snapshot = await store.read("t", ROOM, limit=10)
    assert (snapshot.connections, snapshot.users) == (3, 1)
    assert [c["client"] for c in snapshot.clients or []] == ["a", "b", "c"]
    await store.apply([changes("t", {}, ["a", "a", "zz"])], ttl=60)  # twice, and one never there
    assert events == [("t", "JOIN", "a"), ("t", "JOIN", "b"), ("t", "JOIN", "c"), ("t", "LEAVE", "a")]
    snapshot = await store.read("t", ROOM, limit=1)
    assert (snapshot.connections, snapshot.users, snapshot.clients) == (2, 1, None)
    await store.apply([changes("t", {}, ["b", "c"])], ttl=60)
    assert (await store.read("t", ROOM, limit=10)) == PresenceSnapshot(0, 0, [])


async def test_the_memory_store_prunes_expired_entries_with_a_leave() -> None:
    events: list[str] = []
    store = MemoryPresence(lambda topic, kind, entry: events.append(kind))
    await store.apply([changes("t", {"a": "7"})], ttl=0.05)
    await asyncio.sleep(0.08)
    assert (await store.read("t", ROOM, limit=10)).connections == 0
    assert events == ["JOIN", "LEAVE"]


async def test_no_join_or_leave_without_join_leave() -> None:
    events: list[str] = []
    store = MemoryPresence(lambda topic, kind, entry: events.append(kind))
    await store.apply([changes("t", {"a": "7"}, join_leave=False)], ttl=60)
    await store.apply([changes("t", {}, ["a"], join_leave=False)], ttl=60)
    assert events == []


class CountingStore(MemoryPresence):
    """The in-process store, counting its calls; ``fail`` makes the next calls refuse."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[TopicChanges]] = []
        self.fail = 0

    async def apply(self, changes: list[TopicChanges], ttl: float) -> None:
        self.calls.append(changes)
        if self.fail:
            self.fail -= 1
            raise BrokerUnavailable("down")
        await super().apply(changes, ttl)


async def settle() -> None:
    await asyncio.sleep(BATCH_WINDOW * 3)


async def test_joins_of_one_pass_are_one_store_call() -> None:
    store = CountingStore()
    presence = Presence(store, ttl=60, max_clients=50)
    for n in range(300):
        presence.join(f"t.{n % 3}", ROOM, presence.client_id(f"c-{n}"), str(n % 7), None)
    await settle()
    assert len(store.calls) == 1 and len(store.calls[0]) == 3
    snapshot = await presence.read("t.0", ROOM)
    assert (snapshot.connections, snapshot.users, snapshot.clients) == (100, 7, None)  # over max_clients
    await presence.close()


async def test_a_join_and_leave_in_one_batch_reach_the_store_as_a_harmless_remove() -> None:
    events: list[str] = []
    store = CountingStore()
    store.sink = lambda topic, kind, entry: events.append(kind)
    presence = Presence(store, ttl=60)
    client = presence.client_id("c-1")
    presence.join("t", ROOM, client, "7", None)
    presence.leave("t", client)
    await settle()
    assert events == [] and (await presence.read("t", ROOM)).connections == 0
    assert "t" not in presence
    await presence.close()


async def test_a_failed_write_is_retried_and_later_changes_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("realtime.presence.RETRY_DELAY", 0.01)
    store = CountingStore()
    store.fail = 1
    presence = Presence(store, ttl=60)
    a, b = presence.client_id("a"), presence.client_id("b")
    presence.join("t", QUIET, a, "7", None)
    presence.join("t", QUIET, b, "8", None)
    await settle()
    presence.leave("t", b)  # while the failed batch waits: b must not come back
    for _ in range(50):
        await asyncio.sleep(0.01)
        if len(store.calls) >= 2 and not presence._pending:
            break
    snapshot = await presence.read("t", QUIET)
    assert [c["client"] for c in snapshot.clients or []] == [a]
    await presence.close()


async def test_refresh_keeps_entries_alive_and_close_removes_them(monkeypatch: pytest.MonkeyPatch) -> None:
    store = CountingStore()
    presence = Presence(store, ttl=0.9)  # refreshed every 0.3 s
    presence.join("t", QUIET, presence.client_id("a"), "7", {"d": 1})
    await asyncio.sleep(1.2)  # longer than the ttl: alive only through refreshes
    assert (await presence.read("t", QUIET)).connections == 1
    assert len(store.calls) >= 3
    await presence.close()
    assert (await presence.read("t", QUIET)).connections == 0
    presence.join("t", QUIET, presence.client_id("b"), "7", None)  # closed: ignored
    await settle()
    assert (await presence.read("t", QUIET)).connections == 0


async def test_concurrent_reads_of_one_topic_share_one_store_read() -> None:
    reads = 0

    class Slow(MemoryPresence):
        async def read(self, topic: str, rule: TopicRule, limit: int) -> PresenceSnapshot:
            nonlocal reads
            reads += 1
            await asyncio.sleep(0.01)
            return await super().read(topic, rule, limit)

    presence = Presence(Slow(), ttl=60)
    results = await asyncio.gather(*(presence.read("t", QUIET) for _ in range(20)))
    assert reads == 1 and all(r == results[0] for r in results)
    await presence.read("t", QUIET, counts_only=True)
    assert reads == 2


async def test_a_read_waits_for_this_instances_pending_changes_of_its_topic() -> None:
    store = CountingStore()
    presence = Presence(store, ttl=60)
    presence.join("t", QUIET, presence.client_id("a"), "7", None)
    assert (await presence.read("t", QUIET)).connections == 1  # no settle(): the read waited for the batch
    presence.leave("t", presence.client_id("a"))
    assert (await presence.read("t", QUIET)).connections == 0
    assert (await presence.read("other", QUIET)).connections == 0  # nothing pending there: no wait
    await presence.close()
