"""The data layer: PostgreSQL through asyncpg.

Migrations (:mod:`db.migrate`), the pool (:mod:`db.pool`), users and API keys
(:mod:`db.users`, :mod:`db.apikeys`), login sessions (:mod:`db.sessions`), dreams
(:mod:`db.dreams`), the embedded server (:mod:`db.embedded`) and the CLI (:mod:`db.cli`).
Exceptions are in :mod:`db.errors` (root :class:`DatabaseError`).
"""

from __future__ import annotations

from db.errors import (
    Conflict,
    DatabaseError,
    DatabaseUnavailable,
    EmbeddedDatabaseError,
    MigrationError,
    NotFound,
    PendingMigrations,
)
from db.pool import Database, connect, connection, prepare

__all__ = [
    "Conflict",
    "Database",
    "DatabaseError",
    "DatabaseUnavailable",
    "EmbeddedDatabaseError",
    "MigrationError",
    "NotFound",
    "PendingMigrations",
    "connect",
    "connection",
    "prepare",
]
