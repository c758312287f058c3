"""Per-user connection slots: ``MAX_CONNECTIONS_PER_USER``.

A connection takes a slot of a user (a token's ``sub``) with its first LISTEN granted to
that user, and frees it when it holds no topic granted to them any more (UNLISTEN,
expiry, revocation) or closes. Shape: ``sub -> {connection}`` beside ``connection ->
[sub]`` (one connection may hold slots of several users). The node also asks which
connections hold a user's slot, to end their grants when the user's tokens are revoked.
Pure logic, no I/O.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class UserSlots(Generic[K]):
    """At most ``max_per_user`` connections per user (0: no limit, slots still tracked)."""

    __slots__ = ("_by_conn", "_by_user", "_max")

    def __init__(self, max_per_user: int = 0) -> None:
        """Args:
        max_per_user: connections one ``sub`` may LISTEN on (0: no limit).
        """
        self._max = max_per_user
        self._by_user: dict[str, set[K]] = {}
        self._by_conn: dict[K, list[str]] = {}

    def admit(self, key: K, sub: str) -> bool:
        """Take a slot of ``sub`` for ``key``; ``False`` when they are all taken (a
        connection that already holds one is admitted again)."""
        conns = self._by_user.setdefault(sub, set())
        if key in conns:
            return True
        if self._max and len(conns) >= self._max:
            if not conns:
                del self._by_user[sub]
            return False
        conns.add(key)
        self._by_conn.setdefault(key, []).append(sub)
        return True

    def release(self, key: K, sub: str) -> None:
        """Free ``key``'s slot of ``sub`` (nothing if it holds none)."""
        subs = self._by_conn.get(key)
        if subs is not None and sub in subs:
            subs.remove(sub)
            if not subs:
                del self._by_conn[key]
        conns = self._by_user.get(sub)
        if conns is not None:
            conns.discard(key)
            if not conns:
                del self._by_user[sub]

    def release_all(self, key: K) -> None:
        """Free every slot ``key`` holds (it closed)."""
        for sub in list(self._by_conn.get(key, ())):
            self.release(key, sub)

    def holders(self, sub: str) -> list[K]:
        """The connections holding a slot of ``sub`` now (a copy)."""
        return list(self._by_user.get(sub, ()))
