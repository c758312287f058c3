"""Secrets never reach Sentry, proven end to end: a real server process reports to a real
HTTP ingest stand-in while its real PostgreSQL database refuses connections.

The database is the test's own (``realtime_test_<hex>``); only it is closed
(``ALLOW_CONNECTIONS false`` and ``pg_terminate_backend`` of its backends) and reopened.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp import web

from db.apikeys import create_api_key
from db.pool import connection
from db.sessions import set_password
from db.users import create_user
from tests.conftest import API_KEYS_JSON, USER_KEY, AppFactory, wait_for
from tests.pg import ADMIN_URL, create_database, drop_database
from tests.procs import Server, free_port

PASSWORD = "Tr0ub4dor&3-hunter2-zebra"  # a test user's password, looked for in every envelope


class Ingest:
    """A Sentry ingest stand-in: records every envelope (decompressed) sent to it."""

    def __init__(self) -> None:
        self.envelopes: list[bytes] = []
        self.port = free_port()
        self.dsn = f"http://public@127.0.0.1:{self.port}/1"
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=10 * 2**20)
        app.router.add_post("/api/{project}/envelope/", self._envelope)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _envelope(self, request: web.Request) -> web.Response:
        raw = await request.read()  # aiohttp undoes Content-Encoding (gzip, deflate; br with brotli)
        if raw[:2] == b"\x1f\x8b":  # still gzip (compressed twice, or not undone): open it
            raw = gzip.decompress(raw)
        assert raw.startswith(b"{"), raw[:20]  # an envelope starts with its JSON header
        self.envelopes.append(raw)
        return web.json_response({})

    def events(self) -> list[dict[str, object]]:
        """The error events received (envelope items of type ``event``)."""
        found = []
        for envelope in self.envelopes:
            lines = envelope.split(b"\n")
            for header, payload in zip(lines[1::2], lines[2::2], strict=False):
                if orjson.loads(header).get("type") == "event":
                    found.append(orjson.loads(payload))
        return found


@pytest.fixture
async def ingest() -> AsyncIterator[Ingest]:
    stand_in = Ingest()
    await stand_in.start()
    yield stand_in
    await stand_in.stop()


@pytest.fixture
def own_database() -> Iterator[str]:
    """A migrated database of this test alone (the only one ever closed here)."""
    url = create_database(migrated=True)
    yield url
    drop_database(url)


async def _admin(sql: str, *args: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL, timeout=5)
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


async def close_database(url: str) -> None:
    """Refuse new connections to the test's database and end the open ones."""
    name = urlsplit(url).path.lstrip("/")
    assert name.startswith("realtime_test_"), name  # never another database
    await _admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    await _admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)


async def open_database(url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    assert name.startswith("realtime_test_"), name
    await _admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


async def test_secrets_never_reach_sentry_during_an_outage_or_a_bug(
    ingest: Ingest, own_database: str, tmp_path: Path
) -> None:
    async with connection(own_database) as conn:
        user = await create_user(conn, name="Lu", email="lu@example.com", scopes=["user:read:remote-control"])
        await set_password(conn, user.id, PASSWORD)
        _, db_key = await create_api_key(conn, user_id=user.id)
    server = await asyncio.to_thread(
        Server,
        tmp_path,
        {"DATABASE_URL": own_database, "SENTRY_DSN": ingest.dsn, "API_KEYS": API_KEYS_JSON},
    )
    try:
        async with aiohttp.ClientSession(server.url) as http:
            login = {"email": "lu@example.com", "password": PASSWORD}
            async with http.post("/auth/login", json=login) as resp:
                assert resp.status == 200, await resp.text()
                cookie = resp.cookies["realtime_session"].value
            session = {"Cookie": f"realtime_session={cookie}"}
            async with http.post("/auth/ws", headers={"Authorization": f"Api-Key {USER_KEY}"}) as resp:
                ws_token = (await resp.json())["token"]
            secrets = {"password": PASSWORD, "cookie": cookie, "db key": db_key, "key": USER_KEY, "token": ws_token}

            await close_database(own_database)
            try:
                # a database outage is a 503 (not a captured 500), whatever the credential
                async with http.post("/auth/login", json=login, headers=session) as resp:
                    assert resp.status == 503, await resp.text()
                async with http.post("/auth/ws", headers=session) as resp:
                    assert resp.status == 503, await resp.text()
                async with http.post("/auth/ws", headers={"Authorization": f"Api-Key {db_key}"}) as resp:
                    assert resp.status == 503, await resp.text()
                deep = (
                    '{"email": "lu@example.com", "password": "' + PASSWORD + '", "x": ' + "[" * 1000 + "]" * 1000 + "}"
                )
                headers = {**session, "Content-Type": "application/json"}
                async with http.post("/auth/login", data=deep, headers=headers) as resp:
                    assert resp.status == 400, await resp.text()
            finally:
                await open_database(own_database)

            # a genuine bug while every secret is in flight: reported, and nothing of them
            async with connection(own_database) as conn:
                await conn.execute("ALTER TABLE sessions RENAME TO sessions_gone")
            headers = {**session, "Authorization": f"Api-Key {db_key}", "X-Api-Key": USER_KEY, "X-Token": ws_token}
            async with http.post(f"/auth/login?auth_token={ws_token}", json=login, headers=headers) as resp:
                assert resp.status == 500, await resp.text()
                assert (await resp.json())["error"] == "internal"
            await wait_for(lambda: bool(ingest.events()), timeout=10)
    finally:
        assert await asyncio.to_thread(server.stop) == 0  # the SDK flushes what it holds on exit

    events = ingest.events()
    errors = [value["type"] for e in events for value in e["exception"]["values"]]  # type: ignore[index]
    assert errors == ["UndefinedTableError"], errors  # the bug only: no outage, no bad body
    assert events[0]["request"]["url"].endswith("/auth/login")  # type: ignore[index]
    everything = b"\n".join(ingest.envelopes)
    for what, secret in secrets.items():
        assert secret.encode() not in everything, f"the {what} reached Sentry"
    log = server.log.read_text()
    assert PASSWORD not in log and cookie not in log and db_key not in log


async def test_a_client_hanging_up_mid_body_is_not_a_database_outage(own_database: str, tmp_path: Path) -> None:
    server = await asyncio.to_thread(Server, tmp_path, {"DATABASE_URL": own_database, "API_KEYS": API_KEYS_JSON})
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"email": "lu@example.com", "pass'
        )
        await writer.drain()
        writer.close()  # 70 of the 100 bytes never come
        await wait_for(lambda: "client_disconnected" in server.log.read_text(), timeout=5)
    finally:
        assert await asyncio.to_thread(server.stop) == 0
    log = server.log.read_text()
    assert "database_unavailable" not in log and "unhandled_error" not in log, log


async def test_a_read_only_database_is_a_503_not_a_bug(
    make_client: AppFactory, own_database: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """A standby during a failover answers reads and refuses writes (25006): retry later."""
    async with connection(own_database) as conn:
        user = await create_user(conn, name="Lu", email="lu@example.com", scopes=["user:read:remote-control"])
        await set_password(conn, user.id, PASSWORD)
    name = urlsplit(own_database).path.lstrip("/")
    await _admin(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    client = await make_client(database_url=own_database, login_attempts_per_account=1)
    for _ in range(3):  # an attempt the database could not judge is given back: 503s, never 429
        resp = await client.post("/auth/login", json={"email": "lu@example.com", "password": PASSWORD})
        assert resp.status == 503 and (await resp.json())["error"] == "unavailable"
    out = "".join(capfd.readouterr())
    assert "database_unavailable" in out and "unhandled_error" not in out
