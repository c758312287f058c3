"""Real ``realtime serve`` processes: fresh-machine start, Redis fan-out, CLI publish, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSMsgType

from tests.conftest import API_KEYS_JSON, PUBLISHER_KEY, auth, listen, recv
from tests.procs import REALTIME, Server


async def test_fresh_machine_just_works_and_sigterm_is_graceful(spawn: type[Server], tmp_path: Path) -> None:
    server = spawn(env={"API_KEYS": API_KEYS_JSON, "SHUTDOWN_GRACE": "1"})
    async with aiohttp.ClientSession() as http:
        assert (await http.get(server.url + "/ready")).status == 200
        assert len(list((tmp_path / "keys.d").glob("*.pem"))) == 1
        assert "development_signing_key_generated" in server.log.read_text()
        async with http.ws_connect(server.url + "/ws") as ws:
            assert (await listen(ws, ["dream:update.x"]))["error"] == ""
            resp = await http.post(
                server.url + "/publish", json={"topic": "dream:update.x", "message": "hi"}, headers=auth(PUBLISHER_KEY)
            )
            assert resp.status == 202
            assert (await recv(ws))["data"]["message"] == "hi"
            started = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            assert await recv(ws, timeout=5) == {"type": "RECONNECT"}
            msg = await ws.receive(timeout=10)
            assert msg.type is WSMsgType.CLOSE and msg.data == 1001
            assert time.monotonic() - started >= 0.9  # the grace period was given
    assert await asyncio.to_thread(server.stop) == 0


async def test_key_reused_across_restarts(spawn: type[Server], tmp_path: Path) -> None:
    first = spawn()
    async with aiohttp.ClientSession() as http:
        jwks1 = await (await http.get(first.url + "/.well-known/jwks.json")).json()
    assert await asyncio.to_thread(first.stop) == 0
    second = spawn()
    async with aiohttp.ClientSession() as http:
        jwks2 = await (await http.get(second.url + "/.well-known/jwks.json")).json()
    assert jwks1 == jwks2


@pytest.mark.slow
async def test_two_instances_share_redis_and_cli_publish(
    spawn: type[Server], redis_url: str, channel: str, tmp_path: Path
) -> None:
    env = {"API_KEYS": API_KEYS_JSON, "REDIS_URL": redis_url, "REDIS_CHANNEL": channel, "SHUTDOWN_GRACE": "0"}
    (tmp_path / "keys.d").mkdir()
    generate = [*REALTIME, "keys", "generate", "--dir", str(tmp_path / "keys.d")]
    await asyncio.to_thread(subprocess.run, generate, check=True, capture_output=True)
    a, b = spawn(env=env), spawn(env=env)
    async with aiohttp.ClientSession() as http:
        token_resp = await http.post(a.url + "/auth/ws", headers=auth("user-key-0123456789abcdef"))
        token = (await token_resp.json())["token"]
        async with http.ws_connect(a.url + "/ws") as wsa, http.ws_connect(b.url + "/ws") as wsb:
            # a token from instance A is accepted by instance B: both load the same keys
            assert (await listen(wsa, ["remote-control:command.7"], token))["error"] == ""
            assert (await listen(wsb, ["remote-control:command.7"], token))["error"] == ""
            resp = await http.post(
                b.url + "/publish",
                json={"topic": "remote-control:command.7", "message": {"event": "pause"}},
                headers=auth(PUBLISHER_KEY),
            )
            assert resp.status == 202
            for ws in (wsa, wsb):
                assert (await recv(ws))["data"]["message"] == '{"event":"pause"}'
            cli = await asyncio.create_subprocess_exec(
                *REALTIME, "publish", "remote-control:command.7", "from-cli",
                env={**os.environ, "REDIS_URL": redis_url, "REDIS_CHANNEL": channel},
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            _, err = await cli.communicate()
            assert cli.returncode == 0, err
            for ws in (wsa, wsb):
                assert (await recv(ws))["data"]["message"] == "from-cli"
    assert await asyncio.to_thread(a.stop) == 0
    assert await asyncio.to_thread(b.stop) == 0


async def test_workers_share_one_port(spawn: type[Server], redis_url: str, channel: str, tmp_path: Path) -> None:
    env = {"REDIS_URL": redis_url, "REDIS_CHANNEL": channel, "SHUTDOWN_GRACE": "0", "WORKERS": "2"}
    server = spawn(env=env)
    async with aiohttp.ClientSession() as http:
        sockets = [await http.ws_connect(server.url + "/ws") for _ in range(8)]
        for ws in sockets:
            assert (await listen(ws, ["dream:update.w"]))["error"] == ""
        publisher = await asyncio.create_subprocess_exec(
            *REALTIME, "publish", "dream:update.w", "to-all-workers",
            env={**os.environ, "REDIS_URL": redis_url, "REDIS_CHANNEL": channel},
        )  # fmt: skip
        assert await publisher.wait() == 0
        for ws in sockets:
            assert (await recv(ws))["data"]["message"] == "to-all-workers"
            await ws.close()
    assert len(list((tmp_path / "keys.d").glob("*.pem"))) == 1  # one key for all workers
    assert server.log.read_text().count('"listening"') == 2
    assert await asyncio.to_thread(server.stop) == 0


def test_freeze_startup_heap_freezes_what_exists() -> None:
    """``serve`` freezes the startup heap before it listens: everything allocated so far is
    out of the collector's reach (and a later unfreeze hands it back)."""
    import gc

    from service.runner import freeze_startup_heap

    try:
        frozen = freeze_startup_heap()
        assert frozen == gc.get_freeze_count() > 1000  # at least the imported modules' objects
    finally:
        gc.unfreeze()
