"""Token expiry and revocation: AUTH_REVOKED, on one instance and across instances via Redis."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt
import pytest

from http_api.appkeys import NODE
from keys import KeyStore
from realtime.settings import parse_api_keys
from service.app import create_app
from tests.conftest import (
    API_KEYS_JSON,
    OTHER_KEY,
    PUBLISHER_KEY,
    USER_KEY,
    AppFactory,
    assert_silent,
    auth,
    listen,
    make_settings,
    recv,
    wait_for,
    ws_token,
)

ADMIN_KEYS = (
    API_KEYS_JSON[:-1] + ', {"userId": "ops", "apiKey": "admin-key-0123456789abcdef", "scopes": ["realtime:revoke"]}]'
)


async def publish(client: Any, topic: str, message: str) -> None:
    resp = await client.post("/publish", json={"topic": topic, "message": message}, headers=auth(PUBLISHER_KEY))
    assert resp.status == 202


async def test_token_expiry_sends_auth_revoked(make_client: AppFactory) -> None:
    client = await make_client(ws_token_ttl=1)
    token = await ws_token(client)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    async with client.ws_connect("/ws") as ws:
        assert (await listen(ws, ["remote-control:command.7", "channel:update.a"], token))["error"] == ""
        revoked = await recv(ws, timeout=3)
        assert revoked == {"type": "AUTH_REVOKED", "data": {"topics": ["remote-control:command.7"]}}
        assert time.time() >= exp - 0.05
        await publish(client, "remote-control:command.7", "gone")
        await publish(client, "channel:update.a", "public stays")
        assert (await recv(ws))["data"] == {"topic": "channel:update.a", "message": "public stays"}
        # the expired token is refused from now on
        assert (await listen(ws, ["remote-control:command.7"], token))["error"] == "ERR_BADAUTH"


@pytest.mark.slow
async def test_relisten_with_newer_token_keeps_the_topic(make_client: AppFactory) -> None:
    client = await make_client(ws_token_ttl=3)
    old = await ws_token(client)
    old_exp = jwt.decode(old, options={"verify_signature": False})["exp"]
    async with client.ws_connect("/ws") as ws:
        assert (await listen(ws, ["remote-control:command.7"], old))["error"] == ""
        await asyncio.sleep(1.05)
        new = await ws_token(client)
        assert jwt.decode(new, options={"verify_signature": False})["exp"] > old_exp
        assert (await listen(ws, ["remote-control:command.7"], new))["error"] == ""
        await assert_silent(ws, timeout=max(0.1, old_exp - time.time() + 0.3))  # old expiry passes quietly
        await publish(client, "remote-control:command.7", "still mine")
        assert (await recv(ws))["data"]["message"] == "still mine"
        assert (await recv(ws, timeout=4))["type"] == "AUTH_REVOKED"  # then the newer one expires


async def test_revoke_own_tokens_by_sub_and_jti(make_client: AppFactory) -> None:
    client = await make_client()
    token = await ws_token(client)
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    async with client.ws_connect("/ws") as ws:
        await listen(ws, ["remote-control:command.7"], token)
        resp = await client.post("/auth/ws/revoke", json={"jti": jti}, headers=auth(USER_KEY))
        assert resp.status == 202
        assert await recv(ws) == {"type": "AUTH_REVOKED", "data": {"topics": ["remote-control:command.7"]}}
        reply = await listen(ws, ["remote-control:command.7"], token)
        assert reply["error"] == "ERR_BADAUTH" and "revoked" in reply["error_description"]
        fresh = await ws_token(client)
        assert (await listen(ws, ["remote-control:command.7"], fresh))["error"] == ""
        resp = await client.post("/auth/ws/revoke", json={"sub": "7"}, headers=auth(USER_KEY))
        assert resp.status == 202
        assert (await recv(ws))["type"] == "AUTH_REVOKED"


async def test_revoking_someone_else_needs_the_scope(make_client: AppFactory) -> None:
    client = await make_client()
    token7 = await ws_token(client)
    jti7 = jwt.decode(token7, options={"verify_signature": False})["jti"]
    async with client.ws_connect("/ws") as ws:
        await listen(ws, ["remote-control:command.7"], token7)
        resp = await client.post("/auth/ws/revoke", json={"sub": "7"}, headers=auth(OTHER_KEY))
        assert resp.status == 403 and (await resp.json())["missing_scopes"] == ["realtime:revoke"]
        # a jti from another user is only matched against the caller's own tokens
        resp = await client.post("/auth/ws/revoke", json={"jti": jti7}, headers=auth(OTHER_KEY))
        assert resp.status == 202
        await assert_silent(ws)
        assert (await listen(ws, ["remote-control:command.7"], token7))["error"] == ""


async def test_revoke_bad_bodies(make_client: AppFactory) -> None:
    client = await make_client()
    for body in ({}, {"jti": "a", "sub": "b"}, {"jti": 5}):
        resp = await client.post("/auth/ws/revoke", json=body, headers=auth(USER_KEY))
        assert resp.status == 400, body
    assert (await client.post("/auth/ws/revoke", json={"sub": "7"})).status == 401


async def test_revocation_reaches_other_instances_within_a_second(
    aiohttp_client: Any, key_store: KeyStore, redis_url: str, channel: str
) -> None:
    settings = make_settings(redis_url=redis_url, redis_channel=channel)
    a = await aiohttp_client(create_app(settings, key_store=key_store))
    b = await aiohttp_client(create_app(settings, key_store=key_store))
    await wait_for(lambda: a.app[NODE].broker.ready and b.app[NODE].broker.ready)
    token = await ws_token(a)
    async with b.ws_connect("/ws") as ws:
        assert (await listen(ws, ["remote-control:command.7"], token))["error"] == ""
        started = time.monotonic()
        resp = await a.post("/auth/ws/revoke", json={"sub": "7"}, headers=auth(USER_KEY))
        assert resp.status == 202
        assert await recv(ws, timeout=1.0) == {"type": "AUTH_REVOKED", "data": {"topics": ["remote-control:command.7"]}}
        assert time.monotonic() - started < 1.0
        assert (await listen(ws, ["remote-control:command.7"], token))["error"] == "ERR_BADAUTH"


async def test_a_plain_caller_cannot_narrow_an_admin_revocation(make_client: AppFactory) -> None:
    """An admin's revoke-by-jti holds for everyone, whoever repeats that jti later."""
    client = await make_client(api_keys=parse_api_keys(ADMIN_KEYS))
    token = await ws_token(client)
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    assert (
        await client.post("/auth/ws/revoke", json={"jti": jti}, headers=auth("admin-key-0123456789abcdef"))
    ).status == 202
    assert (await client.post("/auth/ws/revoke", json={"jti": jti}, headers=auth(OTHER_KEY))).status == 202
    async with client.ws_connect("/ws") as ws:
        assert (await listen(ws, ["remote-control:command.7"], token))["error"] == "ERR_BADAUTH"


