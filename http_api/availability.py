"""Database outages become 503s (not 500s): the caller may retry; nothing is half done.

Every change is one transaction, so a request that fails because PostgreSQL is down,
restarting or unreachable changed nothing.
"""

from __future__ import annotations

import asyncpg
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from db import DatabaseUnavailable
from http_api.envelope import fail
from http_api.errors import json_error

log = structlog.get_logger("http_api")

#: Exceptions meaning "PostgreSQL cannot serve this now".
UNAVAILABLE = (
    DatabaseUnavailable,
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InvalidCatalogNameError,
    asyncpg.exceptions.OperatorInterventionError,
)


@web.middleware
async def database_unavailable_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer 503 (the envelope under ``/api/v1``) when the database is unavailable."""
    try:
        return await handler(request)
    except UNAVAILABLE as exc:
        log.warning("database_unavailable", path=request.path, error=type(exc).__name__)
        if request.path.startswith("/api/v1/"):
            raise fail(503, "The database is unavailable; nothing was changed. Try again.") from None
        raise json_error(503, "the database is unavailable; try again") from None
