"""Preparing the database before ``realtime serve`` starts listening."""

from __future__ import annotations

import asyncio

import structlog

from db.pool import prepare

log = structlog.get_logger("db")

#: ``DATABASE_URL=none`` serves without a database (the realtime core only).
NO_DATABASE = "none"


async def prepare_database(database_url: str, *, migrate: bool) -> str:
    """Make the database ready to serve; returns the URL to serve with (``""``: none).

    With ``database_url`` empty, an embedded PostgreSQL is started (data under
    ``./.data/``, migrations applied) and its URL returned. ``none`` runs without a
    database (the realtime core only: no users, database API keys or dream routes).

    Raises:
        db.DatabaseUnavailable: cannot connect.
        db.PendingMigrations: migrations are pending and ``migrate`` is false.
        db.MigrationError: a migration failed.
        db.EmbeddedDatabaseError: the embedded server could not start.
    """
    if database_url == NO_DATABASE:
        return ""
    if not database_url:
        from db.embedded import start_embedded

        database_url = await asyncio.to_thread(start_embedded)
        migrate = True  # our own private database: always bring it up to date
    applied = await prepare(database_url, apply=migrate)
    if applied:
        log.info("migrations_applied", migrations=applied)
    return database_url
