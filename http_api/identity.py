"""Callers backed by the database: database API keys, login sessions and upstream JWTs.

Each resolver returns a :class:`http_api.principal.Principal` for a database user, or
``None`` when the credential is not valid (unknown, expired, revoked, ended, or the user
is deleted). A database user's ``user_id`` is their uuid: the ``sub`` of their WS tokens.
"""

from __future__ import annotations

from aiohttp import web

from db.apikeys import lookup_api_key
from db.sessions import session_user
from db.users import User
from http_api.appkeys import DATABASE
from http_api.principal import Principal


def user_principal(user: User, kind: str, scopes: frozenset[str] | None = None) -> Principal:
    """The principal of a database user, with ``scopes`` (default: the user's granted scopes)."""
    return Principal(user.id, user.scopes if scopes is None else scopes, role=user.role, db_user=True, kind=kind)


async def api_key_principal(app: web.Application, secret: str) -> Principal | None:
    """The caller of a database API key, if usable.

    Its scopes are the user's granted scopes intersected with the key's scopes, so
    narrowing a user's grant also narrows every key they already hold.
    """
    if DATABASE not in app:
        return None
    async with app[DATABASE].acquire() as conn:
        found = await lookup_api_key(conn, secret)
    if found is None:
        return None
    key, user = found
    return user_principal(user, "db_api_key", user.scopes & key.scopes)


async def session_principal(app: web.Application, session_id: str) -> Principal | None:
    """The caller of a built-in login session cookie, if the session is live."""
    if DATABASE not in app or not session_id:
        return None
    async with app[DATABASE].acquire() as conn:
        user = await session_user(conn, session_id)
    return None if user is None else user_principal(user, "session")
