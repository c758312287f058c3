"""Broker faults against real processes: a private redis-server that we stop and restart."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from tests.conftest import API_KEYS_JSON, PUBLISHER_KEY, auth, listen, recv, send
from tests.procs import Server, free_port

OUTAGE_SECONDS = float(os.environ.get("FAULT_OUTAGE_SECONDS", "30"))


class PrivateRedis:
    """A redis-server of this test alone, so stopping it disturbs nobody else."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed") if os.environ.get("CI") else pytest.skip("no redis-server")
        self.binary = str(binary)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        import socket

        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise AssertionError("private redis did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


async def status(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url) as resp:
        return resp.status


async def publish_http(http: aiohttp.ClientSession, server: Server, message: str) -> int:
    async with http.post(
        server.url + "/publish", json={"topic": "dream:update.a", "message": message}, headers=auth(PUBLISHER_KEY)
    ) as resp:
        return resp.status


async def poll_status(http: aiohttp.ClientSession, url: str, expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while await status(http, url) != expected:
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_redis_outage_clients_stay_and_delivery_resumes(
    spawn: type[Server],
    private_redis: PrivateRedis,
    tmp_path: Path,
) -> None:
    server = spawn(env={"API_KEYS": API_KEYS_JSON, "REDIS_URL": private_redis.url, "SHUTDOWN_GRACE": "0"})
    async with aiohttp.ClientSession() as http, http.ws_connect(server.url + "/ws") as ws:
        assert (await listen(ws, ["dream:update.a"]))["error"] == ""
        assert await publish_http(http, server, "before") == 202
        assert (await recv(ws))["data"]["message"] == "before"

        private_redis.stop()
        await poll_status(http, server.url + "/ready", 503, timeout=5)
        assert await publish_http(http, server, "during") == 503  # never a false 202
        outage_end = time.monotonic() + OUTAGE_SECONDS
        while time.monotonic() < outage_end:  # the client stays connected all along
            await send(ws, type="PING")
            assert await recv(ws) == {"type": "PONG"}
            await asyncio.sleep(min(2.0, max(0.0, outage_end - time.monotonic())))
        assert await status(http, server.url + "/health") == 200

        private_redis.start()
        back = time.monotonic()
        gap = await recv(ws, timeout=5)
        assert gap == {"type": "GAP", "data": {"topics": ["dream:update.a"], "reason": "broker_reconnected"}}
        client = aioredis.from_url(private_redis.url)
        await client.publish("realtime", orjson.dumps({"topic": "dream:update.a", "message": "after"}))
        assert (await recv(ws))["data"]["message"] == "after"
        resumed = time.monotonic() - back
        await client.aclose()
        assert resumed < 2.0, f"delivery resumed {resumed:.2f} s after Redis came back"
        assert await status(http, server.url + "/ready") == 200
        assert await publish_http(http, server, "http after") == 202
        assert (await recv(ws))["data"]["message"] == "http after"
    log = server.log.read_text()
    assert log.count('"redis_reconnected"') == 1
    assert '"redis_connect_failed"' in log
    assert await asyncio.to_thread(server.stop) == 0


async def test_quick_redis_restart(
    spawn: type[Server],
    private_redis: PrivateRedis,
) -> None:
    server = spawn(env={"REDIS_URL": private_redis.url, "SHUTDOWN_GRACE": "0"})
    async with aiohttp.ClientSession() as http, http.ws_connect(server.url + "/ws") as ws:
        await listen(ws, ["dream:update.a"])
        private_redis.stop()
        private_redis.start()
        assert (await recv(ws, timeout=5))["type"] == "GAP"
        client = aioredis.from_url(private_redis.url)
        await client.publish("realtime", orjson.dumps({"topic": "dream:update.a", "message": "x"}))
        assert (await recv(ws))["data"]["message"] == "x"
        await client.aclose()
    assert await asyncio.to_thread(server.stop) == 0
