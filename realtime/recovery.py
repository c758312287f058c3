"""Recovery: a client or the instance itself gets what it missed on topics with history.

For every topic with history (:mod:`realtime.history`) that has local listeners, the node
keeps a :class:`_Stream`: the last offset and the epoch delivered to this instance's
listeners. A live publication (:meth:`Recovery.on_publication`) is

- delivered when it is the next offset (or the first this instance sees);
- dropped when its offset was delivered already (a duplicate);
- held back when it leaves a hole (this instance missed some): a *hold* read of history
  fills the hole, then the held publications follow, in offset order.

A connection that LISTENs with ``since`` (:meth:`Recovery.listen`) is not added to the topic
index at once. A read of history is started (or an in-flight one joined); publications
arriving meanwhile are kept in the read's buffer. When the read returns, which the broker
guarantees happens only after every publication it covers reached this instance
(:meth:`realtime.broker.Broker.history`), the connection gets, in one event-loop step,
the publications after its offset from history and the buffer merged by offset, and joins
the index: so no publication is missed or doubled at the seam. What a read brought back is
kept for a few seconds and extended by live publications (:mod:`realtime.recent`), so the
connections that resume on that topic next (a reconnect storm) are served without a read. If history cannot cover its
position (another epoch, an offset fallen out of history or ahead of it), it gets
``GAP`` with reason ``history_lost`` and then the live stream only.

After the broker resubscribes (:meth:`Recovery.on_gap`), every stream with listeners is
caught up by a hold read from its last offset; ``GAP`` goes only where history cannot
cover the hole. Reads that fail are retried with backoff while the broker is receiving
(at most :data:`MAX_ATTEMPTS`), and after it resubscribes otherwise.

Messages to a connection are queued after the RESPONSE to its LISTEN: everything here is
sent from a task or a ``call_soon`` callback, never from inside ``Session.receive``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from dataclasses import dataclass, field

import structlog

from realtime.broker import Broker
from realtime.errors import BrokerUnavailable
from realtime.history import MAX_OFFSET, NO_EPOCH, HistoryPage, Position, Publication
from realtime.limits import TokenBucket
from realtime.protocol import GAP_BROKER_RECONNECTED, GAP_HISTORY_LOST, gap_payload, message_payload
from realtime.recent import RecentPages
from realtime.send_queue import SendQueue, encode_text_frame
from realtime.stats import RecoveryStats
from realtime.topic_index import TopicIndex
from topics import Topic, TopicRule

log = structlog.get_logger("realtime.recovery")

MAX_ATTEMPTS = 5
"""Failed reads of one topic's history (while the broker receives) before its waiting
connections get ``GAP`` and the live stream."""
RETRY_DELAY = 0.2
"""Wait before the first retry of a failed read, seconds (doubles per attempt)."""
MAX_BUFFER = 10_000
"""Most live publications one topic's read keeps aside; past it the read gives up (GAP)."""
LEARN_RATE = 1000.0
"""Reads per second, per instance, that learn the position of a topic a client LISTENs to
without ``since`` (burst: twice that). Each is one call into Redis; a client LISTENing to
ever new public topics would otherwise turn its LISTEN rate into Redis load. Past it, a
topic's position is learned from its first live publication, and a broker gap before that
gets ``GAP`` (``broker_reconnected``) instead of recovery."""
_LEARN = MAX_OFFSET + 1
"""The ``since`` of a read that only learns a topic's position (no publications)."""


@dataclass(slots=True)
class _Read:
    """One read of a topic's history in flight.

    Attributes:
        since: the offset it reads after (:data:`_LEARN`: position only).
        hold: the index's listeners wait for it (this instance's stream has a hole).
        buffer: live publications that arrived meanwhile, ``(offset, epoch, message)``.
        waiting: connections that LISTENed with ``since`` and join the index after it.
        again: a gap happened while it was out: its answer may not cover it, read again.
    """

    since: int
    hold: bool
    buffer: list[tuple[int, str, str]] = field(default_factory=list)
    waiting: dict[SendQueue, Position] = field(default_factory=dict)
    again: bool = False
    attempts: int = 0


@dataclass(slots=True)
class _Stream:
    """This instance's place in one topic's stream.

    Attributes:
        rule: the topic's policy rule (its history size and ttl).
        position: the last offset delivered to the index's listeners (or the current one
            a read found); meaningful once ``epoch`` is known.
        epoch: the epoch of ``position``; ``None`` until a read or a publication told it.
        read: the read in flight, if any.
        later: connections whose ``since`` the read in flight does not cover; they get the
            next read.
    """

    rule: TopicRule
    position: int = 0
    epoch: str | None = None
    read: _Read | None = None
    later: dict[SendQueue, Position] = field(default_factory=dict)


