"""The authenticated caller of an HTTP request."""

from __future__ import annotations

from dataclasses import dataclass

#: ``Principal.kind`` values.
KINDS = ("env_api_key", "db_api_key", "jwt", "session")


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    Attributes:
        user_id: the user id (becomes the WS token's ``sub``); a database user's uuid.
        scopes: what the caller may grant to a WS token or do over HTTP.
        role: the database user's role (``user-group``, ``creator-group``,
            ``admin-group``), ``None`` for keys from ``API_KEYS``.
        db_user: ``user_id`` is a row of the ``users`` table.
        kind: how the caller authenticated, one of :data:`KINDS`.
    """

    user_id: str
    scopes: frozenset[str]
    role: str | None = None
    db_user: bool = False
    kind: str = "env_api_key"