async def test_a_token_issued_right_after_a_revocation_works(make_client: AppFactory) -> None:
    client = await make_client()
    resp = await client.post("/auth/ws/revoke", json={"sub": "7"}, headers=auth(USER_KEY))
    assert resp.status == 202
    fresh = await ws_token(client)  # same second as the revocation
    async with client.ws_connect("/ws") as ws:
        assert (await listen(ws, ["remote-control:command.7"], fresh))["error"] == ""


async def test_revocations_are_bounded(make_client: AppFactory) -> None:
    client = await make_client()
    resp = await client.post("/auth/ws/revoke", json={"jti": "x" * 65}, headers=auth(USER_KEY))
    assert resp.status == 400 and "jti" in (await resp.json())["fields"]
    statuses = [
        (await client.post("/auth/ws/revoke", json={"jti": f"j{i}"}, headers=auth(OTHER_KEY))).status for i in range(12)
    ]
    assert statuses[:10] == [202] * 10 and statuses[-1] == 429  # per-caller rate limit


async def test_expiry_timer_forgets_closed_connections(make_client: AppFactory) -> None:
    client = await make_client(connect_rate_per_ip=0)
    token = await ws_token(client)
    node = client.app[NODE]
    for _ in range(100):
        async with client.ws_connect("/ws") as ws:
            assert (await listen(ws, ["remote-control:command.7"], token))["error"] == ""
    await wait_for(lambda: not node.peers)
    assert node.expiries.entries <= 2 * len(node.expiries) + 65