class Recovery:
    """The streams of one node's topics with history; see the module docstring.

    Attributes:
        stats: reads, publications recovered, GAPs sent for lost history, duplicates dropped.
    """

    def __init__(
        self,
        broker: Broker,
        index: TopicIndex[SendQueue],
        *,
        retry_delay: float = RETRY_DELAY,
        learn_rate: float = LEARN_RATE,
    ) -> None:
        """Args:
        broker: reads history (:meth:`realtime.broker.Broker.history`).
        index: the node's topic index (connections join it here when recovered).
        retry_delay: wait before the first retry of a failed read, seconds (doubles per
            attempt, at most 2 s).
        learn_rate: reads per second (burst twice that) that learn a new topic's position
            (see :data:`LEARN_RATE`).
        """
        self._retry_delay = retry_delay
        self._learn_budget = TokenBucket(learn_rate, 2 * learn_rate)
        self._broker = broker
        self._index = index
        self._streams: dict[str, _Stream] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._recent = RecentPages()
        self.stats = RecoveryStats()

    def __contains__(self, topic: str) -> bool:
        """``True`` if ``topic`` has history and local listeners (or connections waiting)."""
        return topic in self._streams

    def close(self) -> None:
        """Cancel the reads in flight."""
        for task in self._tasks:
            task.cancel()

    # -- LISTEN / UNLISTEN ------------------------------------------------------------

    def listen(self, conn: SendQueue, topic: Topic, rule: TopicRule, since: Position | None) -> None:
        """``conn`` LISTENs to ``topic``: join the index now, or after a read of history."""
        if not rule.has_history:
            self._index.add(topic, conn)
            if since is not None:  # after the RESPONSE, which the caller queues next
                asyncio.get_running_loop().call_soon(self._gap, [conn], topic)
            return
        stream = self._streams.get(topic)
        if stream is None:
            stream = self._streams[topic] = _Stream(rule)
            if since is None:
                self._learn(topic, stream)
        if since is None:
            self._index.add(topic, conn)
            return
        read = stream.read
        if read is None and since.epoch == stream.epoch and since.offset == stream.position:
            self._index.add(topic, conn)  # nothing missed
        elif read is not None and since.offset >= read.since:
            read.waiting[conn] = since
        elif read is not None:
            stream.later[conn] = since
        elif (page := self._recent.page(topic, since)) is not None:
            self._serve_recent(topic, stream, page).waiting[conn] = since
        else:
            self._start(topic, stream, since.offset, hold=False).waiting[conn] = since

    def unlisten(self, conn: SendQueue, topic: Topic) -> None:
        """``conn`` no longer listens to ``topic`` (UNLISTEN, expiry, revocation, close)."""
        self._index.discard(topic, conn)
        stream = self._streams.get(topic)
        if stream is None:
            return
        stream.later.pop(conn, None)
        if stream.read is not None:
            stream.read.waiting.pop(conn, None)
            if stream.read.waiting or stream.later:
                return
        if self._index.get(topic) is None and not stream.later:
            del self._streams[topic]  # a read in flight finds it gone and does nothing
            self._recent.drop(topic)

    # -- the broker's events --------------------------------------------------------

    def on_publication(self, topic: str, message: str, offset: int, epoch: str) -> int:
        """A live publication with an offset: deliver, drop as a duplicate, or hold back.

        Returns:
            How many listeners it was queued to now (0 when held back or dropped).
        """
        stream = self._streams.get(topic)
        if stream is None:
            return 0
        read = stream.read
        if read is not None:
            read.buffer.append((offset, epoch, message))
            if len(read.buffer) > MAX_BUFFER:
                self._give_up(topic, stream, read, "buffer full")
                # not read: the live stream after the GAP starts with this publication
                return self.on_publication(topic, message, offset, epoch)
            if read.hold:
                return 0
        if stream.epoch != epoch:
            if stream.epoch is not None and offset != 1:  # a new epoch we did not see begin
                stream.epoch, stream.position = epoch, 0
                self._hole(topic, stream, offset, epoch, message)
                return 0
            stream.epoch, stream.position = epoch, offset - 1
        if offset <= stream.position:
            self.stats.count_duplicate()
            return 0
        if offset != stream.position + 1:
            self._hole(topic, stream, offset, epoch, message)
            return 0
        stream.position = offset
        self._recent.extend(topic, offset, message)
        return self._deliver_live(topic, message, offset, epoch)

    def on_gap(self, topics: Collection[str] | None = None) -> None:
        """The broker receives again after a time it did not: catch every stream up (or,
        with ``topics``, only those: e.g. a Redis Cluster slot that moved)."""
        if topics is None:
            self._recent.clear()
            streams = list(self._streams.items())
        else:
            for topic in topics:
                self._recent.drop(topic)
            streams = [(t, s) for t in topics if (s := self._streams.get(t)) is not None]
        for topic, stream in streams:
            if stream.epoch is None:  # never learned its position: cannot tell what was missed
                self._gap(list(self._index.get(topic) or ()), topic, GAP_BROKER_RECONNECTED)
            read = stream.read
            if read is not None:
                read.again = True
                read.hold = read.hold or stream.epoch is not None
            elif stream.epoch is not None:
                self._start(topic, stream, stream.position, hold=True)
            else:
                self._learn(topic, stream)

    # -- delivery -----------------------------------------------------------------

    def _deliver_live(self, topic: str, message: str, offset: int, epoch: str) -> int:
        listeners = self._index.get(topic)
        if not listeners:
            return 0
        frame = encode_text_frame(message_payload(topic, message, offset, epoch))
        for conn in listeners:
            conn.send(frame)
        return len(listeners)

    def _gap(self, conns: list[SendQueue], topic: str, reason: str = GAP_HISTORY_LOST) -> None:
        if not conns:
            return
        if reason == GAP_HISTORY_LOST:
            self.stats.count_history_gap(len(conns))
        payload = gap_payload([topic], reason)
        for conn in conns:
            conn.send_payload(payload)

    def _hole(self, topic: str, stream: _Stream, offset: int, epoch: str, message: str) -> None:
        """A publication after a hole: hold the index back until a read fills the hole."""
        self._recent.drop(topic)
        read = stream.read
        if read is None:
            read = self._start(topic, stream, stream.position, hold=True)
        else:
            read.hold = read.again = True
        if not read.buffer or read.buffer[-1][0] != offset:
            read.buffer.append((offset, epoch, message))

    # -- reads ----------------------------------------------------------------------

    def _learn(self, topic: str, stream: _Stream) -> None:
        """Learn a new topic's position with a read, within :data:`LEARN_RATE`; past it the
        position is learned from the topic's first live publication instead."""
        if self._learn_budget.take():
            self._start(topic, stream, _LEARN, hold=False)
        else:
            self.stats.count_unlearned()

    def _start(self, topic: str, stream: _Stream, since: int, *, hold: bool) -> _Read:
        read = stream.read = _Read(since, hold)
        read.waiting.update(stream.later)
        stream.later.clear()
        self._spawn(topic, stream, read)
        return read

    def _spawn(self, topic: str, stream: _Stream, read: _Read) -> None:
        task = asyncio.get_running_loop().create_task(self._run(topic, stream, read), name=f"history-read {topic}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _serve_recent(self, topic: str, stream: _Stream, page: HistoryPage) -> _Read:
        """A read answered from a recent page (:mod:`realtime.recent`): completed after the
        RESPONSE, like one answered by the broker, but without asking it."""
        read = stream.read = _Read(page.first - 1, hold=False)

        def complete() -> None:
            if self._streams.get(topic) is not stream or stream.read is not read:
                return
            if read.again:  # the broker had a gap meanwhile: ask it after all
                read.again = False
                self._spawn(topic, stream, read)
            else:
                self._complete(topic, stream, read, page)

        asyncio.get_running_loop().call_soon(complete)
        return read

    async def _run(self, topic: str, stream: _Stream, read: _Read) -> None:
        try:
            await self._read(topic, stream, read)
        except Exception as exc:  # a bug or an answer we cannot parse: never leave anyone waiting
            log.exception("history_read_crashed", topic=topic[:128])
            if self._streams.get(topic) is stream and stream.read is read:
                self._give_up(topic, stream, read, repr(exc))

    async def _read(self, topic: str, stream: _Stream, read: _Read) -> None:
        rule = stream.rule
        delay = self._retry_delay
        while True:
            limit = 0 if read.since >= _LEARN else rule.history_size
            since = 0 if read.since >= _LEARN else read.since
            self.stats.count_read()
            try:
                page = await self._broker.history(topic, since=since, limit=limit, rule=rule)
            except BrokerUnavailable as exc:
                if self._streams.get(topic) is not stream or stream.read is not read:
                    return
                read.attempts += 1
                if read.attempts >= MAX_ATTEMPTS and self._broker.ready:
                    self._give_up(topic, stream, read, str(exc))
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if self._streams.get(topic) is not stream or stream.read is not read:
                return
            if read.again:  # a gap while it was out: read again, keeping who waits
                read.again = False
                read.since = min(read.since, stream.position) if read.hold else read.since
                continue
            self._complete(topic, stream, read, page)
            return

    def _complete(self, topic: str, stream: _Stream, read: _Read, page: HistoryPage) -> None:
        """Deliver a read's answer merged with its buffer, and let the waiting join."""
        stream.read = None
        epoch = page.epoch
        merged = {p.offset: p.message for p in page.publications}
        reset = False
        for offset, buffered_epoch, message in read.buffer:
            if buffered_epoch == epoch:
                merged[offset] = message
            elif epoch == NO_EPOCH and not page.publications:  # its first publication came live
                epoch = buffered_epoch
                merged[offset] = message
            else:
                reset = True  # the history was reset while we read: trust nothing before
                epoch = buffered_epoch
        top = max(page.offset, max(merged, default=0))
        if reset:
            merged, top = {}, max((o for o, e, _ in read.buffer if e == epoch), default=0)
        frames: dict[int, bytes] = {}
        # held back, or (never in step with the barrier, but an envelope this instance could
        # not decode) the read holds offsets the live stream skipped: the listeners get them
        if read.hold or (stream.epoch == epoch and stream.position < top):
            listeners = list(self._index.get(topic) or ())
            start = Position(stream.position, stream.epoch or "")
            self._catch_up(listeners, topic, start, (page.offset, epoch), merged, top, frames, reset)
        elif stream.epoch == epoch and stream.position > top:
            top = stream.position  # live deliveries went past what the read saw
        for conn, since in read.waiting.items():
            self._catch_up([conn], topic, since, (page.offset, epoch), merged, top, frames, reset)
            self._index.add(topic, conn)
        stream.position, stream.epoch = top, epoch
        if not reset:
            self._keep_recent(topic, stream, merged, top)
        self._start_later(topic, stream)

    def _start_later(self, topic: str, stream: _Stream) -> None:
        """A read for the connections the read that just ended did not cover, if any."""
        if stream.later:
            self._start(topic, stream, min(p.offset for p in stream.later.values()), hold=False)

    def _keep_recent(self, topic: str, stream: _Stream, merged: dict[int, str], top: int) -> None:
        """Keep the run of consecutive publications a read ended with, for the next resumers."""
        run: list[Publication] = []
        offset = top
        while offset in merged and len(run) < stream.rule.history_size:
            run.append(Publication(offset, merged[offset]))
            offset -= 1
        run.reverse()
        self._recent.put(topic, stream.epoch or "", run, stream.rule.history_size)

    def _catch_up(
        self,
        conns: list[SendQueue],
        topic: str,
        since: Position,
        read_at: tuple[int, str],
        merged: dict[int, str],
        top: int,
        frames: dict[int, bytes],
        reset: bool,
    ) -> None:
        """Send ``conns`` the publications after ``since`` up to ``top``; when they are not
        all there, a GAP and then only those that arrived live after the read (``read_at``:
        the offset and epoch the read found), so the stream after the GAP has no hole either.
        An offset of 0 asks for everything from the first publication, in any epoch."""
        if not conns:
            return
        offset_read, epoch = read_at
        wanted = range(since.offset + 1, top + 1)
        same = since.epoch == epoch or since.offset == 0
        if reset or not same or since.offset > top or any(o not in merged for o in wanted):
            self._gap(conns, topic)
            wanted = range(offset_read + 1, top + 1)
            if reset or any(o not in merged for o in wanted):
                return
        for offset in wanted:
            frame = frames.get(offset)
            if frame is None:
                payload = message_payload(topic, merged[offset], offset, epoch)
                frame = frames[offset] = encode_text_frame(payload)
            for conn in conns:
                conn.send(frame)
        self.stats.count_recovered(len(wanted) * len(conns))

    def _give_up(self, topic: str, stream: _Stream, read: _Read, why: str) -> None:
        """History cannot be read: GAP to everyone waiting on it, then the live stream (the
        connections left for the next read get a read of their own)."""
        log.warning("history_read_failed", topic=topic[:128], error=why, attempts=read.attempts)
        stream.read = None
        self._recent.drop(topic)
        if read.hold:
            self._gap(list(self._index.get(topic) or ()), topic)
        waiting = list(read.waiting)
        self._gap(waiting, topic)
        for conn in waiting:
            self._index.add(topic, conn)
        stream.epoch, stream.position = None, 0  # learned again from the next publication
        self._start_later(topic, stream)
