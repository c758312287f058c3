"""Preparing the database before ``realtime serve`` starts listening."""

from __future__ import annotations

import structlog

from db.pool import prepare

log = structlog.get_logger("db")

#: ``DATABASE_URL=none`` serves without a database (the realtime core only).
NO_DATABASE = "none"


async def prepare_database(database_url: str, *, migrate: bool) -> str:
    """Make the database ready to serve; returns the URL to serve with (``""``: none).

    With ``database_url`` empty or ``none`` it runs without a database (the realtime
    core only, no ``/api/v1``).

    Raises:
        db.DatabaseUnavailable: cannot connect.
        db.PendingMigrations: migrations are pending and ``migrate`` is false.
        db.MigrationError: a migration failed.
    """
    if database_url == NO_DATABASE:
        return ""
    if not database_url:
        return ""
    applied = await prepare(database_url, apply=migrate)
    if applied:
        log.info("migrations_applied", migrations=applied)
    return database_url
