"""When grants expire: one timer for the earliest expiry among all connections.

Every accepted grant (a LISTEN's token) ends at its ``exp``; the node asks this object to
wake it then, per connection, for the connection's earliest grant only. Shape: a heap of
``(exp, seq, key)`` entries beside ``key -> exp`` (the one live entry per connection);
entries superseded by an earlier expiry, or of connections that left, are skipped when
they surface and compacted away once they outnumber the live ones two to one (plus 64).
One event-loop timer is armed for the heap's top. Times are seconds since the epoch (the
clock of a token's ``exp``).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

OnDue = Callable[[K, float], float | None]
"""``on_due(key, now)``: end what expired on ``key``; returns ``key``'s next expiry
(seconds since the epoch), or ``None`` when it has none."""


class GrantExpiry(Generic[K]):
    """Calls ``on_due(key, now)`` once the earliest expiry scheduled for ``key`` is due."""

    __slots__ = ("_clock", "_heap", "_next", "_on_due", "_seq", "_timer")

    def __init__(self, on_due: OnDue[K], *, clock: Callable[[], float] = time.time) -> None:
        """Args:
        on_due: called with each key whose expiry is due (see :data:`OnDue`).
        clock: seconds since the epoch (injected by tests).
        """
        self._on_due = on_due
        self._clock = clock
        self._heap: list[tuple[float, int, K]] = []
        self._next: dict[K, float] = {}  # the live entry of each key
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        """Keys with a scheduled expiry."""
        return len(self._next)

    @property
    def entries(self) -> int:
        """Heap entries, stale ones included (at most ``2 * len(self) + 64`` after a
        :meth:`forget`)."""
        return len(self._heap)

    def schedule(self, key: K, exp: float) -> None:
        """Wake up for ``key`` at ``exp`` unless it is already woken up earlier (that wake-up
        asks ``on_due`` for the next expiry). Call from the event loop."""
        current = self._next.get(key)
        if current is not None and current <= exp:
            return
        self._next[key] = exp
        heap = self._heap
        heapq.heappush(heap, (exp, next(self._seq), key))
        if heap[0][2] is key:
            self._arm()

    def forget(self, key: K) -> None:
        """Never wake up for ``key`` again (it left)."""
        self._next.pop(key, None)
        if len(self._heap) > 2 * len(self._next) + 64:  # drop entries of keys that left
            self._heap = [(exp, next(self._seq), k) for k, exp in self._next.items()]
            heapq.heapify(self._heap)
            self._arm()

    def close(self) -> None:
        """Cancel the timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        self.close()
        if self._heap:
            delay = max(0.0, self._heap[0][0] - self._clock())
            self._timer = asyncio.get_running_loop().call_later(delay, self._expire_due)

    def _expire_due(self) -> None:
        self._timer = None
        now = self._clock()
        heap = self._heap
        while heap and heap[0][0] <= now:
            exp, _, key = heapq.heappop(heap)
            if self._next.get(key) != exp:
                continue  # stale: superseded by an earlier entry, or the key left
            del self._next[key]
            upcoming = self._on_due(key, now)
            if upcoming is not None:
                self._next[key] = upcoming
                heapq.heappush(heap, (upcoming, next(self._seq), key))
        self._arm()
