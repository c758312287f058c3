"""Presence (issue 18) with real server processes: two instances on the real Redis agree,
a SIGKILLed instance's clients expire with LEAVEs, a SIGTERMed one removes its own at once,
and Redis Cluster mode (a private cluster) works the same. Each test has its own Redis
channel and ``TOPICS_FILE``; in-process tests are in test_presence.py."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import ClientWebSocketResponse

from realtime.redis_cluster import key_slot
from realtime.redis_functions import presence_key, topic_channel
from tests.conftest import API_KEYS_JSON, CHAT_POLICY, OTHER_KEY, recv, server_token
from tests.integration.test_presence import ROOM, listen_with, presence
from tests.procs import REALTIME, Server
from tests.redis_cluster import LocalCluster

pytestmark = pytest.mark.slow

TTL = 3.0
"""``PRESENCE_TTL`` of the SIGKILL test (the smallest allowed): entries refreshed every second."""


@pytest.fixture
def chat_env(tmp_path: Path) -> dict[str, str]:
    """Settings shared by a test's instances: the chat policy, API keys, one signing key."""
    (tmp_path / "topics.toml").write_text(CHAT_POLICY)
    (tmp_path / "keys.d").mkdir()
    generate = [*REALTIME, "keys", "generate", "--dir", str(tmp_path / "keys.d")]
    subprocess.run(generate, check=True, capture_output=True)
    return {
        "API_KEYS": API_KEYS_JSON,
        "TOPICS_FILE": str(tmp_path / "topics.toml"),
        "SHUTDOWN_GRACE": "0",
        "REDIS_PROBE_INTERVAL": "0",
    }


