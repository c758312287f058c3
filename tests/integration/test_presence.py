"""Presence (issue 18): PRESENCE in-band, client_info, JOIN/LEAVE, on the memory broker and
across instances on the real Redis (in-process apps on loopback; each test its own channel).
Killed and stopped server processes are in test_presence_process.py."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiohttp import ClientWebSocketResponse

from http_api.appkeys import NODE
from realtime.settings import parse_api_keys
from tests.conftest import OTHER_KEY, USER_KEY, AppFactory, assert_silent, recv, send, wait_for, ws_token
from tests.integration.test_metrics import scrape

ROOM = "chat:room:message.lobby"
SELF7 = "remote-control:command.7"


async def listen_with(
    ws: ClientWebSocketResponse, topics: list[str], *, token: str | None = None, info: Any = None, nonce: str = "l"
) -> dict[str, Any]:
    data: dict[str, Any] = {"topics": topics}
    if token is not None:
        data["auth_token"] = token
    if info is not None:
        data["client_info"] = info
    await send(ws, type="LISTEN", nonce=nonce, data=data)
    return await recv_type(ws, "RESPONSE")


async def recv_type(ws: ClientWebSocketResponse, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    """The next frame of type ``kind`` (JOIN/LEAVE of others may come in between)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        frame = await recv(ws, timeout=max(0.05, deadline - asyncio.get_running_loop().time()))
        if frame["type"] == kind:
            return frame


async def presence(
    ws: ClientWebSocketResponse, topic: str, token: str | None = None, nonce: str = "p"
) -> dict[str, Any]:
    data: dict[str, Any] = {"topic": topic}
    if token is not None:
        data["auth_token"] = token
    await send(ws, type="PRESENCE", nonce=nonce, data=data)
    reply = await recv_type(ws, "RESPONSE")
    assert reply["nonce"] == nonce
    return reply


async def test_presence_lists_the_users_devices_with_their_info(make_client: AppFactory) -> None:
    client = await make_client()  # memory broker, default policy: presence on remote-control:command
    token = await ws_token(client)
    async with client.ws_connect("/ws") as tv, client.ws_connect("/ws") as phone, client.ws_connect("/ws") as web:
        assert (await listen_with(tv, [SELF7], token=token, info={"device": "tv"}))["error"] == ""
        assert (await listen_with(phone, [SELF7], token=token, info={"device": "phone"}))["error"] == ""
        reply = await presence(web, SELF7, token)
        assert reply["error"] == ""
        data = reply["data"]
        assert (data["connections"], data["users"]) == (2, 1)
        assert sorted(c["info"]["device"] for c in data["clients"]) == ["phone", "tv"]
        assert {c["user"] for c in data["clients"]} == {"7"}
        assert len({c["client"] for c in data["clients"]}) == 2
        text = orjson.dumps(data).decode()
        assert token not in text and "127.0.0.1" not in text  # never a token, never an address
        await phone.close()
        await wait_for(lambda: client.app[NODE].presence.local(SELF7) == 1)
        await asyncio.sleep(0.05)
        data = (await presence(web, SELF7, token, nonce="p2"))["data"]
        assert (data["connections"], data["users"]) == (1, 1)
        assert data["clients"][0]["info"] == {"device": "tv"}


async def test_presence_of_another_users_self_topic_is_refused(make_client: AppFactory) -> None:
    client = await make_client()
    mine, theirs = await ws_token(client, USER_KEY), await ws_token(client, OTHER_KEY)
    async with client.ws_connect("/ws") as ws, client.ws_connect("/ws") as spy:
        assert (await listen_with(ws, [SELF7], token=mine, info={"device": "tv"}))["error"] == ""
        reply = await presence(spy, SELF7, theirs)
        assert reply["error"] == "ERR_BADAUTH" and "not yours" in reply["error_description"]
        assert "data" not in reply
        reply = await presence(spy, SELF7, nonce="p2")
        assert reply["error"] == "ERR_BADAUTH"
        reply = await presence(spy, "channel:update.x", theirs, nonce="p3")
        assert reply["error"] == "ERR_BADTOPIC" and "keeps no presence" in reply["error_description"]
        for bad in ({"topic": 5}, {"topic": "nope:x.y"}, "x"):
            await send(spy, type="PRESENCE", nonce="b", data=bad)
            assert (await recv(spy))["error"] in ("ERR_BADTOPIC", "ERR_BADMESSAGE")


async def test_a_presence_scoped_token_reads_any_topic(make_client: AppFactory) -> None:
    keys = [
        {"userId": 7, "apiKey": USER_KEY, "scopes": ["user:read:remote-control"]},
        {"userId": "svc", "apiKey": OTHER_KEY, "scopes": ["realtime:presence"]},
    ]
    client = await make_client(api_keys=parse_api_keys(orjson.dumps(keys).decode()))
    owner = await ws_token(client, USER_KEY)
    reader = await ws_token(client, OTHER_KEY, scope="realtime:presence")
    async with client.ws_connect("/ws") as ws, client.ws_connect("/ws") as backend:
        assert (await listen_with(ws, [SELF7], token=owner))["error"] == ""
        reply = await presence(backend, SELF7, reader)
        assert reply["data"]["connections"] == 1
        assert reply["data"]["clients"][0]["info"] == {}
        assert reply["data"]["clients"][0]["user"] == "7"


