"""API keys stored in the database: shown once, kept only as their SHA-256 hash.

A key is ``rtk_`` followed by 43 URL-safe characters (256 random bits). Its row keeps
the SHA-256 of the whole key, a short prefix (``rtk_`` + 8 characters, for people to tell
keys apart), its scopes, optional expiry, revocation time and last-use time.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from db.errors import NotFound
from db.users import User, get_user, parse_uuid, user_from_row

KEY_PREFIX = "rtk_"
#: ``last_used_at`` is written at most this often per key (saves a write per request).
LAST_USED_RESOLUTION = timedelta(seconds=60)
_DURATION = re.compile(r"^(\d+)([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One stored API key (never the secret).

    Attributes:
        id: the key's uuid (used to revoke it).
        user_id: the owner's uuid.
        prefix: the first characters of the key.
        scopes: the scopes the key may use (intersected with its user's scopes).
        created_at: creation time.
        expires_at: expiry, or ``None`` for never.
        revoked_at: revocation time, or ``None``.
        last_used_at: last successful use (to within a minute), or ``None``.
    """

    id: str
    user_id: str
    prefix: str
    scopes: frozenset[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


def parse_duration(text: str) -> timedelta:
    """Parse ``30d``, ``12h``, ``45m``, ``90s``, ``2w`` or plain seconds.

    Raises:
        ValueError: not a positive duration.
    """
    match = _DURATION.match(text.strip())
    if match is None or int(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a duration such as 30d, 12h, 45m or 90s")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def hash_key(secret: str) -> bytes:
    """SHA-256 of a key (what the database stores)."""
    return hashlib.sha256(secret.encode()).digest()


def _from_row(row: Any) -> ApiKey:
    return ApiKey(
        id=str(row["id"]),
        user_id=str(row["user_id"]),
        prefix=row["prefix"],
        scopes=frozenset(row["scopes"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        last_used_at=row["last_used_at"],
    )


async def create_api_key(
    conn: Any, *, user_id: str, scopes: Iterable[str] | None = None, expires_in: timedelta | None = None
) -> tuple[ApiKey, str]:
    """Create a key for an active user.

    Args:
        conn: an asyncpg connection.
        user_id: the owner.
        scopes: the key's scopes; ``None`` copies the user's current scopes.
        expires_in: lifetime, or ``None`` for a key that does not expire.

    Returns:
        ``(key, secret)``: show the secret once; only its hash is kept.

    Raises:
        NotFound: no such active user.
    """
    user = await get_user(conn, user_id)
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    row = await conn.fetchrow(
        "INSERT INTO api_keys (user_id, key_hash, prefix, scopes, expires_at) "
        "VALUES ($1, $2, $3, $4, now() + $5::interval) RETURNING *",
        parse_uuid(user.id),
        hash_key(secret),
        secret[: len(KEY_PREFIX) + 8],
        sorted(set(user.scopes if scopes is None else scopes)),
        expires_in,
    )
    return _from_row(row), secret


async def revoke_api_key(conn: Any, key_id: str) -> ApiKey:
    """Revoke a key now (idempotent: a revoked key keeps its first revocation time).

    Raises:
        NotFound: no such key.
    """
    row = await conn.fetchrow(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 RETURNING *", parse_uuid(key_id)
    )
    if row is None:
        raise NotFound(f"no API key {key_id}")
    return _from_row(row)


async def list_api_keys(conn: Any, user_id: str) -> list[ApiKey]:
    """A user's keys, oldest first."""
    rows = await conn.fetch("SELECT * FROM api_keys WHERE user_id = $1 ORDER BY created_at", parse_uuid(user_id))
    return [_from_row(r) for r in rows]


async def lookup_api_key(conn: Any, secret: str) -> tuple[ApiKey, User] | None:
    """The key and its user, if ``secret`` is a usable key; records the use.

    Unusable: unknown, revoked, expired, or its user is deleted.
    """
    if not secret.startswith(KEY_PREFIX):
        return None
    row = await conn.fetchrow(
        "SELECT k.id AS key_id, k.user_id, k.prefix, k.scopes AS key_scopes, k.created_at AS key_created_at, "
        "k.expires_at, k.revoked_at, k.last_used_at, u.* FROM api_keys k JOIN users u ON u.id = k.user_id "
        "WHERE k.key_hash = $1 AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now()) "
        "AND u.deleted_at IS NULL",
        hash_key(secret),
    )
    if row is None:
        return None
    await conn.execute(
        "UPDATE api_keys SET last_used_at = now() WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - $2::interval)",
        row["key_id"],
        LAST_USED_RESOLUTION,
    )
    key = ApiKey(
        id=str(row["key_id"]),
        user_id=str(row["user_id"]),
        prefix=row["prefix"],
        scopes=frozenset(row["key_scopes"]),
        created_at=row["key_created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        last_used_at=row["last_used_at"],
    )
    return key, user_from_row(row)
