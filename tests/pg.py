"""PostgreSQL for tests: a database of this test run alone, created and dropped here.

``TEST_DATABASE_URL`` (else ``DATABASE_URL``, else ``postgresql://postgres@127.0.0.1:5432/test``)
is the admin connection; each run creates ``realtime_test_<hex>`` databases through it, so
parallel runs never collide. With ``CI`` set, a PostgreSQL that is down fails the tests.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from db.migrate import migrate
from db.pool import connection

ADMIN_URL = os.environ.get("TEST_DATABASE_URL") or os.environ.get(
    "DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
TABLES = ("sessions", "dream_votes", "dreams", "api_keys", "users")


def url_for(database: str) -> str:
    """``ADMIN_URL`` pointing at another database."""
    parts = urlsplit(ADMIN_URL)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


async def _admin(sql: str) -> None:
    try:
        conn = await asyncpg.connect(ADMIN_URL, timeout=5)
    except asyncpg.InvalidCatalogNameError:  # no `test` database: use the maintenance one
        conn = await asyncpg.connect(url_for("postgres"), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def create_database(*, migrated: bool) -> str:
    """Create a fresh database (migrated or empty); returns its URL.

    Fails (``CI`` set) or skips when PostgreSQL is down.
    """
    name = f"realtime_test_{uuid.uuid4().hex}"
    try:
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        message = f"PostgreSQL is not usable at {ADMIN_URL}: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set: PostgreSQL tests must not skip)")
        pytest.skip(message)
    url = url_for(name)
    if migrated:

        async def apply() -> None:
            async with connection(url) as conn:
                await migrate(conn)

        asyncio.run(apply())
    return url


def drop_database(url: str) -> None:
    """Drop a database made by :func:`create_database` (closing its connections)."""
    name = urlsplit(url).path.lstrip("/")
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def migrated_url() -> Iterator[str]:
    """A migrated database shared by one test module."""
    url = create_database(migrated=True)
    yield url
    drop_database(url)


@pytest.fixture
def empty_url() -> Iterator[str]:
    """An empty database of this test alone."""
    url = create_database(migrated=False)
    yield url
    drop_database(url)


@pytest.fixture
async def database_url(migrated_url: str) -> str:
    """The module's migrated database, emptied before the test."""
    async with connection(migrated_url) as conn:
        await conn.execute(f"TRUNCATE {', '.join(TABLES)} CASCADE")
    return migrated_url


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[Any]:
    """A connection to the test's (emptied) database."""
    async with connection(database_url) as c:
        yield c


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Wait until ``proc`` accepts TCP connections on ``port`` (fails if it exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else "process exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("server did not start")
