"""Shared fixtures: keys, settings, an in-process app, the real Redis, WS helpers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp
import orjson
import pytest
import redis
import redis.asyncio as aioredis
from aiohttp import ClientWebSocketResponse, WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer

from keys import KeyStore, generate_key
from realtime.aiohttp_adapter import RealtimeRunner
from realtime.redis_functions import function_names
from realtime.settings import Settings, parse_api_keys
from service.app import create_app
from tests import procs
from tests.redis_cluster import LocalCluster, cluster_tools, local_cluster
from tests.skip_summary import pytest_terminal_summary  # noqa: F401 - a hook: why tests skipped, also under -q

USER_KEY = "user-key-0123456789abcdef"
PUBLISHER_KEY = "publisher-key-0123456789abcdef"
OTHER_KEY = "other-user-key-0123456789abcdef"
API_KEYS_JSON = orjson.dumps(
    [
        {"userId": 7, "apiKey": USER_KEY, "scopes": ["user:read:remote-control", "channel:read:predictions"]},
        {"userId": 8, "apiKey": OTHER_KEY, "scopes": ["user:read:remote-control"]},
        {"userId": "svc", "apiKey": PUBLISHER_KEY, "scopes": ["realtime:publish"]},
    ]
).decode()
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
CHAT_POLICY = """
[topics."remote-control:command"]
scope = "user:read:remote-control"
target = "self"
presence = true

[topics."chat:room:message"]
target = "any"
presence = true
join_leave = true

[topics."channel:update"]
target = "any"
"""
"""A topic policy for presence tests: presence on the remote-control topic, JOIN/LEAVE on a room."""


def auth(key: str) -> dict[str, str]:
    """The Authorization header for an API key."""
    return {"Authorization": f"Api-Key {key}"}


@pytest.fixture
def key_store(tmp_path: Path) -> KeyStore:
    """A fresh signing key in a temporary directory."""
    generate_key(tmp_path / "keys")
    return KeyStore.from_directory(tmp_path / "keys")


def redis_reachable(url: str = REDIS_URL) -> bool:
    """True if a TCP connection to the Redis in ``url`` succeeds."""
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 6379), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def redis_url() -> str:
    """The real Redis URL; fails (CI) or skips (local) when Redis is down."""
    if not redis_reachable():
        message = f"Redis is not reachable at {REDIS_URL}"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set: Redis tests must not skip)")
        pytest.skip(message)
    return REDIS_URL


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A real Redis Cluster of this test alone (tests/redis_cluster.py): 3 masters with 1
    replica each on free loopback ports, ``cluster-node-timeout`` 1000 ms; fails (CI) or
    skips (local) without ``redis-server`` and ``redis-cli``."""
    if cluster_tools() is None:
        message = "redis-server and redis-cli are needed for a Redis Cluster"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set: Redis Cluster tests must not skip)")
        pytest.skip(message)
    with local_cluster(tmp_path / "redis-cluster") as cluster:
        yield cluster


@pytest.fixture
def chat_policy(tmp_path: Path) -> str:
    """A ``TOPICS_FILE`` holding :data:`CHAT_POLICY`."""
    path = tmp_path / "topics.toml"
    path.write_text(CHAT_POLICY)
    return str(path)


@pytest.fixture
def channel() -> Iterator[str]:
    """A Redis channel of this test alone, so concurrent runs never collide; the history
    library a broker on it loaded into the shared Redis, and its keys, are deleted after."""
    name = f"realtime-test-{uuid.uuid4().hex}"
    yield name
    drop_channel(name)


