"""Presence under attack (review of issue 18): ghosts, stale entries, wrong counts and stuck
replies found by an adversarial review, each against the real app and the real Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from http_api.appkeys import NODE
from realtime.redis_functions import function_names, presence_key
from tests.conftest import OTHER_KEY, USER_KEY, AppFactory, send, wait_for, ws_token
from tests.integration.test_presence import ROOM, listen_with, presence, recv_type


def broker_settings(kind: str, redis_url: str, channel: str, policy: str) -> dict[str, Any]:
    if kind == "memory":
        return {"topics_file": policy}
    return {"redis_url": redis_url, "redis_channel": channel, "redis_probe_interval": 0, "topics_file": policy}


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_unlisten_then_listen_again_in_one_pass_replaces_the_entry(
    make_client: AppFactory, redis_url: str, channel: str, chat_policy: str, kind: str
) -> None:
    """UNLISTEN and a new LISTEN (another token, another client_info) read in one pass are
    one upsert of the same client: the store must show the new user and info, count the
    new user only, and count nobody once the connection is gone."""
    client = await make_client(**broker_settings(kind, redis_url, channel, chat_policy))
    seven, eight = await ws_token(client, USER_KEY), await ws_token(client, OTHER_KEY)
    node = client.app[NODE]
    async with client.ws_connect("/ws") as ws, client.ws_connect("/ws") as watcher:
        assert (await listen_with(ws, [ROOM], token=seven, info={"nick": "seven"}))["error"] == ""
        await wait_for(lambda: node.presence.writes >= 1 and not node.presence._pending)
        # both frames reach the server in one read: one event-loop pass, one batch
        await send(ws, type="UNLISTEN", nonce="u", data={"topics": [ROOM]})
        await send(
            ws,
            type="LISTEN",
            nonce="l2",
            data={"topics": [ROOM], "auth_token": eight, "client_info": {"nick": "eight"}},
        )
        assert (await recv_type(ws, "RESPONSE"))["error"] == ""
        assert (await recv_type(ws, "RESPONSE"))["error"] == ""
        await wait_for(
            lambda: not node.presence._pending and not (node.presence._writer and not node.presence._writer.done())
        )
        data = (await presence(watcher, ROOM))["data"]
        assert (data["connections"], data["users"]) == (1, 1)
        assert [(c["user"], c["info"]) for c in data["clients"]] == [("8", {"nick": "eight"})]
    await wait_for(lambda: node.presence.local(ROOM) == 0)
    async with client.ws_connect("/ws") as watcher:
        await asyncio.sleep(0.1)
        data = (await presence(watcher, ROOM, nonce="p2"))["data"]
        assert (data["connections"], data["users"]) == (0, 0)
    assert node.presence.write_failures == 0


async def test_a_presence_read_that_fails_otherwise_still_answers(
    make_client: AppFactory, redis_url: str, channel: str, chat_policy: str, redis_client: aioredis.Redis
) -> None:
    """An entry that is not JSON (written by something else on the Redis side) makes the
    read fail in decoding: the client gets ``ERR_SERVER``, not a RESPONSE that never comes."""
    client = await make_client(**broker_settings("redis", redis_url, channel, chat_policy))
    key = presence_key(channel, ROOM)
    await redis_client.zadd(key, {"x.1": 2**50})
    await redis_client.hset(f"{key}:info", "x.1", "not json")
    async with client.ws_connect("/ws") as ws:
        reply = await presence(ws, ROOM)
        assert reply["error"] == "ERR_SERVER"
        # and the connection still works
        assert (await listen_with(ws, ["channel:update.1"]))["error"] == ""


@pytest.mark.parametrize("ttl", ["9007199254740991", "86401"])
async def test_the_presence_function_refuses_a_ttl_it_cannot_expire(
    make_client: AppFactory, redis_url: str, channel: str, chat_policy: str, redis_client: aioredis.Redis, ttl: str
) -> None:
    """A caller on the Redis side with a ttl EXPIRE refuses (or beyond PRESENCE_TTL's
    bound) must get an error before anything is written: the script is not rolled back,
    so an entry written first would stay for ever (no key expiry, a score in the future)."""
    await make_client(**broker_settings("redis", redis_url, channel, chat_policy))
    key = presence_key(channel, ROOM)
    entry = '{"user":null,"client":"x.1","info":{}}'
    with pytest.raises(ResponseError):
        await redis_client.fcall(function_names(channel).presence, 1, key, ROOM, ttl, "1", "x.1", "", entry)
    assert await redis_client.exists(key, f"{key}:info") == 0


async def test_a_listen_of_a_held_topic_with_another_token_updates_the_entry(
    make_client: AppFactory, chat_policy: str
) -> None:
    """A LISTEN of a topic the connection already holds moves it to the new token (the
    session's grant is the new one); presence keeps showing the old user and info."""
    client = await make_client(topics_file=chat_policy)
    seven, eight = await ws_token(client, USER_KEY), await ws_token(client, OTHER_KEY)
    async with client.ws_connect("/ws") as ws, client.ws_connect("/ws") as watcher:
        assert (await listen_with(ws, [ROOM], token=seven, info={"nick": "seven"}))["error"] == ""
        assert (await listen_with(ws, [ROOM], token=eight, info={"nick": "eight"}, nonce="l2"))["error"] == ""
        await asyncio.sleep(0.05)
        data = (await presence(watcher, ROOM))["data"]
        assert [(c["user"], c["info"]) for c in data["clients"]] == [("8", {"nick": "eight"})]


async def test_a_revoked_user_does_not_stay_present_on_a_public_topic(
    make_client: AppFactory, chat_policy: str
) -> None:
    """A public presence topic LISTENed with a token shows the token's user; the topic is
    held without the grant, so revoking (or the expiry of) that token leaves the user
    shown as present for as long as the connection stays."""
    client = await make_client(topics_file=chat_policy)
    seven = await ws_token(client, USER_KEY)
    node = client.app[NODE]
    async with client.ws_connect("/ws") as ws, client.ws_connect("/ws") as watcher:
        assert (await listen_with(ws, [ROOM], token=seven))["error"] == ""
        await node.revoke(sub="7")
        await asyncio.sleep(0.05)
        data = (await presence(watcher, ROOM))["data"]
        assert data["users"] == 0 or [c["user"] for c in data.get("clients", [])] != ["7"]


ODD_PRESENCE_DATA: list[Any] = [
    None,
    [],
    {"topic": None},
    {"topic": ["x"]},
    {"topic": {"a": 1}},
    {"topic": ROOM, "auth_token": 5},
    {"topic": ROOM, "auth_token": {"a": 1}},
    {"topic": ROOM, "auth_token": "x" * 10000},
    {"topic": ROOM + "\u0000"},
    {"topic": "chat:room:message." + "x" * 5000},
    {"topic": "chat:room:message"},
    {"topic": ROOM, "extra": [1, 2, 3]},
]
ODD_CLIENT_INFO: list[Any] = [
    {"a": 1e308},
    {"a": -0.0},
    {"\u0000": "\ud7ff"},
    {"a": [[[]]]},
    {"a": [{}]},
    {"": None},
    {"a": "x" * 490},
    {},
]


async def test_odd_presence_requests_and_client_info_get_a_client_error(
    make_client: AppFactory, redis_url: str, channel: str, chat_policy: str
) -> None:
    """Whatever shape a PRESENCE or a LISTEN's client_info has, the reply is a RESPONSE
    with no ERR_SERVER, and the connection keeps working."""
    client = await make_client(**broker_settings("redis", redis_url, channel, chat_policy), listen_rate=0)
    seven = await ws_token(client, USER_KEY)
    node = client.app[NODE]
    async with client.ws_connect("/ws") as ws:
        for i, data in enumerate(ODD_PRESENCE_DATA):
            await send(ws, type="PRESENCE", nonce=f"p{i}", data=data)
            reply = await recv_type(ws, "RESPONSE")
            assert reply["nonce"] == f"p{i}" and reply["error"] != "ERR_SERVER", (data, reply)
        for i, info in enumerate(ODD_CLIENT_INFO):
            reply = await listen_with(ws, [f"{ROOM}{i}"], token=seven, info=info, nonce=f"l{i}")
            assert reply["error"] in ("", "ERR_BADMESSAGE"), (info, reply)
            if reply["error"] == "":
                data = (await presence(ws, f"{ROOM}{i}", nonce=f"q{i}"))["data"]
                assert data["connections"] == 1 and data["clients"][0]["info"] == info, (info, data)
    await wait_for(lambda: node.presence.entries == 0 and not node.presence._pending)
    await asyncio.sleep(0.1)
    async with client.ws_connect("/ws") as ws:
        for i in range(len(ODD_CLIENT_INFO)):  # the user is counted out again, whatever the info
            data = (await presence(ws, f"{ROOM}{i}", nonce=f"r{i}"))["data"]
            assert (data["connections"], data["users"]) == (0, 0), (ODD_CLIENT_INFO[i], data)


async def test_a_dead_instance_with_many_entries_leaves_no_ghost_after_ttl(
    make_client: AppFactory, redis_url: str, channel: str, chat_policy: str, redis_client: aioredis.Redis
) -> None:
    """An instance with 2,500 listeners on one topic dies (its entries were written with a
    ttl of 1 s, through the function, as it writes them): after the ttl, a read shows the
    survivor only, however many entries expired (a prune takes 1,000 per call)."""
    client = await make_client(**broker_settings("redis", redis_url, channel, chat_policy))
    key, name = presence_key(channel, ROOM), function_names(channel).presence
    for start in range(0, 2500, 500):
        args: list[str] = []
        for i in range(start, start + 500):
            args += [f"dead.{i}", f"u{i}", f'{{"user":"u{i}","client":"dead.{i}","info":{{}}}}']
        await redis_client.fcall(name, 1, key, ROOM, "1", "500", *args)
    node = client.app[NODE]
    async with client.ws_connect("/ws") as ws:
        assert (await listen_with(ws, [ROOM], token=await ws_token(client)))["error"] == ""
        await wait_for(lambda: node.presence.writes >= 1)  # a survivor: the keys live on
        await asyncio.sleep(1.2)
        data = (await presence(ws, ROOM))["data"]
        assert (data["connections"], data["users"]) == (1, 1)
