"""Real ``realtime serve`` processes: fresh-machine start, Redis fan-out, CLI publish, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSMsgType

from tests.conftest import API_KEYS_JSON, PUBLISHER_KEY, auth, listen, recv

REALTIME = [sys.executable, "-m", "realtime"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = cwd / f"server-{self.port}.log"
        base = {
            k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "API_KEYS", "WS_SIGNING_KEYS", "KEYS_DIR")
        }
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*REALTIME, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=cwd,
                env={**base, "LOG_FORMAT": "json", **env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("server did not start: " + self.log.read_text())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[type[Server]]:
    servers: list[Server] = []

    class Tracked(Server):
        def __init__(self, cwd: Path = tmp_path, env: dict[str, str] | None = None) -> None:
            super().__init__(cwd, env or {})
            servers.append(self)

    yield Tracked
    for server in servers:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


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


async def test_two_instances_share_redis_and_cli_publish(
    spawn: type[Server], redis_url: str, channel: str, tmp_path: Path
) -> None:
    env = {"API_KEYS": API_KEYS_JSON, "REDIS_URL": redis_url, "REDIS_CHANNEL": channel, "SHUTDOWN_GRACE": "0"}
    (tmp_path / "keys.d").mkdir()
    subprocess.run([*REALTIME, "keys", "generate", "--dir", str(tmp_path / "keys.d")], check=True, capture_output=True)
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
