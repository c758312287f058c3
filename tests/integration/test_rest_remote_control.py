"""``POST /api/v1/remote-control``: reaches every device of the caller and nobody else."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from db.apikeys import create_api_key
from db.users import create_user
from tests.conftest import OTHER_KEY, USER_KEY, AppFactory, assert_silent, auth, listen, recv, ws_token
from tests.pg import conn, database_url, migrated_url

RC = "user:read:remote-control"


async def test_database_user_devices_receive_their_commands_only(
    make_client: AppFactory, database_url: str, conn: Any
) -> None:
    alice, bob = [await create_user(conn, name=n, scopes=[RC]) for n in ("alice", "bob")]
    alice_key = (await create_api_key(conn, user_id=alice.id))[1]
    bob_key = (await create_api_key(conn, user_id=bob.id))[1]
    client = await make_client(database_url=database_url)
    alice_token, bob_token = await ws_token(client, alice_key), await ws_token(client, bob_key)
    async with (
        client.ws_connect("/ws") as phone,
        client.ws_connect("/ws") as tv,
        client.ws_connect("/ws") as bobs,
    ):
        for ws in (phone, tv):
            assert (await listen(ws, [f"remote-control:command.{alice.id}"], alice_token))["error"] == ""
        assert (await listen(bobs, [f"remote-control:command.{bob.id}"], bob_token))["error"] == ""
        refused = await listen(bobs, [f"remote-control:command.{alice.id}"], bob_token)
        assert refused["error"] == "ERR_BADAUTH"
        body = {"event": "play_dream", "uuid": "abc", "frameNumber": 12, "extra": "kept"}
        resp = await client.post("/api/v1/remote-control", json=body, headers=auth(alice_key))
        env = await resp.json()
        assert resp.status == 202 and env["success"] is True and env["data"] == body
        for ws in (phone, tv):
            msg = await recv(ws)
            assert msg["data"]["topic"] == f"remote-control:command.{alice.id}"
            assert orjson.loads(msg["data"]["message"]) == body
        await assert_silent(bobs)


async def test_env_key_users_too(make_client: AppFactory) -> None:
    client = await make_client()
    token = await ws_token(client, USER_KEY)
    async with client.ws_connect("/ws") as ws:
        assert (await listen(ws, ["remote-control:command.7"], token))["error"] == ""
        resp = await client.post("/api/v1/remote-control", json={"event": "set_speed_9"}, headers=auth(USER_KEY))
        assert resp.status == 202
        assert orjson.loads((await recv(ws))["data"]["message"]) == {"event": "set_speed_9"}
        resp = await client.post("/api/v1/remote-control", json={"event": "next"}, headers=auth(OTHER_KEY))
        assert resp.status == 202
        await assert_silent(ws)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "event"),
        ({"event": "explode"}, "event"),
        ({"event": "set_speed_10"}, "event"),
        ({"event": "next", "frameNumber": -1}, "frameNumber"),
        ({"event": "next", "frameNumber": "x"}, "frameNumber"),
    ],
)
async def test_bad_commands_are_400(make_client: AppFactory, body: dict[str, Any], field: str) -> None:
    client = await make_client()
    resp = await client.post("/api/v1/remote-control", json=body, headers=auth(USER_KEY))
    env = await resp.json()
    assert resp.status == 400 and env["errorCode"] == "BAD_REQUEST" and env["data"][0]["field"] == field


async def test_unauthenticated_and_broker_down(make_client: AppFactory) -> None:
    client = await make_client()
    resp = await client.post("/api/v1/remote-control", json={"event": "next"})
    assert resp.status == 401 and (await resp.json())["message"] == "Unauthorized."
    down = await make_client(redis_url="redis://127.0.0.1:1/0", redis_channel="x")
    resp = await down.post("/api/v1/remote-control", json={"event": "next"}, headers=auth(USER_KEY))
    env = await resp.json()
    assert resp.status == 503 and env["errorCode"] == "SERVICE_UNAVAILABLE"
