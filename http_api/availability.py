"""Database outages become 503s (not 500s): the caller may retry; nothing is half done.

Every change is one transaction, so a request that fails because PostgreSQL is down,
restarting, refusing connections or read-only changed nothing. A database outage is
logged (``database_unavailable``, a warning) and never reported to Sentry: it is not a
bug, and the request it failed may carry a password or a session cookie.
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

_pg = asyncpg.exceptions

#: Exceptions meaning "PostgreSQL cannot serve this now; the same request may work later".
#: Failing to get a connection at all (refused, timed out, ``ALLOW_CONNECTIONS false``,
#: too many clients, a closed pool) is :class:`db.DatabaseUnavailable`, raised by
#: ``Database.acquire``; the rest can happen to a query on a connection already held.
UNAVAILABLE = (
    DatabaseUnavailable,
    asyncpg.InterfaceError,  # the connection closed under the query
    _pg.PostgresConnectionError,  # 08: connection lost or refused
    _pg.OperatorInterventionError,  # 57: shutdown, restart, cannot connect now, query canceled
    _pg.InsufficientResourcesError,  # 53: too many connections, disk full, out of memory
    _pg.PostgresSystemError,  # 58: I/O error on the server
    _pg.InvalidCatalogNameError,  # 3D000: the database does not exist (yet, or any more)
    _pg.InvalidAuthorizationSpecificationError,  # 28: the role may not log in (now)
    _pg.ObjectNotInPrerequisiteStateError,  # 55: not accepting connections, lock not available
    _pg.ReadOnlySQLTransactionError,  # 25006: a standby (during a failover)
    _pg.TransactionRollbackError,  # 40: serialization failure, deadlock: rolled back, retry
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
