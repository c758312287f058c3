"""Exceptions of the ``db`` package.

::

    DatabaseError
    ├── DatabaseUnavailable   cannot connect (message names DATABASE_URL)
    ├── MigrationError        a migration file is malformed, changed after it was applied, or failed
    │   └── PendingMigrations serving was refused: migrations are pending (use --migrate)
    ├── EmbeddedDatabaseError the embedded PostgreSQL could not start (set DATABASE_URL)
    ├── NotFound              no such row (or it is soft-deleted)
    └── Conflict              a unique value is taken (e.g. an email)
"""

from __future__ import annotations


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
