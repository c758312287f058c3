"""Schema migrations: plain, ordered, versioned SQL files in ``db/migrations/``.

A migration is a file ``NNNN_name.sql`` (``NNNN`` is its version, a positive integer;
versions are unique). :func:`migrate` takes a PostgreSQL session advisory lock, reads
which versions are recorded in ``schema_migrations``, and applies each pending file in
version order, each in its own transaction together with its ``schema_migrations`` row.
So a failed file leaves nothing behind, running twice applies nothing the second time,
and two processes migrating at once serialize on the lock (the second finds nothing
left to do).

Applied files are checksummed (SHA-256); a file edited after it was applied is reported
by :func:`status` and refused by :func:`migrate` and :func:`check_current`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from db.errors import MigrationError, PendingMigrations

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
#: ``pg_advisory_lock`` key of the migrator (an arbitrary constant: "realtime" in ASCII, truncated).
LOCK_KEY = 0x7265616C74696D65
_NAME = re.compile(r"^(\d{4,})_([a-z0-9_]+)\.sql$")
_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file.

    Attributes:
        version: its number (from the file name).
        name: the rest of the file name, without ``.sql``.
        sql: the file's text.
        checksum: SHA-256 of the text, hex.
    """

    version: int
    name: str
    sql: str
    checksum: str


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    """A migration and whether it is applied.

    Attributes:
        version: its number.
        name: its name.
        applied_at: when it was applied, or ``None`` if pending.
        modified: it was applied, but the file changed since.
    """

    version: int
    name: str
    applied_at: datetime | None
    modified: bool = False


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Read every migration file of ``directory``, in version order.

    Raises:
        MigrationError: a ``.sql`` file is not named ``NNNN_name.sql``, or two share a version.
    """
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise MigrationError(f"migration file {path.name} is not named NNNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"two migration files have version {version}")
        sql = path.read_text(encoding="utf-8")
        found[version] = Migration(version, match.group(2), sql, hashlib.sha256(sql.encode()).hexdigest())
    return [found[v] for v in sorted(found)]


async def _applied(conn: Any) -> dict[int, tuple[str, datetime]]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT version, checksum, applied_at FROM schema_migrations")
    return {row["version"]: (row["checksum"], row["applied_at"]) for row in rows}


async def status(conn: Any, migrations: list[Migration] | None = None) -> list[MigrationStatus]:
    """Every known migration with its state, in version order (read-only; no lock).

    Args:
        conn: an asyncpg connection.
        migrations: the migrations (default: :func:`load_migrations`).
    """
    applied = await _applied(conn)
    result = []
    for m in migrations if migrations is not None else load_migrations():
        checksum, at = applied.get(m.version, (None, None))
        result.append(MigrationStatus(m.version, m.name, at, modified=checksum is not None and checksum != m.checksum))
    return result


async def check_current(conn: Any, migrations: list[Migration] | None = None) -> None:
    """Raise unless every migration is applied and unchanged.

    Raises:
        PendingMigrations: some are pending (the message lists them and says how to apply them).
        MigrationError: an applied migration's file was edited.
    """
    states = await status(conn, migrations)
    _refuse_modified(states)
    pending = [f"{s.version:04d}_{s.name}" for s in states if s.applied_at is None]
    if pending:
        raise PendingMigrations(
            f"the database has {len(pending)} pending migration(s): {', '.join(pending)}. "
            "Run `realtime migrate`, or start with `realtime serve --migrate` to apply them."
        )


def _refuse_modified(states: list[MigrationStatus]) -> None:
    modified = [f"{s.version:04d}_{s.name}" for s in states if s.modified]
    if modified:
        raise MigrationError(f"applied migration(s) changed since they were applied: {', '.join(modified)}")


async def migrate(conn: Any, migrations: list[Migration] | None = None) -> list[Migration]:
    """Apply every pending migration, under the advisory lock.

    Args:
        conn: an asyncpg connection (not in a transaction).
        migrations: the migrations (default: :func:`load_migrations`).

    Returns:
        The migrations this call applied (empty when up to date).

    Raises:
        MigrationError: an applied file was edited, or a migration failed (its
            transaction was rolled back; the message names it and gives PostgreSQL's error).
    """
    todo = migrations if migrations is not None else load_migrations()
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
    try:
        await conn.execute(_TABLE)
        _refuse_modified(await status(conn, todo))
        applied = await _applied(conn)
        done = []
        for m in todo:
            if m.version in applied:
                continue
            await _apply_one(conn, m)
            done.append(m)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)


async def _apply_one(conn: Any, m: Migration) -> None:
    try:
        async with conn.transaction():
            await conn.execute(m.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                m.version,
                m.name,
                m.checksum,
            )
    except asyncpg.PostgresError as exc:
        raise MigrationError(f"migration {m.version:04d}_{m.name} failed and was rolled back: {exc}") from None
