"""The revoked WS tokens one instance remembers, so a revoked token is refused on LISTEN.

Every instance applies the same revocation control messages (see
:meth:`realtime.node.Node.on_control`) and keeps them in a :class:`RevocationTable`:

- by ``jti`` (one token; with an owner ``sub`` when a user revoked their own token, which
  then matches only that user's token with that ``jti``), or
- by ``sub`` (every token of that user issued at or before the revocation).

Guarantees:

- A revocation is never undone by other revocations: nothing is evicted. An entry lives
  exactly as long as a token it covers can be valid (``lifetime``: the token lifetime plus
  a margin for clocks between instances, counted from the revocation), then it is forgotten.
- A full table refuses new entries (:meth:`RevocationTable.refusal` says why, before the
  revocation is sent). Revocations by callers without the ``realtime:revoke`` scope
  ("limited") may fill the table only up to ``capacity - reserve`` and at most
  ``per_user`` live entries per user, so users cannot crowd out an administrator.
- Adding an entry is O(log n) (a heap of expiries beside dicts); checking a token is two
  or three dict lookups.

Pure logic, no I/O.
"""

from __future__ import annotations

import heapq
import itertools

from keys import Grant
from realtime.errors import RevocationRefused

MAX_REVOCATIONS = 100_000
"""Default capacity: revocations one instance remembers at most (~300 bytes each;
``MAX_REVOCATIONS``)."""
MAX_REVOCATIONS_PER_USER = 100
"""Default live revocations of their own tokens by ``jti`` one user may have (by ``sub``: one
entry; ``MAX_REVOCATIONS_PER_USER``)."""
CLOCK_MARGIN = 60.0
"""Seconds added to the token lifetime: instances' clocks may differ by this much."""

_JtiKey = tuple[str, str | None]  # (jti, owner sub or None)


class RevocationTable:
    """Revoked tokens by ``jti`` and by ``sub`` (see the module docstring).

    Times are seconds since the epoch.
    """

    __slots__ = ("_capacity", "_heap", "_jtis", "_lifetime", "_own", "_per_user", "_reserve", "_seq", "_subs")

    def __init__(
        self,
        *,
        lifetime: float,
        capacity: int = MAX_REVOCATIONS,
        reserve: int | None = None,
        per_user: int = MAX_REVOCATIONS_PER_USER,
    ) -> None:
        """Args:
        lifetime: seconds an entry is kept after its revocation (the longest token
            lifetime plus :data:`CLOCK_MARGIN`).
        capacity: most entries.
        reserve: entries only unlimited callers may fill (default: a tenth of ``capacity``).
        per_user: live ``jti`` entries of one user's own.
        """
        self._lifetime = lifetime
        self._capacity = capacity
        self._reserve = capacity // 10 if reserve is None else min(reserve, capacity)
        self._per_user = per_user
        self._jtis: dict[_JtiKey, float] = {}  # -> forget after
        self._subs: dict[str, tuple[float, float]] = {}  # sub -> (revoked at, forget after)
        self._own: dict[str, int] = {}  # sub -> live (jti, sub) entries
        self._heap: list[tuple[float, int, _JtiKey | str]] = []  # (forget after, seq, key); may hold stale entries
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._jtis) + len(self._subs)

    def covers(self, grant: Grant) -> bool:
        """Whether the token behind ``grant`` is revoked."""
        jtis = self._jtis
        if (grant.jti, None) in jtis or (grant.jti, grant.sub) in jtis:
            return True
        by_sub = self._subs.get(grant.sub)
        return by_sub is not None and grant.iat <= by_sub[0]

    def refusal(self, *, jti: str | None, sub: str | None, limited: bool, now: float) -> RevocationRefused | None:
        """Why a new revocation would not be remembered, or ``None`` if it would.

        Args:
            jti: the token id, or ``None`` for a revocation by ``sub``.
            sub: the user (with ``jti``: the owner the token must have).
            limited: the caller lacks ``realtime:revoke`` (the reserve and the per-user bound apply).
            now: the current time.
        """
        self.expire(now)
        if jti is None and sub is not None and sub in self._subs:
            return None  # replaces its entry
        if jti is not None and (jti, sub) in self._jtis:
            return None
        if limited and jti is not None and sub is not None and self._own.get(sub, 0) >= self._per_user:
            return RevocationRefused(
                f"at most {self._per_user} revocations of your own tokens by jti are kept at once; "
                "revoke by sub to end all of them",
                full=False,
            )
        room = self._capacity - (self._reserve if limited else 0)
        if len(self) >= room:
            return RevocationRefused(
                f"the revocation table is full ({len(self)} entries live); try again later", full=True
            )
        return None

    def add(self, *, jti: str | None, sub: str | None, at: float, now: float) -> bool:  # noqa: C901 - by jti or sub, each new or newer
        """Remember a revocation made at ``at``; ``False`` when the table is full (it was not
        remembered: nothing is ever evicted for it).

        Raises:
            ValueError: neither ``jti`` nor ``sub``.
        """
        self.expire(now)
        forget_after = min(at, now) + self._lifetime
        key: _JtiKey | str
        if jti is not None:
            key = (jti, sub)
            previous = self._jtis.get(key)
            if previous is None:
                if len(self) >= self._capacity:
                    return False
                if sub is not None:
                    self._own[sub] = self._own.get(sub, 0) + 1
            elif previous >= forget_after:
                return True
            self._jtis[key] = forget_after
        elif sub is not None:
            key = sub
            current = self._subs.get(sub)
            if current is None and len(self) >= self._capacity:
                return False
            if current is not None:
                at, forget_after = max(at, current[0]), max(forget_after, current[1])
            self._subs[sub] = (at, forget_after)
            if current is not None and current[1] == forget_after:
                return True
        else:
            raise ValueError("a revocation needs a jti or a sub")
        heapq.heappush(self._heap, (forget_after, next(self._seq), key))
        if len(self._heap) > 2 * len(self) + 64:
            self._compact()
        return True

    def expire(self, now: float) -> int:
        """Forget the entries whose time is up; returns how many (O(log n) each)."""
        heap, dropped = self._heap, 0
        while heap and heap[0][0] <= now:
            forget_after, _, key = heapq.heappop(heap)
            if isinstance(key, tuple):
                if self._jtis.get(key) == forget_after:
                    del self._jtis[key]
                    owner = key[1]
                    if owner is not None:
                        left = self._own[owner] - 1
                        if left:
                            self._own[owner] = left
                        else:
                            del self._own[owner]
                    dropped += 1
            else:
                current = self._subs.get(key)
                if current is not None and current[1] == forget_after:
                    del self._subs[key]
                    dropped += 1
        return dropped

    def _compact(self) -> None:
        """Rebuild the heap from the live entries (drops superseded ones)."""
        seq = self._seq
        heap: list[tuple[float, int, _JtiKey | str]] = [(t, next(seq), k) for k, t in self._jtis.items()]
        heap += [(v[1], next(seq), s) for s, v in self._subs.items()]
        heapq.heapify(heap)
        self._heap = heap
