"""History: what a broker keeps of each topic's recent publications, and how it is read.

A topic whose policy rule has ``history_size > 0`` keeps its last ``history_size``
publications for ``history_ttl`` seconds after the last one. Each publication on it gets
an *offset* (1 for the topic's first, then exactly +1 per publication) and carries the
topic's *epoch* (a string that changes whenever that topic's history was lost or reset:
Redis restarted without its data, the keys expired, a new memory broker). An
``(offset, epoch)`` pair is a :data:`Position` in a topic's stream; a client that
reconnects sends the last one it saw (``since`` in LISTEN) and gets what it missed
(:mod:`realtime.recovery`).

Brokers implement :meth:`realtime.broker.Broker.history` (the Redis broker through the
Redis Function library of :mod:`realtime.redis_functions`, the memory broker from
:class:`MemoryHistory`'s ring buffers). Pure logic, no I/O.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

MAX_EPOCH_LENGTH = 64
"""Longest epoch a client may send in ``since``, characters."""
NO_EPOCH = ""
"""The epoch a read answers for a topic without history (never published, expired, lost)."""
MAX_OFFSET = 2**53 - 1
"""Largest offset a client may send (the largest integer JSON numbers carry exactly)."""


class Position(NamedTuple):
    """A place in one topic's stream: the offset of a publication and the topic's epoch."""

    offset: int
    epoch: str


class Publication(NamedTuple):
    """One publication kept in history.

    Attributes:
        offset: its offset (1 for the topic's first in this epoch).
        message: the text sent to clients as ``data.message``.
    """

    offset: int
    message: str


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """The answer to a history read.

    Attributes:
        publications: those with an offset larger than the ``since`` asked for, oldest
            first, at most ``limit`` of them.
        offset: the topic's current offset (its last publication's; 0 when nothing was
            published in this epoch).
        epoch: the topic's current epoch.
        first: the smallest offset history still holds (``offset + 1`` when it holds none):
            a reader whose position is below ``first - 1`` has lost publications.
    """

    publications: list[Publication]
    offset: int
    epoch: str
    first: int

    def covers(self, since: Position) -> bool:
        """``True`` if every publication after ``since`` is still in history: same epoch
        (offset 0 means "from the first publication", in any epoch), not ahead of the
        stream, and not fallen out of it."""
        if since.offset == 0:
            return self.first == 1
        return since.epoch == self.epoch and self.first - 1 <= since.offset <= self.offset


def new_epoch() -> str:
    """A fresh epoch: 8 random hex digits (32 bits; only ever compared for equality with
    one topic's previous epoch)."""
    return secrets.token_hex(4)


@dataclass(slots=True)
class _Ring:
    epoch: str
    size: int
    ttl: int
    offset: int = 0
    expires: float = 0.0
    items: deque[Publication] = field(default_factory=deque)


class MemoryHistory:
    """In-process history for the memory broker: one ring buffer per topic.

    A topic's ring is created with a new epoch on its first publication (or read), keeps
    the last ``size`` publications and is dropped ``ttl`` seconds after its last
    publication. Rings are kept in one queue per ttl, oldest publication first, and every
    publish or read drops the expired ones at the heads: memory stays bounded by the
    topics published to within their ttl, at O(1) per call.
    """

    __slots__ = ("_by_ttl", "_clock", "_rings")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        """Args:
        clock: seconds, monotonic (a fake one in tests).
        """
        self._rings: dict[str, _Ring] = {}
        self._by_ttl: dict[int, OrderedDict[str, None]] = {}  # ttl -> topics, oldest first
        self._clock = clock

    def __len__(self) -> int:
        """Number of topics with history now."""
        return len(self._rings)

    def _expire(self, now: float) -> None:
        rings = self._rings
        for queue in self._by_ttl.values():
            while queue:
                topic = next(iter(queue))
                if rings[topic].expires > now:
                    break
                del queue[topic], rings[topic]

    def _ring(self, topic: str, size: int, ttl: int, now: float) -> _Ring:
        ring = self._rings.get(topic)
        if ring is None or ring.ttl != ttl:
            if ring is not None:  # the policy changed: start again
                del self._by_ttl[ring.ttl][topic]
            ring = self._rings[topic] = _Ring(new_epoch(), size, ttl, expires=now + ttl)
            self._by_ttl.setdefault(ttl, OrderedDict())[topic] = None
        elif ring.size != size:
            ring.size = size
            while len(ring.items) > size:
                ring.items.popleft()
        return ring

    def append(self, topic: str, message: str, *, size: int, ttl: int) -> Position:
        """Keep one publication; returns its position.

        Args:
            topic: the topic.
            message: the text sent to clients.
            size: publications kept for this topic (``history_size``, > 0).
            ttl: seconds its history lives after this publication (``history_ttl``, > 0).
        """
        now = self._clock()
        self._expire(now)
        ring = self._ring(topic, size, ttl, now)
        ring.offset += 1
        ring.items.append(Publication(ring.offset, message))
        if len(ring.items) > size:
            ring.items.popleft()
        ring.expires = now + ttl
        self._by_ttl[ttl].move_to_end(topic)
        return Position(ring.offset, ring.epoch)

    def read(self, topic: str, *, since: int, limit: int, size: int, ttl: int) -> HistoryPage:
        """The publications after offset ``since`` (at most ``limit``, oldest first) and the
        topic's current position. A topic without history answers offset 0 and the empty
        epoch :data:`NO_EPOCH`, and nothing is created (reads of ever new topics cannot fill
        memory)."""
        now = self._clock()
        self._expire(now)
        ring = self._rings.get(topic)
        if ring is None:
            return HistoryPage([], 0, NO_EPOCH, 1)
        items = ring.items
        first = items[0].offset if items else ring.offset + 1
        start = max(0, since - first + 1)
        picked = [items[i] for i in range(start, min(len(items), start + max(0, limit)))]
        return HistoryPage(picked, ring.offset, ring.epoch, first)
