"""Limits on a real app: LISTEN rate, connections per IP and per user, attempts per IP, proxy headers.

The pure parts (buckets, the connection limiter, ``client_ip``): tests/unit/test_limits.py."""

from __future__ import annotations

import aiohttp
import pytest

from tests.conftest import USER_KEY, AppFactory, auth, listen, recv, ws_token


async def test_listen_rate_limit(make_client: AppFactory) -> None:
    client = await make_client(listen_rate=0.5, listen_burst=3)
    async with client.ws_connect("/ws") as ws:
        errors = [(await listen(ws, [f"dream:update.{i}"]))["error"] for i in range(5)]
        assert errors == ["", "", "", "ERR_RATELIMIT", "ERR_RATELIMIT"]


async def test_connections_per_ip(make_client: AppFactory) -> None:
    client = await make_client(max_connections_per_ip=2)
    async with client.ws_connect("/ws"), client.ws_connect("/ws"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await client.ws_connect("/ws")
        assert info.value.status == 429
        resp = await client.get("/ws", headers={"Upgrade": "websocket", "Connection": "Upgrade"})
        assert resp.status == 429 and (await resp.json())["error"] == "too_many_requests"
    async with client.ws_connect("/ws"):  # slots are released on close
        pass


async def test_connection_attempts_per_ip(make_client: AppFactory) -> None:
    client = await make_client(connect_rate_per_ip=0.1, connect_burst_per_ip=2)
    for _ in range(2):
        async with client.ws_connect("/ws"):
            pass
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/ws")
    assert info.value.status == 429


async def test_trusted_proxy_header_separates_clients(make_client: AppFactory) -> None:
    client = await make_client(max_connections_per_ip=1, client_ip_header="Fly-Client-IP")
    async with (
        client.ws_connect("/ws", headers={"Fly-Client-IP": "1.1.1.1"}),
        client.ws_connect("/ws", headers={"Fly-Client-IP": "2.2.2.2"}),
    ):
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await client.ws_connect("/ws", headers={"Fly-Client-IP": "1.1.1.1"})


async def test_untrusted_proxy_header_is_ignored(make_client: AppFactory) -> None:
    client = await make_client(max_connections_per_ip=1)
    async with client.ws_connect("/ws", headers={"Fly-Client-IP": "1.1.1.1"}):
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await client.ws_connect("/ws", headers={"Fly-Client-IP": "2.2.2.2"})


async def test_connections_per_user(make_client: AppFactory) -> None:
    client = await make_client(max_connections_per_user=2)
    token = await ws_token(client)
    async with client.ws_connect("/ws") as a, client.ws_connect("/ws") as b, client.ws_connect("/ws") as c:
        assert (await listen(a, ["remote-control:command.7"], token))["error"] == ""
        assert (await listen(a, ["remote-control:command.7"], token))["error"] == ""  # same connection: fine
        assert (await listen(b, ["remote-control:command.7"], token))["error"] == ""
        reply = await listen(c, ["remote-control:command.7"], token)
        assert reply["error"] == "ERR_RATELIMIT" and "user" in reply["error_description"]
        assert (await listen(c, ["dream:update.x"]))["error"] == ""  # public topics need no user slot
    async with client.ws_connect("/ws") as d:  # a and b closed: slots are free again
        assert (await listen(d, ["remote-control:command.7"], token))["error"] == ""


async def test_revoked_users_free_their_connection_slots(make_client: AppFactory) -> None:
    client = await make_client(max_connections_per_user=2)
    stolen = await ws_token(client)
    async with client.ws_connect("/ws") as a, client.ws_connect("/ws") as b, client.ws_connect("/ws") as c:
        for ws in (a, b):
            assert (await listen(ws, ["remote-control:command.7"], stolen))["error"] == ""
        resp = await client.post("/auth/ws/revoke", json={"sub": "7"}, headers=auth(USER_KEY))
        assert resp.status == 202
        for ws in (a, b):  # the squatters stay connected but hold no grant, and no slot
            assert (await recv(ws))["type"] == "AUTH_REVOKED"
        fresh = await ws_token(client)
        assert (await listen(c, ["remote-control:command.7"], fresh))["error"] == ""
