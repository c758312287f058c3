"""When a Redis subscriber link rests between reads: the decision, as pure logic.

A link with ``batch_interval`` (the server passes ``WRITE_INTERVAL``) may, after a read that
delivered publications here, stop reading until ``batch_interval`` seconds after that read
began (a *rest*): the publications that arrive meanwhile wait in the socket and are read,
fanned out and written in one pass. A rest has a fixed price: pausing and resuming the
socket, arming a timer and one more wake-up of the loop. Measured on the benchmark machine
(issue 17, ``python -m bench.routing``; docs/scaling.md) a rest cost ~50 us more than it saved
when it gathered two publications of one delivery each (250 publications/s: 2.7% of a core
paced against 2.0% read as they came), broke even at four (500/s), and saved a third of the
CPU at eight (1,000/s: 3.0-4.5% against 5.6%). What a rest saves is one wake-up per extra
publication gathered, plus, where the publications fan out wide, the socket writes their
frames merge into (one write per listener per rest instead of one per publication).

So :class:`ReadPacer` rests only where that pays: when the rest is expected to gather
:data:`REST_GATHERS` or more publications, or two or more that each reach
:data:`WIDE_FANOUT` or more local listeners. A quiet link (sparser than that) reads and
writes each publication as it comes, with no timer. The expected gathering is the largest of
the publications that arrived since the previous delivering read, in the current interval so
far, and in the previous interval (so one thin rest does not stop a stream's rests). No rest follows
a delivering read that came :data:`STREAM_GAP` intervals or more after the previous one (an
isolated publication, or a loop that stalled: its backlog is read at once).

A link receiving :data:`PACE_BELOW` bytes or more per interval never rests, and does not ask
for the end-of-batch flush either: a rest's arrivals must always fit in the socket buffer, so
that resting can neither cap throughput nor back data up into Redis (whose pub/sub output
limit would cut the link); the flush scheduler paces its writes instead.
"""

from __future__ import annotations

from typing import Final

PACE_BELOW: Final = 32768
"""The link rests only while it receives less than this many bytes per interval (in the
current and the previous interval): what arrives during one rest then fits easily in the
socket's receive buffer. 32 KiB per 8 ms is 4 MB/s."""

STREAM_GAP: Final = 1.25
"""A delivering read rests only if the previous one began less than this many intervals
before it: under a stream, paced reads come one interval (plus the timer's ~0.2 ms) apart; a
longer gap means an isolated publication or a loop that stalled."""

REST_GATHERS: Final = 4
"""Publications (of one delivery each) a rest must be expected to gather to pay for itself:
the break-even measured on the benchmark machine (module docstring)."""

WIDE_FANOUT: Final = 4
"""Frames per publication from which two publications per rest are enough: each listener's
frames then merge into one write, and the writes saved pay for the rest."""


class ReadPacer:
    """The read pacing of one subscriber link: it counts what each read brought and says
    after a read that delivered here whether, and until when, the link rests. Pure: times
    are passed in (:func:`time.monotonic` seconds), nothing is read or written."""

    __slots__ = (
        "_count", "_interval", "_last_delivery", "_previous_bytes", "_previous_count",
        "_window_bytes", "_window_count", "_window_start",
    )  # fmt: skip

    def __init__(self, interval: float) -> None:
        """Args:
        interval: the pacing interval, seconds (0: never rest).
        """
        self._interval = interval
        self._window_start = -1e9  # the current interval's start, its bytes and publications
        self._window_bytes = 0
        self._window_count = 0
        self._previous_bytes = 0  # the interval before it (0 when it ended more than an interval ago)
        self._previous_count = 0
        self._last_delivery = -1e9  # the start of the last read that delivered here
        self._count = 0  # publications since that read began (reads that delivered nothing included)

    def read(self, started: float, size: int, publications: int) -> bool:
        """Count one read: ``size`` bytes, ``publications`` of them on the data channels.

        Args:
            started: when the read began.
            size: bytes read.
            publications: data-channel publications the read carried (any topic).

        Returns:
            ``True`` if the link is quiet (under :data:`PACE_BELOW` bytes per interval), so it
            flushes at the end of this read and may rest (:meth:`rest_until`); ``False`` if it
            is busy: it keeps reading and the flush scheduler paces the writes.
        """
        interval = self._interval
        if started - self._window_start >= interval:
            recent = started - self._window_start < 2 * interval
            self._previous_bytes = self._window_bytes if recent else 0
            self._previous_count = self._window_count if recent else 0
            self._window_start, self._window_bytes, self._window_count = started, 0, 0
        self._window_bytes += size
        self._window_count += publications
        self._count += publications
        return interval > 0 and max(self._window_bytes, self._previous_bytes) < PACE_BELOW

    def rest_until(self, started: float, frames: int, publications: int) -> float | None:
        """After a quiet read that delivered here: whether the link rests (module docstring).

        Args:
            started: when the read began (as passed to :meth:`read`).
            frames: frames the read's publications queued here (at least 1).
            publications: data-channel publications the read carried.

        Returns:
            When to resume reading (``started + interval``: a read that took longer than the
            interval is followed by an immediate read), or ``None``: keep reading.
        """
        interval = self._interval
        gap = started - self._last_delivery
        count, self._count = self._count, 0
        self._last_delivery = started
        if gap >= STREAM_GAP * interval:
            return None
        expected = max(count, self._window_count, self._previous_count)
        need = 2 if frames >= WIDE_FANOUT * max(1, publications) else REST_GATHERS
        return started + interval if expected >= need else None
