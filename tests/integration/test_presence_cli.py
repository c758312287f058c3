"""``realtime presence``: run as a subprocess against two real server processes on the real
Redis (each test its own channel), straight from Redis and through ``--url``."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from service.cli import main
from tests import procs
from tests.conftest import API_KEYS_JSON, OTHER_KEY, USER_KEY
from tests.integration.test_onboarding import run_http_api_block

SELF7 = "remote-control:command.7"


@pytest.fixture(autouse=True)
def no_env_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REALTIME_URL", "REALTIME_API_KEY", "REDIS_URL", "REDIS_CHANNEL", "TOPICS_FILE"):
        monkeypatch.delenv(name, raising=False)


async def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``realtime presence ARGS`` in a process of its own: ``(status, stdout, stderr)``."""
    base = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "REALTIME_URL", "REALTIME_API_KEY")}
    proc = await asyncio.create_subprocess_exec(
        *procs.REALTIME,
        "presence",
        *args,
        env={**base, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@asynccontextmanager
async def device(session: aiohttp.ClientSession, server: procs.Server, name: str) -> AsyncIterator[None]:
    """A connection of user 7 listening on its remote-control topic as device ``name``."""
    async with session.post(f"{server.url}/auth/ws", headers={"Authorization": f"Api-Key {USER_KEY}"}) as resp:
        token = (await resp.json())["token"]
    async with session.ws_connect(f"{server.url}/ws") as ws:
        data = {"topics": [SELF7], "auth_token": token, "client_info": {"device": name}}
        await ws.send_str(orjson.dumps({"type": "LISTEN", "nonce": "l", "data": data}).decode())
        reply = orjson.loads(await asyncio.wait_for(ws.receive_str(), 5))
        assert reply["type"] == "RESPONSE" and reply["error"] == "", reply
        yield


async def until(redis: dict[str, str], connections: int) -> dict[str, Any]:
    """What ``realtime presence`` prints once the instances wrote ``connections`` entries."""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        status, out, err = await run(SELF7, env=redis)
        assert status == 0, err
        body: dict[str, Any] = orjson.loads(out)
        if body["connections"] == connections:
            return body
        assert asyncio.get_running_loop().time() < deadline, body
        await asyncio.sleep(0.1)


async def test_presence_from_redis_and_through_either_server(
    spawn: type[procs.Server], redis_url: str, channel: str
) -> None:
    redis = {"REDIS_URL": redis_url, "REDIS_CHANNEL": channel}
    servers = [spawn(env={"API_KEYS": API_KEYS_JSON, **redis}) for _ in range(2)]
    async with aiohttp.ClientSession() as session, AsyncExitStack() as stack:
        await stack.enter_async_context(device(session, servers[0], "tv"))
        await stack.enter_async_context(device(session, servers[1], "phone"))
        body = await until(redis, 2)
        assert set(body) == {"topic", "connections", "users", "clients"}
        assert (body["topic"], body["users"]) == (SELF7, 1)
        assert sorted(c["info"]["device"] for c in body["clients"]) == ["phone", "tv"]
        assert {c["user"] for c in body["clients"]} == {"7"}
        assert len({c["client"].split(".")[0] for c in body["clients"]}) == 2  # one per instance
        assert USER_KEY not in str(body) and "127.0.0.1" not in str(body)
        status, out, _ = await run(SELF7, "--stats", env=redis)
        assert status == 0 and orjson.loads(out) == {"topic": SELF7, "connections": 2, "users": 1}
        for server in servers:  # every server answers the same as Redis
            status, out, err = await run(SELF7, "--url", server.url, "--api-key", USER_KEY)
            assert status == 0 and orjson.loads(out) == body, err
            status, out, err = await run(
                SELF7, "--stats", env={"REALTIME_URL": server.url, "REALTIME_API_KEY": USER_KEY}
            )
            assert status == 0 and orjson.loads(out) == {"topic": SELF7, "connections": 2, "users": 1}, err
        status, out, err = await run(SELF7, "--url", servers[0].url, "--api-key", OTHER_KEY)
        assert status == 1 and out == "" and err.startswith("error: 403") and "not yours" in err
        status, out, err = await run("channel:update.1", "--url", servers[1].url, "--api-key", USER_KEY)
        assert status == 1 and "error: 404" in err and "keeps no presence" in err
    assert (await until(redis, 0))["clients"] == []  # the closed connections left at once


async def test_presence_from_redis_refusals(redis_url: str, channel: str) -> None:
    redis = {"REDIS_URL": redis_url, "REDIS_CHANNEL": channel}
    status, out, err = await run("channel:update.1", env=redis)
    assert (status, out) == (2, "") and "keeps no presence" in err
    status, out, err = await run("dream:unknown.1", env=redis)
    assert (status, out) == (2, "") and "unknown topic name" in err
    status, out, err = await run(SELF7, env={"REDIS_URL": f"redis://127.0.0.1:{procs.free_port()}/0"})
    assert (status, out) == (2, "") and err.startswith("error: ")


def test_presence_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presence", SELF7]) == 2  # no --url, no REDIS_URL
    assert "REDIS_URL" in capsys.readouterr().err
    assert main(["presence", "nope.1", "--url", "http://127.0.0.1:1"]) == 2
    assert "malformed topic" in capsys.readouterr().err
    assert main(["presence", SELF7, "--url", f"http://127.0.0.1:{procs.free_port()}"]) == 1
    assert "error: cannot read" in capsys.readouterr().err


def test_readme_presence_example_runs_pasted_as_is(tmp_path: Path) -> None:
    """The README's ``GET /presence`` block, in bash, in a fresh directory beside the venv
    (only its port changed), with ``REDIS_URL`` set as a "Try it" shell leaves it; the
    server and the listener are killed on the way out, whatever fails."""
    proc = run_http_api_block(tmp_path, "/presence/", "4447", "$DEVICE $SERVER")
    out = proc.stdout
    assert '"kind":"memory"' in out
    client = re.search(r'"client":"([0-9a-f]+\.[^"]+)"', out)
    assert client is not None, out
    assert (
        '{"topic":"remote-control:command.7","connections":1,"users":1,"clients":'
        f'[{{"user":"7","client":"{client[1]}","info":{{}}}}]}}\n' in out
    ), out
    assert out.count('{"topic":"remote-control:command.7","connections":1,"users":1}\n') == 2, out
    assert (
        '{"success":true,"data":{"connections":1,"users":1,'
        f'"devices":[{{"client":"{client[1]}","info":{{}}}}]}},"message":"1 device listening."}}' in out
    ), out
