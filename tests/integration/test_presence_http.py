"""``GET /presence/{topic}``, ``GET /presence/{topic}/stats`` and
``GET /api/v1/remote-control/devices`` (issue 18): in-process apps on loopback, on the memory
broker and across two instances on the real Redis (each test its own channel)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from http_api.appkeys import NODE
from realtime.errors import BrokerUnavailable
from realtime.presence import TopicChanges, encode_entry
from realtime.settings import parse_api_keys
from tests.conftest import API_KEYS_JSON, OTHER_KEY, PUBLISHER_KEY, USER_KEY, AppFactory, auth, wait_for, ws_token
from tests.integration.test_presence import ROOM, SELF7, listen_with, presence, recv_type

PRESENCE_KEY = "presence-key-0123456789abcdef"
KEYS = parse_api_keys(
    orjson.dumps(
        [*orjson.loads(API_KEYS_JSON), {"userId": "ops", "apiKey": PRESENCE_KEY, "scopes": ["realtime:presence"]}]
    ).decode()
)
DEVICES = "/api/v1/remote-control/devices"


async def get(client: TestClient[Any, Any], path: str, key: str = PRESENCE_KEY) -> Any:
    resp = await client.get(path, headers=auth(key))
    assert resp.status == 200, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    return await resp.json()


async def settled(client: TestClient[Any, Any], topic: str, local: int, total: int | None = None) -> None:
    """Wait until ``client``'s instance has ``local`` entries on ``topic`` and the store
    holds ``total`` (default ``local``)."""
    node = client.app[NODE]
    rule = node.policy.check(topic)[1]
    await wait_for(lambda: node.presence.local(topic) == local)
    deadline = time.monotonic() + 5
    while (await node.presence.read(topic, rule, counts_only=True)).connections != (local if total is None else total):
        assert time.monotonic() < deadline, "presence not written within 5 s"
        await asyncio.sleep(0.01)


async def test_presence_and_stats_of_a_users_devices(make_client: AppFactory) -> None:
    client = await make_client(api_keys=KEYS)  # memory broker, default policy
    token = await ws_token(client)
    async with client.ws_connect("/ws") as tv, client.ws_connect("/ws") as phone:
        assert (await listen_with(tv, [SELF7], token=token, info={"device": "tv"}))["error"] == ""
        assert (await listen_with(phone, [SELF7], token=token, info={"device": "phone"}))["error"] == ""
        await settled(client, SELF7, 2)
        resp = await client.get(f"/presence/{SELF7}", headers=auth(USER_KEY))
        assert resp.status == 200 and resp.content_type == "application/json"
        assert resp.headers["Cache-Control"] == "no-store"
        body = await resp.json()
        assert set(body) == {"topic", "connections", "users", "clients"}
        assert (body["topic"], body["connections"], body["users"]) == (SELF7, 2, 1)
        assert sorted(c["info"]["device"] for c in body["clients"]) == ["phone", "tv"]
        assert all(set(c) == {"user", "client", "info"} and c["user"] == "7" for c in body["clients"])
        assert [c["client"] for c in body["clients"]] == sorted(c["client"] for c in body["clients"])
        text = orjson.dumps(body).decode()
        assert token not in text and USER_KEY not in text and "127.0.0.1" not in text  # no token, no address
        stats = await get(client, f"/presence/{SELF7}/stats", USER_KEY)
        assert stats == {"topic": SELF7, "connections": 2, "users": 1}
        assert await get(client, f"/presence/{SELF7}") == body  # realtime:presence reads it too
    await settled(client, SELF7, 0)
    assert await get(client, f"/presence/{SELF7}") == {"topic": SELF7, "connections": 0, "users": 0, "clients": []}


@pytest.mark.parametrize("suffix", ["", "/stats"])
async def test_access_matrix(make_client: AppFactory, suffix: str) -> None:
    client = await make_client(api_keys=KEYS)
    # realtime:presence reads any topic, someone else's self topic included
    assert (await get(client, f"/presence/remote-control:command.8{suffix}"))["connections"] == 0
    # the user reads their own self topic, and only that one
    assert (await get(client, f"/presence/remote-control:command.8{suffix}", OTHER_KEY))["users"] == 0
    resp = await client.get(f"/presence/remote-control:command.8{suffix}", headers=auth(USER_KEY))
    body = await resp.json()
    assert resp.status == 403 and body["error"] == "forbidden" and "not yours" in body["message"]
    assert "realtime:presence" in body["message"] and "missing_scopes" not in body
    assert set(body) == {"error", "message"}  # nothing of the topic's presence
    # the topic's scope is needed
    resp = await client.get(f"/presence/remote-control:command.svc{suffix}", headers=auth(PUBLISHER_KEY))
    body = await resp.json()
    assert resp.status == 403 and body["missing_scopes"] == ["user:read:remote-control"]


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Api-Key wrong-key-0123456789abcdef"}, {"Authorization": "garbage"}]
)
async def test_unauthenticated_is_401(make_client: AppFactory, headers: dict[str, str]) -> None:
    client = await make_client(api_keys=KEYS)
    for path in (f"/presence/{SELF7}", f"/presence/{SELF7}/stats"):
        resp = await client.get(path, headers=headers)
        assert resp.status == 401 and (await resp.json())["error"] == "unauthorized"


@pytest.mark.parametrize("topic", ["channel:update.1", "dream:update.a", "system:notice"])
async def test_topic_without_presence_is_404(make_client: AppFactory, topic: str) -> None:
    client = await make_client(api_keys=KEYS)
    for path in (f"/presence/{topic}", f"/presence/{topic}/stats"):
        resp = await client.get(path, headers=auth(PRESENCE_KEY))
        body = await resp.json()
        assert resp.status == 404 and body["error"] == "not_found" and "keeps no presence" in body["message"]


@pytest.mark.parametrize("topic", ["nope", "dream:unknown.a", "remote-control:command", "Remote-control:command.7"])
async def test_bad_topic_is_400_naming_the_field(make_client: AppFactory, topic: str) -> None:
    client = await make_client(api_keys=KEYS)
    for path in (f"/presence/{topic}", f"/presence/{topic}/stats"):
        resp = await client.get(path, headers=auth(PRESENCE_KEY))
        body = await resp.json()
        assert resp.status == 400 and body["error"] == "bad_request" and list(body["fields"]) == ["topic"]


async def test_broker_unavailable_is_503(make_client: AppFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    client = await make_client(api_keys=KEYS)

    async def down(*args: object, **kwargs: object) -> None:
        raise BrokerUnavailable("redis unavailable: ConnectionError")

    monkeypatch.setattr(client.app[NODE].presence, "read", down)
    for path in (f"/presence/{SELF7}", f"/presence/{SELF7}/stats"):
        resp = await client.get(path, headers=auth(PRESENCE_KEY))
        body = await resp.json()
        assert resp.status == 503 and body["error"] == "unavailable" and "redis unavailable" in body["message"]
    resp = await client.get(DEVICES, headers=auth(USER_KEY))
    env = await resp.json()
    assert resp.status == 503 and env["success"] is False and env["errorCode"] == "SERVICE_UNAVAILABLE"


async def test_two_instances_answer_alike(
    make_client: AppFactory, redis_url: str, channel: str, chat_policy: str
) -> None:
    settings = {"redis_url": redis_url, "redis_channel": channel, "redis_probe_interval": 0, "topics_file": chat_policy}
    a, b = await make_client(api_keys=KEYS, **settings), await make_client(api_keys=KEYS, **settings)
    token_a, token_b = await ws_token(a), await ws_token(b)
    async with (
        a.ws_connect("/ws") as on_a,
        b.ws_connect("/ws") as on_b,
        b.ws_connect("/ws") as anonymous,
    ):
        assert (await listen_with(anonymous, [ROOM], info={"nick": "w"}))["error"] == ""
        assert (await listen_with(on_a, [ROOM, SELF7], token=token_a, info={"nick": "a"}))["error"] == ""
        assert (await listen_with(on_b, [ROOM, SELF7], token=token_b, info={"nick": "b"}))["error"] == ""
        for _ in range(3):
            await recv_type(anonymous, "JOIN")  # every entry written: its JOIN came back through Redis
        await settled(a, SELF7, 1, 2)
        await settled(b, SELF7, 1, 2)
        answers = []
        for client in (a, b):
            room = await get(client, f"/presence/{ROOM}", USER_KEY)  # a public topic: any credential
            assert (room["connections"], room["users"]) == (3, 1)  # the anonymous listener is no user
            assert sorted(c["info"]["nick"] for c in room["clients"]) == ["a", "b", "w"]
            mine = await get(client, f"/presence/{SELF7}", USER_KEY)
            assert (mine["connections"], mine["users"]) == (2, 1)
            stats = await get(client, f"/presence/{ROOM}/stats")
            devices = (await get(client, DEVICES, USER_KEY))["data"]
            assert devices["connections"] == 2 and len(devices["devices"]) == 2
            answers.append((room, mine, stats, devices))
        assert answers[0] == answers[1]
        in_band = (await presence(on_b, ROOM, nonce="r"))["data"]  # the WS answer agrees too
        assert {**in_band, "topic": ROOM} == answers[0][0]
        await on_a.close()  # a removes its entry at once
        await recv_type(anonymous, "LEAVE")
        for client in (a, b):
            assert await get(client, f"/presence/{ROOM}/stats") == {"topic": ROOM, "connections": 2, "users": 1}
            assert (await get(client, DEVICES, USER_KEY))["data"]["connections"] == 1


async def test_stats_on_a_topic_with_many_entries(make_client: AppFactory, redis_url: str, channel: str) -> None:
    """10,000 entries of 1,000 users (written as instances write them, in chunks of 500):
    stats are exact and O(1); the list is left out beyond PRESENCE_MAX_CLIENTS."""
    client = await make_client(api_keys=KEYS, redis_url=redis_url, redis_channel=channel, redis_probe_interval=0)
    store, rule = client.app[NODE].broker.presence, client.app[NODE].policy.check(SELF7)[1]
    entries = {f"bulk.{i}": (f"u{i % 1000}", encode_entry(f"u{i % 1000}", f"bulk.{i}", {})) for i in range(10_000)}
    items = list(entries.items())
    changes = [TopicChanges(SELF7, rule.join_leave, dict(items[i : i + 500]), []) for i in range(0, len(items), 500)]
    await store.apply(changes, 60)
    started = time.perf_counter()
    stats = await get(client, f"/presence/{SELF7}/stats")
    elapsed = time.perf_counter() - started
    assert stats == {"topic": SELF7, "connections": 10_000, "users": 1_000}
    assert elapsed < 0.5, elapsed  # one O(1) Function call, not a scan (milliseconds on loopback)
    full = await get(client, f"/presence/{SELF7}")
    assert full == {"topic": SELF7, "connections": 10_000, "users": 1_000}  # no "clients": over the cap of 100
    await store.apply([TopicChanges(SELF7, False, {}, [f"bulk.{i}" for i in range(9_998)])], 60)
    full = await get(client, f"/presence/{SELF7}")
    assert (full["connections"], full["users"]) == (2, 2) and len(full["clients"]) == 2


async def test_devices_of_the_caller_only(make_client: AppFactory) -> None:
    client = await make_client()
    mine, theirs = await ws_token(client, USER_KEY), await ws_token(client, OTHER_KEY)
    async with client.ws_connect("/ws") as tv, client.ws_connect("/ws") as phone, client.ws_connect("/ws") as other:
        assert (await listen_with(tv, [SELF7], token=mine, info={"device": "tv"}))["error"] == ""
        assert (await listen_with(phone, [SELF7], token=mine, info={"device": "phone"}))["error"] == ""
        assert (await listen_with(other, ["remote-control:command.8"], token=theirs))["error"] == ""
        await settled(client, SELF7, 2)
        resp = await client.get(DEVICES, headers=auth(USER_KEY))
        assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
        env = await resp.json()
        assert env["success"] is True and env["message"] == "2 devices listening."
        data = env["data"]
        assert (data["connections"], data["users"]) == (2, 1)
        assert sorted(d["info"]["device"] for d in data["devices"]) == ["phone", "tv"]
        assert all(set(d) == {"client", "info"} for d in data["devices"])
        text = orjson.dumps(env).decode()
        assert mine not in text and "127.0.0.1" not in text
        env = await (await client.get(DEVICES, headers=auth(OTHER_KEY))).json()
        assert env["data"]["connections"] == 1 and env["data"]["devices"][0]["info"] == {}
        assert env["message"] == "1 device listening."
        env = await (await client.get(DEVICES, headers=auth(PUBLISHER_KEY))).json()  # user svc: none
        assert env["data"] == {"connections": 0, "users": 0, "devices": []}
        resp = await client.get(DEVICES)
        assert resp.status == 401 and (await resp.json())["errorCode"] == "UNAUTHORIZED"


async def test_devices_beyond_the_cap_are_counted_not_listed(make_client: AppFactory) -> None:
    client = await make_client(presence_max_clients=2)
    token = await ws_token(client)
    sockets = [await client.ws_connect("/ws") for _ in range(3)]
    for ws in sockets:
        assert (await listen_with(ws, [SELF7], token=token))["error"] == ""
    await settled(client, SELF7, 3)
    assert (await get(client, DEVICES, USER_KEY))["data"] == {"connections": 3, "users": 1}
    assert await get(client, f"/presence/{SELF7}", USER_KEY) == {"topic": SELF7, "connections": 3, "users": 1}
    for ws in sockets:
        await ws.close()


async def test_devices_without_presence_in_the_policy_is_404(make_client: AppFactory, tmp_path: Path) -> None:
    policy = tmp_path / "topics.toml"
    policy.write_text('[topics."remote-control:command"]\nscope = "user:read:remote-control"\ntarget = "self"\n')
    client = await make_client(topics_file=str(policy))
    resp = await client.get(DEVICES, headers=auth(USER_KEY))
    env = await resp.json()
    assert resp.status == 404 and env["errorCode"] == "NOT_FOUND" and "keeps no presence" in env["message"]


async def test_openapi_describes_the_routes(make_client: AppFactory) -> None:
    client = await make_client()
    spec = await (await client.get("/api/v1/openapi.json")).json()
    for path, schema in (("/presence/{topic}", "Presence"), ("/presence/{topic}/stats", "PresenceStats")):
        op = spec["paths"][path]["get"]
        assert [p["name"] for p in op["parameters"]] == ["topic"]
        assert op["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": f"#/components/schemas/{schema}"
        }
        assert {"200", "400", "401", "403", "404", "503"} <= set(op["responses"])
    schemas = spec["components"]["schemas"]
    assert set(schemas["Presence"]["properties"]) == {"topic", "connections", "users", "clients"}
    assert set(schemas["PresenceStats"]["properties"]) == {"topic", "connections", "users"}
    devices = spec["paths"][DEVICES]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert devices["properties"]["data"] == {"$ref": "#/components/schemas/RemoteControlDevices"}
    assert set(schemas["RemoteControlDevices"]["properties"]) == {"connections", "users", "devices"}
