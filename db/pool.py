"""The connection pool (asyncpg).

Free of aiohttp: the app key (``http_api.appkeys.DATABASE``) and the cleanup context that opens
and closes the pool (``service.app.database_context``) live above the data layer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson

from db.errors import DatabaseUnavailable
from db.migrate import check_current, migrate


async def _init_connection(conn: Any) -> None:
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(
            kind, encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.loads, schema="pg_catalog"
        )


async def connect(url: str) -> Any:
    """One asyncpg connection with the JSON codecs (the caller closes it).

    Raises:
        DatabaseUnavailable: cannot connect; the message names ``DATABASE_URL``.
    """
    try:
        conn = await asyncpg.connect(url, timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise DatabaseUnavailable(f"cannot connect to the database at DATABASE_URL: {exc}") from None
    await _init_connection(conn)
    return conn


@asynccontextmanager
async def connection(url: str) -> AsyncIterator[Any]:
    """``async with connection(url) as conn``: one connection, closed at the end."""
    conn = await connect(url)
    try:
        yield conn
    finally:
        await conn.close()


class Database:
    """The pool of connections to PostgreSQL.

    Attributes:
        url: the ``DATABASE_URL`` (contains credentials: never log it).
    """

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10) -> None:
        self.url = url
        self._min, self._max = min_size, max_size
        self._pool: Any = None

    async def open(self) -> None:
        """Create the pool.

        Raises:
            DatabaseUnavailable: cannot connect; the message names ``DATABASE_URL``.
        """
        try:
            self._pool = await asyncpg.create_pool(
                self.url, min_size=self._min, max_size=self._max, init=_init_connection, timeout=10
            )
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise DatabaseUnavailable(f"cannot connect to the database at DATABASE_URL: {exc}") from None

    async def close(self) -> None:
        """Close the pool (waits for connections in use)."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> Any:
        """The asyncpg pool (``acquire()``, ``fetch``, ``fetchrow``, ``execute``...).

        Raises:
            DatabaseUnavailable: the pool is not open.
        """
        if self._pool is None:
            raise DatabaseUnavailable("the database pool is not open")
        return self._pool

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        """``async with db.acquire() as conn``: a pooled connection.

        Raises:
            DatabaseUnavailable: no connection could be had (PostgreSQL down, refusing
                connections, the pool closed...): whatever the cause, the database cannot
                be used now. Errors raised inside the block pass through unchanged.
        """
        pool = self.pool
        try:
            conn = await pool.acquire()
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise DatabaseUnavailable(f"no database connection: {type(exc).__name__}: {exc}") from exc
        try:
            yield conn
        finally:
            await pool.release(conn)


async def prepare(url: str, *, apply: bool) -> list[str]:
    """Before serving: apply pending migrations (``apply``) or refuse to serve with any.

    Returns:
        The names of the migrations applied (empty unless ``apply``).

    Raises:
        DatabaseUnavailable: cannot connect.
        PendingMigrations: migrations are pending and ``apply`` is false.
        MigrationError: a migration failed or an applied file changed.
    """
    async with connection(url) as conn:
        if apply:
            return [f"{m.version:04d}_{m.name}" for m in await migrate(conn)]
        await check_current(conn)
        return []
