"""Topic subscriptions: which per-topic channels an instance wants, has asked for, and has.

With per-topic routing an instance subscribes to a topic's channel (``<channel>:{<topic>}``,
:func:`realtime.redis_functions.topic_channel`) while it has a listener of the topic, so
Redis sends it only the publications its own clients want. The node says which topics it
wants (:meth:`TopicSubscriptions.want`, :meth:`TopicSubscriptions.unwant`); once per
event-loop pass the broker asks for the difference (:meth:`TopicSubscriptions.changes`) and
writes it to its link as batched ``SUBSCRIBE``/``UNSUBSCRIBE`` commands; Redis confirms each
channel in order (:meth:`TopicSubscriptions.confirm`). A LISTEN of a topic that is wanted
but not yet confirmed waits for the confirmation before its RESPONSE (so nothing published
after the RESPONSE is missed). Pure bookkeeping, no I/O.
"""

from __future__ import annotations


class TopicSubscriptions:
    """The per-topic channel subscriptions of one instance on its current subscriber link.

    Attributes:
        wanted: topics with local interest (LISTENed, or being recovered).
    """

    __slots__ = ("_confirmed", "_prefix", "_sent", "wanted")

    def __init__(self, channel: str) -> None:
        """Args:
        channel: the data channel's name (``REDIS_CHANNEL``), the prefix of every topic's.
        """
        self._prefix = f"{channel}:{{".encode()
        self.wanted: set[str] = set()
        self._sent: set[str] = set()  # SUBSCRIBE written on the current link, not UNSUBSCRIBEd
        self._confirmed: set[str] = set()  # ... and confirmed by Redis

    def channel_of(self, topic: str) -> bytes:
        """``<channel>:{<topic>}``, encoded."""
        return self._prefix + topic.encode() + b"}"

    def topic_of(self, channel: bytes) -> str | None:
        """The topic whose channel this is, or ``None`` (another channel)."""
        if channel.startswith(self._prefix) and channel.endswith(b"}"):
            return channel[len(self._prefix) : -1].decode(errors="replace")
        return None

    def want(self, topic: str) -> None:
        """A local listener (or a recovery) needs ``topic``'s publications."""
        self.wanted.add(topic)

    def unwant(self, topic: str) -> None:
        """No local listener needs ``topic`` any more."""
        self.wanted.discard(topic)

    def receiving(self, topic: str) -> bool:
        """``True`` if the current link is subscribed to ``topic``'s channel (confirmed)."""
        return topic in self._confirmed

    def begin_link(self) -> list[bytes]:
        """A new link is being opened: the channels to open it with (every wanted topic's)."""
        self._sent = set(self.wanted)
        self._confirmed = set()
        return [self.channel_of(topic) for topic in self._sent]

    def link_opened(self) -> None:
        """The new link confirmed every channel it was opened with."""
        self._confirmed = set(self._sent)

    def changes(self) -> tuple[list[bytes], list[bytes]]:
        """The channels to SUBSCRIBE and to UNSUBSCRIBE now, counted as written."""
        wanted, sent = self.wanted, self._sent
        added = wanted - sent
        removed = sent - wanted
        sent |= added
        sent -= removed
        self._confirmed -= removed
        return [self.channel_of(t) for t in added], [self.channel_of(t) for t in removed]

    def confirm(self, channel: bytes) -> str | None:
        """Redis confirmed a SUBSCRIBE: the topic now received, or ``None`` (not ours, or
        unsubscribed since)."""
        topic = self.topic_of(channel)
        if topic is None or topic not in self._sent:
            return None
        self._confirmed.add(topic)
        return topic

    def link_lost(self) -> list[str]:
        """The link is gone: forget what it had; returns the topics that were waiting for a
        confirmation (their LISTENs are answered now; a GAP or recovery follows the next
        subscription)."""
        waiting = [topic for topic in self.wanted if topic not in self._confirmed]
        self._sent = set()
        self._confirmed = set()
        return waiting
