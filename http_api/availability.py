"""Database outages become 503s (not 500s): the caller may retry; nothing is half done.

Every change is one transaction, so a request that fails because PostgreSQL is down,
restarting, refusing connections or read-only (any of :data:`db.UNAVAILABLE`) changed
nothing. A database outage is logged (``database_unavailable``, a warning) and never
reported to Sentry: it is not a bug, and the request it failed may carry a password or a
session cookie.
"""

from __future__ import annotations

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from db import UNAVAILABLE
from http_api.api_error import ApiError

log = structlog.get_logger("http_api")


@web.middleware
async def database_unavailable_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Raise a 503 :class:`ApiError` (``unavailable``; ``SERVICE_UNAVAILABLE`` under
    ``/api/v1``) when the database is unavailable."""
    try:
        return await handler(request)
    except UNAVAILABLE as exc:
        log.warning("database_unavailable", path=request.path, error=type(exc).__name__)
        raise ApiError(
            503,
            "the database is unavailable; try again",
            sentence="The database is unavailable; nothing was changed. Try again.",
        ) from None