def drop_channel(channel: str, url: str = REDIS_URL) -> None:
    """Delete ``channel``'s Redis Function library (libraries are global to a Redis server)
    and its keys, if Redis is up."""
    if not redis_reachable(url):
        return
    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        with contextlib.suppress(redis.ResponseError):  # never loaded
            client.function_delete(function_names(channel).library)
        keys = list(client.scan_iter(match=f"{channel}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain redis-py client on the real Redis (the 'backend service')."""
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


def make_settings(**overrides: Any) -> Settings:
    """Settings for tests: no environment, test API keys, then ``overrides``."""
    values: dict[str, Any] = {"api_keys": parse_api_keys(API_KEYS_JSON), "log_format": "json"}
    values.update(overrides)
    return Settings.from_env({}, **values)


AppFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


class RealtimeTestServer(TestServer):
    """aiohttp's test server with the production runner (our WebSocket protocol in front)."""

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        return RealtimeRunner(self.app, **kwargs)


@pytest.fixture
def make_client(aiohttp_client: Any, key_store: KeyStore) -> AppFactory:
    """Start the real app in-process on a loopback port: ``await make_client(**settings)``."""

    async def factory(**overrides: Any) -> TestClient[web.Request, web.Application]:
        client: TestClient[web.Request, web.Application] = await aiohttp_client(
            RealtimeTestServer(create_app(make_settings(**overrides), key_store=key_store))
        )
        return client

    return factory


async def ws_token(client: Any, key: str = USER_KEY, scope: str | None = None) -> str:
    """A WS token from ``/auth/ws``."""
    params = {"scope": scope} if scope is not None else {}
    resp = await client.post("/auth/ws", headers=auth(key), params=params)
    assert resp.status == 200, await resp.text()
    token: str = (await resp.json())["token"]
    return token


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client session, for tests that talk to spawned servers (closed at the end)."""
    async with aiohttp.ClientSession() as session:
        yield session


async def server_token(http: aiohttp.ClientSession, server: procs.Server, key: str = USER_KEY) -> str:
    """A WS token from a spawned server's ``/auth/ws``."""
    async with http.post(server.url + "/auth/ws", headers=auth(key)) as resp:
        assert resp.status == 200, await resp.text()
        value: str = (await resp.json())["token"]
        return value


async def send(ws: ClientWebSocketResponse, **frame: Any) -> None:
    """Send one JSON text frame."""
    await ws.send_str(orjson.dumps(frame).decode())


async def recv(ws: ClientWebSocketResponse, timeout: float = 3.0) -> dict[str, Any]:
    """Receive one JSON text frame (fails on close or timeout)."""
    msg = await ws.receive(timeout=timeout)
    assert msg.type is WSMsgType.TEXT, f"expected a text frame, got {msg.type} {msg.data!r} {msg.extra!r}"
    data: dict[str, Any] = orjson.loads(msg.data)
    return data


async def listen(
    ws: ClientWebSocketResponse, topics: list[str], token: str | None = None, nonce: str = "n"
) -> dict[str, Any]:
    """LISTEN and return the RESPONSE."""
    data: dict[str, Any] = {"topics": topics}
    if token is not None:
        data["auth_token"] = token
    await send(ws, type="LISTEN", nonce=nonce, data=data)
    return await recv(ws)


async def assert_silent(ws: ClientWebSocketResponse, timeout: float = 0.3) -> None:
    """Assert that no frame arrives within ``timeout`` seconds."""
    try:
        msg = await ws.receive(timeout=timeout)
    except TimeoutError:
        return
    raise AssertionError(f"expected silence, got {msg.type} {msg.data!r}")


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` until true or fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def kill_subscriber(redis_client: aioredis.Redis, name: str) -> None:
    """Drop one named subscriber connection (``CLIENT KILL ID``), leaving other runs' alone."""
    clients = await redis_client.client_list()
    ids = [c["id"] for c in clients if c.get("name") == name]
    assert ids, f"no Redis client named {name}"
    for client_id in ids:
        await redis_client.execute_command("CLIENT", "KILL", "ID", client_id)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[type[procs.Server]]:
    servers: list[procs.Server] = []

    class Tracked(procs.Server):
        def __init__(self, cwd: Path = tmp_path, env: dict[str, str] | None = None, port: int | None = None) -> None:
            super().__init__(cwd, env or {}, port)
            servers.append(self)

    yield Tracked
    for server in servers:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
