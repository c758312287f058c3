"""The Redis Cluster broker's topic subscriptions: which topics this instance wants, on which
master's link each is subscribed, and which lost their subscription.

A topic is subscribed (``SSUBSCRIBE``, one command per slot, batched per event-loop pass) on
the link of the master that owns its channel's slot in the broker's current map. A topic
whose subscription was lost (its master's link closed, a ``sunsubscribe`` Redis pushed, its
slot moved) is *lost*: once subscribed again, the handler's ``on_gap(topics)`` catches its
listeners up. The broker owns the links' life and the slot map; this class only reads them,
and calls ``on_stale`` when the topology must be read again (``on_moved`` first, with the
slot and owner a ``MOVED`` reply named).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from realtime.broker import BrokerEventHandler
from realtime.redis_cluster import Address, ClusterReplyError, SlotMap, SlotUncovered, parse_moved
from realtime.redis_cluster_links import ShardLink
from realtime.topic_subscriptions import TopicSubscriptions

log = structlog.get_logger("realtime.broker")


class ShardTopics:
    """The topics received over the master links (see the module docstring).

    Attributes:
        names: channel <-> topic names.
        shards: each master's link (the broker adds them; :meth:`link_lost` removes them).
        map: the slot map the broker follows (``None`` until read).
        active: subscriptions may be written now (the broker is ready).
        handler: told of subscriptions (``on_listen_ready``) and gaps (``on_gap``).
    """

    def __init__(self, channel: str, *, on_stale: Callable[[], None], on_moved: Callable[[int, Address], None]) -> None:
        """Args:
        channel: the prefix of the topics' channels.
        on_stale: the topology must be read again.
        on_moved: a ``MOVED`` named this slot's owner (called before ``on_stale``).
        """
        self._on_stale = on_stale
        self._on_moved = on_moved
        self.names = TopicSubscriptions(channel)
        self.shards: dict[Address, ShardLink] = {}
        self.map: SlotMap | None = None
        self.active = False
        self.handler: BrokerEventHandler | None = None
        self._wanted: set[str] = set()
        self._lost: set[str] = set()  # wanted, and not received for a while: a gap on confirmation
        self._gaps: set[str] = set()  # confirmed lost topics, announced at the end of this pass
        self._flush_due = False

    def owner(self, topic: str) -> ShardLink | None:
        """The link of the master owning ``topic``'s slot, if it is up."""
        if self.map is None:
            return None
        try:
            return self.shards.get(self.map.master_for_key(self.names.channel_of(topic)))
        except SlotUncovered:
            return None

    def watch(self, topic: str) -> bool:
        """Receive ``topic``'s sharded channel; ``True`` if received now (or no link for
        it: ``on_gap([topic])`` follows its subscription), ``False`` while the
        ``SSUBSCRIBE`` is on its way (``on_listen_ready`` tells when it is done)."""
        self._wanted.add(topic)
        shard = self.owner(topic) if self.active else None
        if shard is None:
            self._lost.add(topic)
            return True
        if topic in shard.confirmed:
            return True
        self._flush_soon()
        return False

    def unwatch(self, topic: str) -> None:
        """No local listener needs ``topic`` any more: unsubscribe from its channel."""
        self._wanted.discard(topic)
        self._lost.discard(topic)
        self._flush_soon()

    def _flush_soon(self) -> None:
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write this pass's (un)subscriptions, batched per master and per slot."""
        self._flush_due = False
        if not self.active:
            return
        placed = set()
        for shard in self.shards.values():
            removed = [t for t in shard.sent if t not in self._wanted]
            shard.unsubscribe(removed, self.names)
            placed |= shard.sent
        added: dict[Address, list[str]] = {}
        for topic in self._wanted - placed:
            owner = self.owner(topic)
            if owner is not None:
                added.setdefault(owner.address, []).append(topic)
        for address, topics in added.items():
            self.shards[address].subscribe(topics, self.names)

    def move_topics(self, new: SlotMap) -> None:
        """Forget subscriptions on links whose master no longer owns the topic's slot in
        ``new`` (Redis dropped them, or will: it pushes ``sunsubscribe`` when a slot leaves a
        node); the wanted ones are lost."""
        for address, shard in self.shards.items():
            moved = [t for t in shard.sent if new.master_for_key(self.names.channel_of(t)) != address]
            for topic in moved:
                shard.forget(topic)
                if topic in self._wanted:
                    self._lost.add(topic)

    def link_lost(self, shard: ShardLink) -> list[str]:
        """``shard``'s connection is gone: its wanted topics are lost.

        Returns:
            The topics whose ``SSUBSCRIBE`` was never confirmed (their LISTENs still wait).
        """
        if self.shards.get(shard.address) is shard:
            del self.shards[shard.address]
        waiting = [t for t in shard.sent if t not in shard.confirmed]
        self._lost.update(t for t in shard.sent if t in self._wanted)
        shard.sent.clear()
        shard.confirmed.clear()
        return waiting

    # -- the links' callbacks ----------------------------------------------------------

    def on_subscribed(self, channel: bytes) -> None:
        """An ``ssubscribe`` confirmation."""
        topic = self.names.topic_of(channel)
        if topic is None or self.handler is None:
            return
        shard = self.owner(topic)
        if shard is None or topic not in shard.sent:
            return
        shard.confirmed.add(topic)
        if topic in self._lost:
            self._lost.discard(topic)
            if not self._gaps:
                asyncio.get_running_loop().call_soon(self._announce_gaps)
            self._gaps.add(topic)
        self.handler.on_listen_ready([topic])

    def _announce_gaps(self) -> None:
        topics, self._gaps = self._gaps, set()
        if topics and self.handler is not None:
            log.info("redis_cluster_topics_resubscribed", topics=len(topics))
            self.handler.on_gap(sorted(topics))

    def on_unsubscribed(self, shard: ShardLink, channel: bytes) -> None:
        """A ``sunsubscribe``: ours (counted), or pushed by Redis (the slot left the node)."""
        topic = self.names.topic_of(channel)
        if topic is None or shard.unsubscribe_acknowledged(topic):
            return
        if topic in shard.sent:
            shard.forget(topic)
            if topic in self._wanted:
                self._lost.add(topic)
            log.info("redis_cluster_pushed_sunsubscribe", master=str(shard.address), topic=topic[:128])
            self._on_stale()

    def on_refused(self, shard: ShardLink, text: str) -> bool:
        """An error reply on a master link: a ``MOVED`` (one slot's ``SSUBSCRIBE`` or
        ``SUNSUBSCRIBE`` reached a master that no longer owns it) moves that slot's topics
        only; anything else costs the link (``False``)."""
        if not text.startswith("MOVED "):
            return False
        try:
            redirect = parse_moved(text)
        except ClusterReplyError:
            return False
        sent, confirmed = shard.forget_slot(redirect.slot, self.names)
        self._lost.update(t for t in confirmed if t in self._wanted)  # never-confirmed ones still wait
        log.info("redis_cluster_moved", master=str(shard.address), slot=redirect.slot, topics=len(sent))
        self._on_moved(redirect.slot, Address(redirect.host or shard.address.host, redirect.port))
        self._on_stale()
        return True
