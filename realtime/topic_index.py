"""The topic index: topic -> the local listeners, in LISTEN order.

Synchronous and broker-agnostic. Listener sets are dicts used as ordered sets so that
fan-out order is stable (first LISTENed, first written).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

L = TypeVar("L", bound=Hashable)


class TopicIndex(Generic[L]):
    """Maps each topic with at least one local listener to its listeners."""

    __slots__ = ("_by_topic",)

    def __init__(self) -> None:
        self._by_topic: dict[str, dict[L, None]] = {}

    def add(self, topic: str, listener: L) -> bool:
        """Add a listener; returns ``True`` if it is the topic's first."""
        listeners = self._by_topic.get(topic)
        if listeners is None:
            self._by_topic[topic] = {listener: None}
            return True
        listeners[listener] = None
        return False

    def discard(self, topic: str, listener: L) -> bool:
        """Remove a listener if present; returns ``True`` if the topic has none left."""
        listeners = self._by_topic.get(topic)
        if listeners is None:
            return False
        listeners.pop(listener, None)
        if listeners:
            return False
        del self._by_topic[topic]
        return True

    def get(self, topic: str) -> dict[L, None] | None:
        """The listeners of ``topic`` (do not mutate while iterating), or ``None``."""
        return self._by_topic.get(topic)

    def __len__(self) -> int:
        """Number of topics with at least one listener."""
        return len(self._by_topic)
