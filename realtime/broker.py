"""The broker interface, the handler it reports to, and the in-process memory broker.

A broker carries publications between server instances. Each instance hands it one
:class:`BrokerEventHandler` (the node) and receives every publication made through any
instance (including itself). Guarantees, shared by both implementations: at-most-once
(a publication made while an instance is not receiving from the broker never reaches
that instance's listeners; the instance learns of the gap through
:meth:`BrokerEventHandler.on_gap`, called whenever receiving starts again after the
instance may have accepted listeners without it), publications from one publisher on one
topic are delivered in publish order, and an instance that is not receiving refuses to
publish (``BrokerUnavailable``) rather than accept a publication its own listeners would
miss unannounced. What travels between instances is encoded by :mod:`realtime.envelope`.

Topics whose policy rule keeps history (:mod:`realtime.history`) are published with an
offset and epoch and can be read back (:meth:`Broker.history`); the node uses that to
recover what a client or the instance itself missed (:mod:`realtime.recovery`). Each broker
also keeps presence (:attr:`Broker.presence`, :mod:`realtime.presence`).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Protocol

from realtime.errors import BrokerUnavailable
from realtime.history import HistoryPage, MemoryHistory, Position
from realtime.presence import MemoryPresence, PresenceStore
from realtime.stats import BrokerStats
from topics import TopicRule


class BrokerEventHandler(Protocol):
    """What a broker reports to (implemented by :class:`realtime.node.Node`), as in
    centrifuge's ``BrokerEventHandler``. Every method is called from the event loop and
    must not block; an exception it raises is logged by the broker and never costs the link.
    """

    def on_publication(self, topic: str, message: str, offset: int = 0, epoch: str = "") -> None:
        """Fan one publication out locally (``message``: the text sent to clients;
        ``offset`` and ``epoch``: its place in the topic's history, or 0 and ``""`` when it
        has none)."""
        ...

    def on_presence_event(self, topic: str, kind: str, entry: dict[str, Any]) -> None:
        """Send a JOIN or LEAVE (``kind``) of a topic with ``join_leave`` to its local
        listeners (``entry``: ``{"user", "client", "info"}``)."""
        ...

    def on_control(self, message: dict[str, object]) -> None:
        """Apply a control message (e.g. a token revocation) published by any instance;
        its fields are not checked yet (:func:`realtime.envelope.parse_control`)."""
        ...

    def on_gap(self, topics: Collection[str] | None = None) -> None:
        """The broker receives again after a time it did not (a reconnect, a renewed
        subscription that had stopped delivering, a first subscription made after the
        server started serving): publications may have been missed, on every topic
        (``topics`` is ``None``) or on ``topics`` only (a Redis Cluster slot that moved)."""
        ...

    def on_listen_ready(self, topics: list[str]) -> None:
        """The broker now receives these topics (a SUBSCRIBE to their channels was
        confirmed), or stopped waiting for them (its link was lost: a gap is announced with
        the next subscription): LISTENs waiting on them may be answered."""
        ...

    def on_batch_end(self) -> int:
        """A burst of :meth:`on_publication` calls read together ended: write them out now.
        Returns how many frames were written (at least 1) if the burst delivered a
        publication to a local listener, else 0 (the broker may then pace its next read:
        :class:`realtime.read_pacing.ReadPacer`)."""
        ...


class Broker(Protocol):
    """What the node needs from a broker."""

    @property
    def kind(self) -> str:
        """``"memory"`` or ``"redis"``."""
        ...

    @property
    def ready(self) -> bool:
        """``True`` while the broker is connected and receiving (``/ready``)."""
        ...

    @property
    def stats(self) -> BrokerStats:
        """The broker's counters."""
        ...

    @property
    def presence(self) -> PresenceStore:
        """Where this broker keeps presence (:mod:`realtime.presence`)."""
        ...

    async def start(self, handler: BrokerEventHandler) -> None:
        """Start receiving into ``handler``; returns once the first subscription attempt
        was made."""
        ...

    async def publish_control(self, message: dict[str, object]) -> None:
        """Send a control message to every instance (including this one).

        Raises:
            BrokerUnavailable: it was not sent (the broker did not take it, or this
                instance is not receiving).
        """
        ...

    async def publish(self, topic: str, message: str, rule: TopicRule | None = None) -> Position | None:
        """Publish one message; with a ``rule`` that keeps history, append it to the topic's
        history and publish it with its offset and epoch, atomically.

        Returns:
            The publication's position when it went to history, else ``None``.

        Raises:
            BrokerUnavailable: the broker did not take the message, or this instance is not
                receiving (its own listeners would miss it); it was not sent.
        """
        ...

    async def history(self, topic: str, *, since: int, limit: int, rule: TopicRule) -> HistoryPage:
        """Read a topic's history: the publications after offset ``since`` (at most
        ``limit``) and the current offset and epoch; a topic without history answers offset
        0 and the empty epoch (and nothing is created). On a started broker the read is in step with delivery:
        when it returns, every publication up to the page's offset has been handed to the
        handler's ``on_publication``.

        Raises:
            BrokerUnavailable: the broker could not be read (or, started, is not receiving).
        """
        ...

    def watch(self, topic: str) -> bool:
        """A local listener needs ``topic``: receive its publications. Returns ``True`` if
        they are received now, ``False`` if not yet (the handler's ``on_listen_ready`` says
        when). Idempotent."""
        ...

    def unwatch(self, topic: str) -> None:
        """No local listener needs ``topic`` any more."""
        ...

    async def close(self) -> None:
        """Stop receiving and release connections."""
        ...


