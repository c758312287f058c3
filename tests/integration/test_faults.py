"""Broker faults against real processes: a private redis-server that we stop and restart,
and a proxy in front of it that keeps answering but stops delivering."""

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

from tests.conftest import API_KEYS_JSON, PUBLISHER_KEY, assert_silent, auth, listen, recv, send
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
        server.url + "/publish", json={"topic": "channel:update.a", "message": message}, headers=auth(PUBLISHER_KEY)
    ) as resp:
        return resp.status


async def poll_status(http: aiohttp.ClientSession, url: str, expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while await status(http, url) != expected:
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_redis_outage_clients_stay_and_delivery_resumes(
    spawn: type[Server],
    private_redis: PrivateRedis,
    tmp_path: Path,
) -> None:
    server = spawn(env={"API_KEYS": API_KEYS_JSON, "REDIS_URL": private_redis.url, "SHUTDOWN_GRACE": "0"})
    async with aiohttp.ClientSession() as http, http.ws_connect(server.url + "/ws") as ws:
        assert (await listen(ws, ["channel:update.a"]))["error"] == ""
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
        assert gap == {"type": "GAP", "data": {"topics": ["channel:update.a"], "reason": "broker_reconnected"}}
        client = aioredis.from_url(private_redis.url)
        await client.publish("realtime", orjson.dumps({"topic": "channel:update.a", "message": "after"}))
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
        await listen(ws, ["channel:update.a"])
        private_redis.stop()
        private_redis.start()
        assert (await recv(ws, timeout=5))["type"] == "GAP"
        client = aioredis.from_url(private_redis.url)
        await client.publish("realtime", orjson.dumps({"topic": "channel:update.a", "message": "x"}))
        assert (await recv(ws))["data"]["message"] == "x"
        await client.aclose()
    assert await asyncio.to_thread(server.stop) == 0


GAP = {"type": "GAP", "data": {"topics": ["channel:update.a"], "reason": "broker_reconnected"}}


async def test_started_while_redis_is_down_no_false_accept_and_a_gap_once_subscribed(
    spawn: type[Server], private_redis: PrivateRedis
) -> None:
    # the attack: an instance starts without Redis and accepts LISTENs; when Redis comes up its
    # publisher connects at once, before the subscriber's next attempt (up to 1 s of backoff)
    private_redis.stop()
    server = spawn(env={"API_KEYS": API_KEYS_JSON, "REDIS_URL": private_redis.url, "SHUTDOWN_GRACE": "0"})
    async with aiohttp.ClientSession() as http, http.ws_connect(server.url + "/ws") as ws:
        assert (await listen(ws, ["channel:update.a"]))["error"] == ""
        assert await status(http, server.url + "/ready") == 503
        assert await status(http, server.url + "/health") == 200
        assert await publish_http(http, server, "down") == 503
        private_redis.start()
        accepted: list[str] = []
        refused = 0
        deadline = time.monotonic() + 10
        while len(accepted) < 3:  # publish from the moment Redis is back
            assert time.monotonic() < deadline, "publishing never resumed"
            message = f"m{len(accepted) + refused}"
            code = await publish_http(http, server, message)
            assert code in (202, 503), code
            if code == 202:
                accepted.append(message)
            else:
                refused += 1
        # every 202 reaches the listener, after the GAP that covers what it missed unsubscribed
        assert await recv(ws, timeout=5) == GAP
        for message in accepted:
            assert (await recv(ws))["data"]["message"] == message
        assert await status(http, server.url + "/ready") == 200
    log = server.log.read_text()
    assert '"redis_subscribed"' in log and '"late": true' in log
    assert await asyncio.to_thread(server.stop) == 0


async def test_no_202_while_not_subscribed_though_redis_takes_publications(
    spawn: type[Server], private_redis: PrivateRedis
) -> None:
    # deterministic form of the race above: a Redis user allowed to PUBLISH but not to SUBSCRIBE
    admin = aioredis.from_url(private_redis.url)
    await admin.execute_command("ACL", "SETUSER", "app", "on", ">app-password-0123", "~*", "&*", "+@all", "-subscribe")
    url = f"redis://app:app-password-0123@127.0.0.1:{private_redis.port}/0"
    server = await asyncio.to_thread(spawn, env={"API_KEYS": API_KEYS_JSON, "REDIS_URL": url, "SHUTDOWN_GRACE": "0"})
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(server.url + "/ws") as ws:
            assert (await listen(ws, ["channel:update.a"]))["error"] == ""
            async with http.post(
                server.url + "/publish", json={"topic": "channel:update.a", "message": "x"}, headers=auth(PUBLISHER_KEY)
            ) as resp:
                assert resp.status == 503
                assert "not subscribed" in (await resp.json())["message"]
            assert await admin.execute_command("PUBSUB", "NUMSUB", "realtime") == [b"realtime", 0]
            await admin.execute_command("ACL", "SETUSER", "app", "+subscribe")
            assert await recv(ws, timeout=5) == GAP  # the LISTEN was accepted before the subscription
            assert await publish_http(http, server, "now") == 202
            assert (await recv(ws))["data"]["message"] == "now"
    finally:
        await admin.aclose()
    assert await asyncio.to_thread(server.stop) == 0


def resp_end(buf: bytes, pos: int) -> int | None:
    """The index just past the RESP2/RESP3 reply that starts at ``pos``, or None if incomplete."""
    line_end = buf.find(b"\r\n", pos)
    if line_end < 0:
        return None
    kind, head = buf[pos : pos + 1], buf[pos + 1 : line_end]
    if kind in b"+-:_,(#":
        return line_end + 2
    count = int(head)
    if kind in b"$=!":
        end = line_end + 2 + (count + 2 if count >= 0 else 0)
        return end if len(buf) >= end else None
    pos = line_end + 2
    for _ in range(max(count, 0) * (2 if kind in b"%|" else 1)):  # maps and attributes: pairs
        end = resp_end(buf, pos)
        if end is None:
            return None
        pos = end
    return pos


class WedgingProxy:
    """A TCP proxy in front of a Redis. :meth:`wedge` makes the connections open at that moment
    drop every pub/sub message Redis pushes to them, while every reply (PONG included) still
    passes: a subscription that answers PING but no longer delivers (centrifugo #1189). New
    connections are served normally, as a resubscription after a failover would be."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.open: set[asyncio.StreamWriter] = set()
        self.wedged: set[asyncio.StreamWriter] = set()
        self.dropped = 0
        self.server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    def wedge(self) -> None:
        self.wedged |= self.open

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.open:
            writer.close()
        await self.server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.open.add(client_w)
        try:
            await asyncio.gather(self._up(client_r, redis_w), self._down(redis_r, client_w))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open.discard(client_w)
            for writer in (client_w, redis_w):
                writer.close()

    async def _up(self, client_r: asyncio.StreamReader, redis_w: asyncio.StreamWriter) -> None:
        while data := await client_r.read(65536):
            redis_w.write(data)
            await redis_w.drain()
        redis_w.close()

    async def _down(self, redis_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        buf = b""
        while data := await redis_r.read(65536):
            buf += data
            out, pos = [], 0
            while (end := resp_end(buf, pos)) is not None:  # forward whole replies only
                reply = buf[pos:end]
                if client_w in self.wedged and reply.startswith(b"*3\r\n$7\r\nmessage\r\n"):
                    self.dropped += 1
                else:
                    out.append(reply)
                pos = end
            buf = buf[pos:]
            client_w.write(b"".join(out))
            await client_w.drain()
        client_w.close()


@pytest.mark.slow
async def test_a_subscription_that_stops_delivering_is_renewed_with_a_gap(
    spawn: type[Server], private_redis: PrivateRedis
) -> None:
    proxy = WedgingProxy(private_redis.port)
    await proxy.start()
    env = {"REDIS_URL": proxy.url, "REDIS_PROBE_INTERVAL": "0.5", "REDIS_PROBE_TIMEOUT": "1", "SHUTDOWN_GRACE": "0"}
    # in a thread: the proxy runs on this loop, and the server subscribes through it as it starts
    server = await asyncio.to_thread(spawn, env=env | {"METRICS_ENABLED": "false"})  # the probe needs no metrics
    redis = aioredis.from_url(private_redis.url)

    async def publish(message: str) -> None:
        await redis.publish("realtime", orjson.dumps({"topic": "channel:update.a", "message": message}))

    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(server.url + "/ws") as ws:
            assert await status(http, server.url + "/ready") == 200
            assert (await listen(ws, ["channel:update.a"]))["error"] == ""
            await publish("before")
            assert (await recv(ws))["data"]["message"] == "before"
            await assert_silent(ws, 2.0)  # a quiet, healthy link: the probes come back, no false GAP
            proxy.wedge()
            await publish("lost")
            assert await recv(ws, timeout=6) == GAP  # probe unanswered: resubscribed, and said so
            assert proxy.dropped >= 2  # "lost" and the probe
            await publish("after")
            assert (await recv(ws))["data"]["message"] == "after"
            await send(ws, type="PING")
            assert await recv(ws) == {"type": "PONG"}
            assert await publish_http(http, server, "x") in (401, 403)  # no API keys here; not a 5xx
    finally:
        await redis.aclose()
        await proxy.close()
    log = server.log.read_text()
    assert log.count('"redis_link_stalled"') == 1 and log.count('"redis_reconnected"') == 1
    assert '"redis_link_silent"' not in log  # PING alone would never have noticed
    assert await asyncio.to_thread(server.stop) == 0
