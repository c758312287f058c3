"""Revoking a database API key (or deleting its user) ends that user's WS tokens everywhere."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp

from db.apikeys import create_api_key
from db.users import create_user
from http_api.appkeys import DATABASE
from tests.conftest import auth, listen, recv
from tests.pg import conn, database_url, migrated_url
from tests.procs import REALTIME, Server

RC = "user:read:remote-control"


async def run_cli(*argv: str, env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *REALTIME, *argv, env={**os.environ, **env}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    return proc.returncode or 0, err.decode()


async def test_apikeys_revoke_sends_auth_revoked(
    spawn: type[Server],
    conn: Any,
    database_url: str,
    redis_url: str,
    channel: str,
) -> None:
    user = await create_user(conn, name="Dee", scopes=[RC])
    key, secret = await create_api_key(conn, user_id=user.id)
    env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "REDIS_CHANNEL": channel, "SHUTDOWN_GRACE": "0"}
    server = spawn(env=env)
    async with aiohttp.ClientSession() as http:
        resp = await http.post(server.url + "/auth/ws", headers=auth(secret))
        assert resp.status == 200, await resp.text()
        token = (await resp.json())["token"]
        async with http.ws_connect(server.url + "/ws") as ws:
            assert (await listen(ws, [f"remote-control:command.{user.id}"], token))["error"] == ""
            code, err = await run_cli("apikeys", "revoke", str(key.id), env=env)
            assert code == 0, err
            assert "every running server" in err
            revoked = await recv(ws, timeout=3)
            assert revoked == {"type": "AUTH_REVOKED", "data": {"topics": [f"remote-control:command.{user.id}"]}}
            assert (await listen(ws, [f"remote-control:command.{user.id}"], token))["error"] == "ERR_BADAUTH"
        resp = await http.post(server.url + "/auth/ws", headers=auth(secret))
        assert resp.status == 401  # the key itself is refused too
    assert await asyncio.to_thread(server.stop) == 0


async def test_revoke_without_redis_says_what_it_could_not_do(
    conn: Any,
    database_url: str,
) -> None:
    user = await create_user(conn, name="Eve", scopes=[RC])
    key, _ = await create_api_key(conn, user_id=user.id)
    env = {"DATABASE_URL": database_url, "REDIS_URL": ""}
    code, err = await run_cli("apikeys", "revoke", str(key.id), env=env)
    assert code == 0 and "REDIS_URL is not set" in err and "WS_TOKEN_TTL" in err


async def test_ready_reports_the_database(make_client: Any, database_url: str) -> None:
    client = await make_client(database_url=database_url)
    resp = await client.get("/ready")
    assert resp.status == 200
    assert (await resp.json())["dependencies"]["database"] == {"state": "connected"}
    client.app[DATABASE].pool.terminate()  # the pool is gone: the database is unreachable
    resp = await client.get("/ready")
    assert resp.status == 503
    assert (await resp.json())["dependencies"]["database"] == {"state": "disconnected"}
