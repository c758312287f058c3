"""Recent pages: what a read of history brought back, kept briefly for the next resumers.

After a deploy every client of a topic resumes within a few seconds, each with nearly the
same ``since``; without this each one arriving after the topic's first read finished would
start a read of its own (a reconnect storm measured 17-31 reads per topic). A page kept
here is extended by every live publication delivered after it, so it stays exact (every
offset from its first to the stream's position, one epoch) and a resumer whose ``since``
falls inside it is served without a read.

Bounded two ways: a page lives :data:`PAGE_SECONDS` after the read that made it, and all
pages together hold at most :data:`MAX_PUBLICATIONS` publications (the oldest page goes
first). Pure logic, no I/O.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from realtime.history import HistoryPage, Position, Publication

PAGE_SECONDS = 10.0
"""How long a page is kept after the read that made it, seconds."""
MAX_PUBLICATIONS = 100_000
"""Most publications kept over all pages (about 20 MB at 200 bytes each)."""


@dataclass(slots=True)
class _Page:
    epoch: str
    size: int
    until: float
    items: deque[Publication] = field(default_factory=deque)


class RecentPages:
    """Per topic: a run of consecutive publications ending at the stream's position."""

    __slots__ = ("_clock", "_count", "_max", "_pages", "_seconds")

    def __init__(
        self,
        *,
        seconds: float = PAGE_SECONDS,
        max_publications: int = MAX_PUBLICATIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Args:
        seconds: how long a page lives after :meth:`put`.
        max_publications: the bound over all pages.
        clock: seconds, monotonic.
        """
        self._pages: OrderedDict[str, _Page] = OrderedDict()  # oldest put first
        self._count = 0
        self._seconds = seconds
        self._max = max_publications
        self._clock = clock

    def __len__(self) -> int:
        """Publications kept now, over all pages."""
        return self._count

    def put(self, topic: str, epoch: str, items: list[Publication], size: int) -> None:
        """Keep ``items`` (consecutive offsets, oldest first, the last one the stream's
        position; at most ``size``, the topic's ``history_size``, are kept)."""
        self.drop(topic)
        if not items:
            return
        now = self._clock()
        page = _Page(epoch, size, now + self._seconds, deque(items[-size:]))
        self._pages[topic] = page
        self._count += len(page.items)
        pages = self._pages
        while pages:  # the expired, then the oldest over the bound
            oldest, first = next(iter(pages.items()))
            if first.until > now and self._count <= self._max:
                break
            self.drop(oldest)

    def extend(self, topic: str, offset: int, message: str) -> None:
        """A live publication was delivered at the stream's position ``offset``: add it to
        the topic's page (dropping the page if it is not the next offset, or has expired)."""
        page = self._pages.get(topic)
        if page is None:
            return
        if page.items[-1].offset + 1 != offset or page.until <= self._clock():
            self.drop(topic)
            return
        page.items.append(Publication(offset, message))
        if len(page.items) > page.size:
            page.items.popleft()
        else:
            self._count += 1

    def page(self, topic: str, since: Position) -> HistoryPage | None:
        """The publications after ``since``, as a read of history would answer, if a kept
        page covers it (same epoch, ``since`` from one before its first to its last)."""
        page = self._pages.get(topic)
        if page is None or page.epoch != since.epoch or page.until <= self._clock():
            return None
        items = page.items
        first, last = items[0].offset, items[-1].offset
        if not first - 1 <= since.offset <= last:
            return None
        picked = list(items)[since.offset - first + 1 :]
        return HistoryPage(picked, last, page.epoch, first)

    def drop(self, topic: str) -> None:
        """Forget the topic's page (its stream has a hole, or no listeners any more)."""
        page = self._pages.pop(topic, None)
        if page is not None:
            self._count -= len(page.items)

    def clear(self) -> None:
        """Forget every page (the broker had a gap: nothing is known to be consecutive)."""
        self._pages.clear()
        self._count = 0