async def collect(ws: ClientWebSocketResponse, kind: str, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The next ``count`` frames of type ``kind`` (others skipped), each within ``timeout`` s."""
    found = []
    deadline = time.monotonic() + timeout
    while len(found) < count:
        frame = await recv(ws, timeout=max(0.05, deadline - time.monotonic()))
        if frame["type"] == kind:
            found.append(frame)
    return found


def clients_of(frames: list[dict[str, Any]]) -> set[str]:
    return {frame["data"]["client"] for frame in frames}


async def room(ws: ClientWebSocketResponse, nonce: str = "p") -> dict[str, Any]:
    """The room's presence ``data`` as ``ws``'s instance reads it."""
    reply = await presence(ws, ROOM, nonce=nonce)
    assert reply["error"] == "", reply
    data: dict[str, Any] = reply["data"]
    return data


async def watched_room(
    http: aiohttp.ClientSession, servers: list[Server]
) -> tuple[list[ClientWebSocketResponse], list[str]]:
    """A watcher on the room on each server, each having seen its own JOIN and those of the
    watchers after it.

    Returns:
        The watchers and their client ids, in the order of ``servers``.
    """
    watchers: list[ClientWebSocketResponse] = []
    ids: list[str] = []
    for n, server in enumerate(servers):
        ws = await http.ws_connect(server.url + "/ws")
        assert (await listen_with(ws, [ROOM], info={"nick": f"w{n}"}))["error"] == ""
        (own,) = await collect(ws, "JOIN", 1)  # published after its LISTEN: the next one never sees it
        assert own["data"]["info"] == {"nick": f"w{n}"}
        for earlier in watchers:
            assert clients_of(await collect(earlier, "JOIN", 1)) == {own["data"]["client"]}
        watchers.append(ws)
        ids.append(own["data"]["client"])
    return watchers, ids


async def join_room(
    http: aiohttp.ClientSession, server: Server, watchers: list[ClientWebSocketResponse], count: int
) -> tuple[list[ClientWebSocketResponse], set[str]]:
    """``count`` anonymous clients of ``server`` in the room; every watcher saw their JOINs.

    Returns:
        The clients and their ids.
    """
    sockets = [await http.ws_connect(server.url + "/ws") for _ in range(count)]
    for n, ws in enumerate(sockets):
        assert (await listen_with(ws, [ROOM], info={"n": n}))["error"] == ""
    ids = None
    for watcher in watchers:
        seen = clients_of(await collect(watcher, "JOIN", count))
        assert ids is None or seen == ids
        ids = seen
    assert ids is not None
    return sockets, ids


async def test_two_instances_agree_on_counts_lists_and_join_leave(
    spawn: type[Server], redis_url: str, channel: str, chat_env: dict[str, str], http: aiohttp.ClientSession
) -> None:
    env = chat_env | {"REDIS_URL": redis_url, "REDIS_CHANNEL": channel}
    a, b = spawn(env=env), spawn(env=env)
    (wa, wb), watcher_ids = await watched_room(http, [a, b])
    seven, eight = (
        await server_token(http, a),
        await server_token(http, b, OTHER_KEY),
    )  # either instance's token works on both
    clients = [
        (a, seven, "a7"),  # user 7 on both instances, user 8 on a, one anonymous on b
        (a, eight, "a8"),
        (b, seven, "b7"),
        (b, None, "b-anon"),
    ]
    sockets, joins_a = [], []
    for server, tok, nick in clients:
        ws = await http.ws_connect(server.url + "/ws")
        assert (await listen_with(ws, [ROOM], token=tok, info={"nick": nick}))["error"] == ""
        sockets.append(ws)
        joins_a += await collect(wa, "JOIN", 1)  # one at a time: the JOINs' order is the clients'
    joins_b = await collect(wb, "JOIN", 4)
    assert [j["data"] for j in joins_a] == [j["data"] for j in joins_b]  # same JOINs, same order
    assert [j["data"]["info"]["nick"] for j in joins_a] == ["a7", "a8", "b7", "b-anon"]
    assert [j["data"]["user"] for j in joins_a] == ["7", "8", "7", None]
    joined = clients_of(joins_a)

    seen_a, seen_b = await room(wa), await room(wb)
    assert seen_a == seen_b  # counts and the list, whichever instance is asked
    assert (seen_a["connections"], seen_a["users"]) == (6, 2)
    assert [c["client"] for c in seen_a["clients"]] == sorted(joined | set(watcher_ids))
    for join in joins_a:  # the listed entry is the JOIN's
        assert join["data"]["topic"] == ROOM
        listed = next(c for c in seen_a["clients"] if c["client"] == join["data"]["client"])
        assert listed == {k: join["data"][k] for k in ("user", "client", "info")}

    await sockets[0].close()  # a7 goes on a: a LEAVE on both sides, user 7 still there (b7)
    await sockets[3].send_json({"type": "UNLISTEN", "nonce": "u", "data": {"topics": [ROOM]}})  # b-anon unlistens
    leaves_a, leaves_b = await collect(wa, "LEAVE", 2), await collect(wb, "LEAVE", 2)
    assert clients_of(leaves_a) == clients_of(leaves_b) == {joins_a[0]["data"]["client"], joins_a[3]["data"]["client"]}
    assert {leave["data"]["info"]["nick"] for leave in leaves_a} == {"a7", "b-anon"}
    seen_a, seen_b = await room(wa, "p2"), await room(wb, "p2")
    assert seen_a == seen_b and (seen_a["connections"], seen_a["users"]) == (4, 2)
    await sockets[2].close()  # b7 goes: user 7 is gone, 8 stays
    assert clients_of(await collect(wa, "LEAVE", 1)) == clients_of(await collect(wb, "LEAVE", 1))
    seen_a, seen_b = await room(wa, "p3"), await room(wb, "p3")
    assert seen_a == seen_b and (seen_a["connections"], seen_a["users"]) == (3, 1)
    assert {c["user"] for c in seen_a["clients"]} == {None, "8"}
    for ws in (wa, wb, *sockets):
        await ws.close()


async def test_a_killed_instance_expires_with_a_leave_for_each_client(
    spawn: type[Server], redis_url: str, channel: str, chat_env: dict[str, str], http: aiohttp.ClientSession
) -> None:
    env = chat_env | {"REDIS_URL": redis_url, "REDIS_CHANNEL": channel, "PRESENCE_TTL": str(int(TTL))}
    doomed, survivor = spawn(env=env), spawn(env=env)
    (watcher,), _ = await watched_room(http, [survivor])
    _, ids = await join_room(http, doomed, [watcher], 3)
    await asyncio.sleep(TTL + 1)  # older than the TTL: the doomed instance's refreshes kept them
    assert (await room(watcher))["connections"] == 4
    await asyncio.to_thread(_kill, doomed)
    killed = time.monotonic()

    leaves = await collect(watcher, "LEAVE", 3, timeout=TTL + TTL / 3 + 2)  # the survivor's refresh prunes them
    elapsed = time.monotonic() - killed
    assert clients_of(leaves) == ids, leaves
    assert 1.0 < elapsed <= TTL + TTL / 3 + 1.0, elapsed  # not at once (nobody removed them): by expiry
    data = await room(watcher, "p2")
    assert data["connections"] == 1 and ids.isdisjoint(c["client"] for c in data["clients"])
    await watcher.close()


async def test_a_killed_instance_vanishes_from_reads_within_the_ttl(
    spawn: type[Server], redis_url: str, channel: str, chat_env: dict[str, str], http: aiohttp.ClientSession
) -> None:
    env = chat_env | {"REDIS_URL": redis_url, "REDIS_CHANNEL": channel, "PRESENCE_TTL": str(int(TTL))}
    doomed, survivor = spawn(env=env), spawn(env=env)
    (watcher,), _ = await watched_room(http, [survivor])
    _, ids = await join_room(http, doomed, [watcher], 3)
    await asyncio.to_thread(_kill, doomed)
    killed = time.monotonic()
    reader = await http.ws_connect(survivor.url + "/ws")
    n = 0
    while (data := await room(reader, f"p{n}"))["connections"] != 1:  # a read prunes what expired
        assert data["connections"] == 4
        assert time.monotonic() - killed <= TTL + 0.5, "still present after the TTL"
        n += 1
        await asyncio.sleep(0.1)
    assert time.monotonic() - killed > 1.0  # expired, not removed
    assert clients_of(await collect(watcher, "LEAVE", 3, timeout=1.0)) == ids  # the read's prune sent them
    await reader.close()
    await watcher.close()


async def test_a_sigtermed_instance_removes_its_entries_at_once(
    spawn: type[Server], redis_url: str, channel: str, chat_env: dict[str, str], http: aiohttp.ClientSession
) -> None:
    env = chat_env | {"REDIS_URL": redis_url, "REDIS_CHANNEL": channel, "PRESENCE_TTL": "60"}
    stopping, staying = spawn(env=env), spawn(env=env)
    (watcher,), watcher_ids = await watched_room(http, [staying])
    _, ids = await join_room(http, stopping, [watcher], 3)
    stopping.proc.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    leaves = await collect(watcher, "LEAVE", 3, timeout=10)
    assert time.monotonic() - stopped < 10  # the TTL is 60 s: removed, not expired
    assert clients_of(leaves) == ids
    data = await room(watcher)
    assert data["connections"] == 1 and [c["client"] for c in data["clients"]] == watcher_ids
    assert await asyncio.to_thread(stopping.stop) == 0
    await watcher.close()


async def test_presence_and_join_leave_in_cluster_mode(
    spawn: type[Server], redis_cluster: LocalCluster, chat_env: dict[str, str], http: aiohttp.ClientSession
) -> None:
    env = chat_env | {"REDIS_CLUSTER_NODES": ",".join(redis_cluster.seeds[:2]), "LISTEN_RATE": "0"}
    a, b = spawn(env=env), spawn(env=env)
    await _ready(http, a)
    await _ready(http, b)
    (wa, wb), watcher_ids = await watched_room(http, [a, b])
    on_a, a_ids = await join_room(http, a, [wa, wb], 2)
    on_b, b_ids = await join_room(http, b, [wa, wb], 2)
    seen_a, seen_b = await room(wa), await room(wb)
    assert seen_a == seen_b and seen_a["connections"] == 6
    assert {c["client"] for c in seen_a["clients"]} == set(watcher_ids) | a_ids | b_ids
    # the three keys sit in the topic's slot, on the master that owns the topic's channel
    key = presence_key("realtime", ROOM)
    assert key_slot(key) == key_slot(key + ":info") == key_slot(topic_channel("realtime", ROOM))
    owner = redis_cluster.slot_map().master_for_key(key).port
    assert int(redis_cluster.call(owner, "ZCARD", key)) == 6
    assert int(redis_cluster.call(owner, "HLEN", key + ":info")) == 6

    await on_a[0].close()
    await on_b[0].close()
    gone = clients_of(await collect(wa, "LEAVE", 2))
    assert gone == clients_of(await collect(wb, "LEAVE", 2))
    assert len(gone & a_ids) == len(gone & b_ids) == 1
    await asyncio.to_thread(b.proc.send_signal, signal.SIGTERM)  # b's watcher and its last client leave
    assert clients_of(await collect(wa, "LEAVE", 2, timeout=10)) == (b_ids - gone) | {watcher_ids[1]}
    data = await room(wa, "p2")
    assert data["connections"] == 2 and int(redis_cluster.call(owner, "ZCARD", key)) == 2
    for ws in (wa, wb, *on_a, *on_b):
        await ws.close()


async def _ready(http: aiohttp.ClientSession, server: Server, timeout: float = 20) -> None:
    """Wait until ``server`` answers ``/ready`` 200 (its cluster links are up)."""
    deadline = time.monotonic() + timeout
    while True:
        async with http.get(server.url + "/ready") as resp:
            if resp.status == 200:
                return
        assert time.monotonic() < deadline, "not ready"
        await asyncio.sleep(0.1)


def _kill(server: Server) -> None:
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(timeout=10)