class MemoryBroker:
    """Single-instance broker: a publication is fanned out in the publishing call.

    This is the product's single-instance mode (no ``REDIS_URL``), not a test double.
    """

    kind = "memory"

    def __init__(self) -> None:
        self._handler: BrokerEventHandler | None = None
        self._stats = BrokerStats()
        self.history_store = MemoryHistory()
        self._presence = MemoryPresence(self._presence_event)

    @property
    def presence(self) -> MemoryPresence:
        """Presence in process: JOIN/LEAVE go to the handler at once."""
        return self._presence

    def _presence_event(self, topic: str, kind: str, entry: dict[str, Any]) -> None:
        if self._handler is not None:
            self._handler.on_presence_event(topic, kind, entry)

    @property
    def ready(self) -> bool:
        """Always ``True`` once started."""
        return self._handler is not None

    @property
    def stats(self) -> BrokerStats:
        """Always zero: nothing to reconnect, nothing to decode."""
        return self._stats

    async def start(self, handler: BrokerEventHandler) -> None:
        """Remember the handler; a memory broker has no gaps (nor batches: each
        publication is fanned out in its own call and flushed by the scheduler)."""
        self._handler = handler

    async def publish(self, topic: str, message: str, rule: TopicRule | None = None) -> Position | None:
        """Fan the message out to this process's listeners right away (with a ``rule``
        that keeps history, after appending it to the topic's ring buffer)."""
        if self._handler is None:
            raise BrokerUnavailable("broker is not started")
        if rule is None or not rule.has_history:
            self._handler.on_publication(topic, message)
            return None
        position = self.history_store.append(topic, message, size=rule.history_size, ttl=rule.history_ttl)
        self._handler.on_publication(topic, message, position.offset, position.epoch)
        return position

    def watch(self, topic: str) -> bool:
        """Always received: every publication is fanned out in this process."""
        return True

    def unwatch(self, topic: str) -> None:
        """Nothing to unsubscribe."""

    async def history(self, topic: str, *, since: int, limit: int, rule: TopicRule) -> HistoryPage:
        """Read the topic's ring buffer (in step with delivery: publishing delivers at once)."""
        return self.history_store.read(topic, since=since, limit=limit, size=rule.history_size, ttl=rule.history_ttl)

    async def publish_control(self, message: dict[str, object]) -> None:
        """Apply a control message to this process right away (not encoded: nothing
        leaves the process)."""
        if self._handler is None:
            raise BrokerUnavailable("broker is not started")
        self._handler.on_control(message)

    async def close(self) -> None:
        """Stop delivering."""
        self._handler = None
