"""Exceptions of the ``db`` package.

::

    DatabaseError
    ├── DatabaseUnavailable   cannot connect (message names DATABASE_URL)
    ├── MigrationError        a migration file is malformed, changed after it was applied, or failed
    │   └── PendingMigrations serving was refused: migrations are pending (use --migrate)
    ├── EmbeddedDatabaseError the embedded PostgreSQL could not start (set DATABASE_URL)
    ├── NotFound              no such row (or it is soft-deleted)
    └── Conflict              a unique value is taken (e.g. an email)

:data:`UNAVAILABLE` lists every exception meaning "PostgreSQL cannot serve this now".
"""

from __future__ import annotations

import asyncpg


class DatabaseError(Exception):
    """Base of the database errors; ``code`` is stable."""

    code = "database_error"


class DatabaseUnavailable(DatabaseError):
    """PostgreSQL cannot be reached."""

    code = "database_unavailable"


class MigrationError(DatabaseError):
    """A migration is malformed, was edited after being applied, or failed to apply."""

    code = "migration_error"


class PendingMigrations(MigrationError):
    """The database has migrations that are not applied yet."""

    code = "pending_migrations"


class EmbeddedDatabaseError(DatabaseError):
    """The embedded PostgreSQL could not start."""

    code = "embedded_database_error"


class NotFound(DatabaseError):
    """No such row, or it is soft-deleted."""

    code = "not_found"


class Conflict(DatabaseError):
    """A unique value is already taken."""

    code = "conflict"


_pg = asyncpg.exceptions

UNAVAILABLE: tuple[type[Exception], ...] = (
    DatabaseUnavailable,
    asyncpg.InterfaceError,  # the connection closed under the query
    # asyncpg's protocol state broken by a backend terminated mid-operation ("cannot switch to
    # state 12; another operation is in progress"): seen when pg_terminate_backend ends pooled
    # connections during an outage
    _pg.InternalClientError,
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
"""Exceptions meaning "PostgreSQL cannot serve this now; the same request may work later".

Every change is one transaction, so a request that failed with one of these changed
nothing. Failing to get a connection at all (refused, timed out, ``ALLOW_CONNECTIONS
false``, too many clients, a closed pool) is :class:`DatabaseUnavailable`, raised by
``Database.acquire``; the rest can happen to a query on a connection already held.
"""