@pytest.mark.parametrize(
    ("info", "why"),
    [
        ({"name": "x" * 600}, "longer than 512 bytes"),
        ({"a": {"b": {"c": {"d": 1}}}}, "nested deeper"),
        ([1, 2], "must be a JSON object"),
        ("tv", "must be a JSON object"),
    ],
)
async def test_a_huge_or_deep_client_info_is_refused(make_client: AppFactory, info: Any, why: str) -> None:
    client = await make_client()
    token = await ws_token(client)
    async with client.ws_connect("/ws") as ws:
        reply = await listen_with(ws, [SELF7], token=token, info=info)
        assert reply["error"] == "ERR_BADMESSAGE" and why in reply["error_description"]
        assert client.app[NODE].presence.local(SELF7) == 0


async def test_join_and_leave_in_process(make_client: AppFactory, chat_policy: str) -> None:
    client = await make_client(topics_file=chat_policy)
    async with client.ws_connect("/ws") as a, client.ws_connect("/ws") as b:
        assert (await listen_with(a, [ROOM], info={"nick": "ann"}))["error"] == ""
        joined = await recv_type(a, "JOIN")  # its own JOIN: it listens by then
        assert joined["data"]["topic"] == ROOM and joined["data"]["info"] == {"nick": "ann"}
        assert joined["data"]["user"] is None
        assert (await listen_with(b, [ROOM], info={"nick": "bob"}))["error"] == ""
        joined = await recv_type(a, "JOIN")
        assert joined["data"]["info"] == {"nick": "bob"}
        bob = joined["data"]["client"]
        await send(b, type="UNLISTEN", nonce="u", data={"topics": [ROOM]})
        left = await recv_type(a, "LEAVE")
        assert left["data"]["client"] == bob and left["data"]["info"] == {"nick": "bob"}
        data = (await presence(a, ROOM))["data"]
        assert (data["connections"], data["users"]) == (1, 0)  # anonymous: no user counted
        metrics = await scrape(client)
        assert metrics[("realtime_presence_entries", ())] == 1
        assert metrics[("realtime_presence_events_total", ())] == 4  # a: JOIN a, JOIN b, LEAVE b; b: JOIN b
        assert metrics[("realtime_presence_writes_total", ())] >= 2
        assert metrics[("realtime_presence_write_failures_total", ())] == 0


async def test_presence_agrees_across_instances(
    make_client: AppFactory, redis_url: str, channel: str, chat_policy: str
) -> None:
    settings = {"redis_url": redis_url, "redis_channel": channel, "redis_probe_interval": 0, "topics_file": chat_policy}
    a, b = await make_client(**settings), await make_client(**settings)
    token_a, token_b = await ws_token(a), await ws_token(b)
    async with a.ws_connect("/ws") as on_a, b.ws_connect("/ws") as on_b, b.ws_connect("/ws") as watcher:
        assert (await listen_with(watcher, [ROOM], info={"nick": "w"}))["error"] == ""
        await recv_type(watcher, "JOIN")
        assert (await listen_with(on_a, [ROOM, SELF7], token=token_a, info={"nick": "a"}))["error"] == ""
        assert (await recv_type(watcher, "JOIN"))["data"]["info"] == {"nick": "a"}
        assert (await listen_with(on_b, [ROOM, SELF7], token=token_b, info={"nick": "b"}))["error"] == ""
        assert (await recv_type(watcher, "JOIN"))["data"]["info"] == {"nick": "b"}
        for ws, token in ((on_a, token_a), (on_b, token_b)):
            room = (await presence(ws, ROOM, nonce="r"))["data"]
            assert (room["connections"], room["users"]) == (3, 1)
            assert sorted(c["info"]["nick"] for c in room["clients"]) == ["a", "b", "w"]
            mine = (await presence(ws, SELF7, token, nonce="s"))["data"]
            assert (mine["connections"], mine["users"]) == (2, 1)
        await on_a.close()  # the instance removes it at once: a LEAVE on b's side
        left = await recv_type(watcher, "LEAVE")
        assert left["data"]["info"] == {"nick": "a"}
        room = (await presence(on_b, ROOM, nonce="r2"))["data"]
        assert room["connections"] == 2
        await assert_silent(watcher, 0.2)


async def test_a_stopped_instance_removes_its_entries_at_once(
    make_client: AppFactory, redis_url: str, channel: str, chat_policy: str
) -> None:
    settings = {"redis_url": redis_url, "redis_channel": channel, "redis_probe_interval": 0, "topics_file": chat_policy}
    a, b = await make_client(**settings), await make_client(**settings)
    async with b.ws_connect("/ws") as watcher:
        assert (await listen_with(watcher, [ROOM]))["error"] == ""
        await recv_type(watcher, "JOIN")
        sockets = [await a.ws_connect("/ws") for _ in range(3)]
        for ws in sockets:
            assert (await listen_with(ws, [ROOM]))["error"] == ""
        for _ in sockets:
            await recv_type(watcher, "JOIN")
        assert (await presence(watcher, ROOM))["data"]["connections"] == 4
        await a.close()  # the app's shutdown: Node.close removes a's entries
        for _ in sockets:
            await recv_type(watcher, "LEAVE")
        assert (await presence(watcher, ROOM, nonce="p2"))["data"]["connections"] == 1


async def test_presence_counts_stay_exact_beyond_the_list_cap(
    make_client: AppFactory, redis_url: str, channel: str
) -> None:
    client = await make_client(
        redis_url=redis_url, redis_channel=channel, redis_probe_interval=0, presence_max_clients=3
    )
    token = await ws_token(client)
    sockets = [await client.ws_connect("/ws") for _ in range(5)]
    for ws in sockets:
        assert (await listen_with(ws, [SELF7], token=token))["error"] == ""
    await wait_for(lambda: client.app[NODE].presence.local(SELF7) == 5)
    await asyncio.sleep(0.1)
    data = (await presence(sockets[0], SELF7, token))["data"]
    assert data == {"connections": 5, "users": 1}  # no "clients": more than the cap
    for ws in sockets:
        await ws.close()
