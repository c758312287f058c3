"""Users: who they are, their role, and the scopes granted to their WS tokens."""

from __future__ import annotations

import unicodedata
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from db.errors import Conflict, NotFound

#: Roles, as in the e-dream backend.
ROLES = ("user-group", "creator-group", "admin-group")
USER = "user-group"
CREATOR = "creator-group"
ADMIN = "admin-group"

_COLUMNS = "id, name, email, role, scopes, issuer, subject, created_at, updated_at, deleted_at"


@dataclass(frozen=True, slots=True)
class User:
    """One user.

    Attributes:
        id: the uuid, as a string (the ``sub`` of the user's WS tokens).
        name: display name.
        email: unique if set, stored normalized (:func:`normalize_email`).
        role: one of :data:`ROLES`.
        scopes: the scopes the user's WS tokens may carry.
        issuer: the upstream identity provider (``iss``) that provisioned the user, if any.
        subject: the user's ``sub`` at that provider.
        created_at: creation time (UTC).
        updated_at: last change (UTC).
        deleted_at: soft-delete time, or ``None``.
    """

    id: str
    name: str
    email: str | None
    role: str
    scopes: frozenset[str]
    issuer: str | None
    subject: str | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None


def user_from_row(row: Any) -> User:
    """Build a :class:`User` from a row with the ``users`` columns."""
    return User(
        id=str(row["id"]),
        name=row["name"],
        email=row["email"],
        role=row["role"],
        scopes=frozenset(row["scopes"]),
        issuer=row["issuer"],
        subject=row["subject"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        deleted_at=row["deleted_at"],
    )


def normalize_email(email: str) -> str:
    """The one form of an email address that is stored, looked up and rate limited.

    Unicode NFKC, case-folded, NFKC again (idempotent: ``normalize_email(normalize_email(x))
    == normalize_email(x)``). Every place that compares emails uses this function, never
    ``str.lower()`` on one side and PostgreSQL's ``lower()`` on the other: the two disagree
    outside ASCII (``"İ"`` is ``"i"`` to PostgreSQL, ``"i\u0307"`` to Python), and such a
    disagreement let a login dodge the per-account limit.

    Args:
        email: an address as typed (any case, any Unicode form).

    Returns:
        The normalized address (may be longer than the input: NFKC expands some ligatures).
    """
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", email).casefold())


def parse_uuid(value: str) -> uuid.UUID:
    """Parse a uuid.

    Raises:
        NotFound: ``value`` is not a uuid (so no row can have it).
    """
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise NotFound(f"no such id: {value!r}") from None


async def create_user(
    conn: Any,
    *,
    name: str,
    scopes: Iterable[str],
    email: str | None = None,
    role: str = USER,
    issuer: str | None = None,
    subject: str | None = None,
) -> User:
    """Insert a user; the email is stored as :func:`normalize_email` makes it.

    Raises:
        ValueError: ``role`` is not one of :data:`ROLES`.
        Conflict: the email (or issuer+subject) is taken.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    try:
        row = await conn.fetchrow(
            f"INSERT INTO users (name, email, role, scopes, issuer, subject) VALUES ($1, $2, $3, $4, $5, $6) "  # noqa: S608
            f"RETURNING {_COLUMNS}",
            name,
            None if email is None else normalize_email(email),
            role,
            sorted(set(scopes)),
            issuer,
            subject,
        )
    except asyncpg.UniqueViolationError:
        raise Conflict("a user with this email (or external identity) already exists") from None
    return user_from_row(row)


async def get_user(conn: Any, user_id: str) -> User:
    """The active (not deleted) user ``user_id``.

    Raises:
        NotFound: no such active user.
    """
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM users WHERE id = $1 AND deleted_at IS NULL",  # noqa: S608
        parse_uuid(user_id),
    )
    if row is None:
        raise NotFound(f"no user {user_id}")
    return user_from_row(row)


async def list_users(conn: Any, *, include_deleted: bool = False) -> list[User]:
    """Every user, oldest first."""
    where = "" if include_deleted else "WHERE deleted_at IS NULL"
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM users {where} ORDER BY created_at, id")  # noqa: S608
    return [user_from_row(r) for r in rows]


async def delete_user(conn: Any, user_id: str) -> None:
    """Soft-delete a user (their API keys and sessions stop working).

    Raises:
        NotFound: no such active user.
    """
    done = await conn.fetchval(
        "UPDATE users SET deleted_at = now(), updated_at = now() WHERE id = $1 AND deleted_at IS NULL RETURNING id",
        parse_uuid(user_id),
    )
    if done is None:
        raise NotFound(f"no user {user_id}")


async def provision_external(
    conn: Any, *, issuer: str, subject: str, name: str, email: str | None, scopes: Iterable[str]
) -> User:
    """The user of an upstream identity (``iss``, ``sub``), created as ``user-group`` on first sight.

    Safe under concurrency: two first requests for one identity make one user. If the
    email is already taken by another user, the new user is created without one.

    Raises:
        NotFound: the identity's user exists but was deleted.
    """
    query = f"SELECT {_COLUMNS} FROM users WHERE issuer = $1 AND subject = $2"  # noqa: S608
    row = await conn.fetchrow(query, issuer, subject)
    if row is None:
        for mail in (email, None) if email else (None,):
            try:
                await create_user(conn, name=name, email=mail, scopes=scopes, issuer=issuer, subject=subject)
                break
            except Conflict:
                continue
        row = await conn.fetchrow(query, issuer, subject)
    if row is None or row["deleted_at"] is not None:
        raise NotFound("this identity's user was deleted")
    return user_from_row(row)
