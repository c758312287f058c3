"""Passwords (argon2id) and server-side login sessions.

A session id is 256 random bits (URL-safe base64) sent in a cookie; the database keeps
only its SHA-256, the user and the expiry.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import secrets
from datetime import timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from db.errors import NotFound
from db.users import User, normalize_email, parse_uuid, user_from_row

#: argon2id with argon2-cffi's defaults (RFC 9106 low-memory profile).
_HASHER = PasswordHasher()
MIN_PASSWORD_LENGTH = 8


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the email is unknown, so both failures cost the same time."""
    return _HASHER.hash("not a real password")


def hash_password(password: str) -> str:
    """An argon2id hash of ``password`` (PHC string).

    Raises:
        ValueError: shorter than :data:`MIN_PASSWORD_LENGTH`.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    return _HASHER.hash(password)


async def set_password(conn: Any, user_id: str, password: str) -> None:
    """Set an active user's password (ends their sessions).

    Raises:
        ValueError: the password is too short.
        NotFound: no such active user.
    """
    hashed = await asyncio.to_thread(hash_password, password)
    uid = parse_uuid(user_id)
    async with conn.transaction():
        done = await conn.fetchval(
            "UPDATE users SET password_hash = $2, updated_at = now() WHERE id = $1 AND deleted_at IS NULL RETURNING id",
            uid,
            hashed,
        )
        if done is None:
            raise NotFound(f"no user {user_id}")
        await conn.execute("UPDATE sessions SET ended_at = now() WHERE user_id = $1 AND ended_at IS NULL", uid)


async def check_password(conn: Any, email: str, password: str) -> User | None:
    """The active user with this email and password, else ``None``.

    Emails match when their :func:`~db.users.normalize_email` forms are equal (PostgreSQL's
    ``lower()`` only narrows the search through the index; rows stored before emails were
    normalized match too, found by the spelling typed). Unknown emails cost one argon2 verification too, so timing does
    not tell them apart. The verification (tens of milliseconds of CPU) runs in a thread,
    off the event loop.
    """
    wanted = normalize_email(email)
    # the typed spelling too: a row stored before normalization (``Straße``) is not found by
    # the case-folded form (``strasse``), whose lower() differs from the row's
    rows = await conn.fetch(
        "SELECT * FROM users WHERE lower(email) IN (lower($1), lower($2))"
        " AND deleted_at IS NULL AND password_hash IS NOT NULL",
        wanted,
        email,
    )
    matching = [r for r in rows if normalize_email(r["email"]) == wanted]
    typed = [r for r in matching if r["email"].lower() == email.lower()]  # two old rows: the typed one
    row = (typed or matching or [None])[0]
    stored = row["password_hash"] if row else await asyncio.to_thread(_dummy_hash)
    if not await asyncio.to_thread(_verify, stored, password):
        return None
    return None if row is None else user_from_row(row)


def _verify(stored: str, password: str) -> bool:
    try:
        return _HASHER.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def _hash_session(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode()).digest()


async def create_session(conn: Any, user_id: str, ttl: timedelta) -> str:
    """Start a session for ``user_id`` lasting ``ttl``; returns the session id (the cookie value)."""
    session_id = secrets.token_urlsafe(32)
    await conn.execute(
        "INSERT INTO sessions (id_hash, user_id, expires_at) VALUES ($1, $2, now() + $3::interval)",
        _hash_session(session_id),
        parse_uuid(user_id),
        ttl,
    )
    return session_id


async def session_user(conn: Any, session_id: str) -> User | None:
    """The active user of a live (not ended, not expired) session, else ``None``."""
    row = await conn.fetchrow(
        "SELECT u.* FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id_hash = $1 "
        "AND s.ended_at IS NULL AND s.expires_at > now() AND u.deleted_at IS NULL",
        _hash_session(session_id),
    )
    return None if row is None else user_from_row(row)


async def end_session(conn: Any, session_id: str) -> None:
    """End a session (no error if it is unknown or already ended)."""
    await conn.execute(
        "UPDATE sessions SET ended_at = now() WHERE id_hash = $1 AND ended_at IS NULL", _hash_session(session_id)
    )
