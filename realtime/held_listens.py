"""Held LISTENs: RESPONSEs kept until the broker receives the topics they added.

With per-topic routing a LISTEN of a topic this instance does not receive yet makes the
broker SUBSCRIBE to its channel (:meth:`realtime.broker.Broker.watch`); the RESPONSE is kept
here until Redis confirms every new topic of that LISTEN, so nothing published after the
RESPONSE can be missed. The node then sends the RESPONSE and hands the topics to recovery
(:mod:`realtime.recovery`), in that order. Pure bookkeeping, no I/O.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from realtime.protocol import Listen
from topics import Topic

K = TypeVar("K", bound=Hashable)


@dataclass(slots=True, eq=False)  # compared by identity
class HeldListen(Generic[K]):
    """A LISTEN answered once the broker receives its topics.

    Attributes:
        conn: the connection.
        reply: its RESPONSE.
        topics: topic -> what to hand to recovery once answered (dropped on UNLISTEN).
        waiting: the topics the broker does not receive yet.
    """

    conn: K
    reply: bytes
    topics: dict[Topic, Listen]
    waiting: set[str]


class HeldListens(Generic[K]):
    """The held LISTENs of one node, by connection and by the topic they wait for."""

    __slots__ = ("_by_conn", "_waiting_on")

    def __init__(self) -> None:
        self._by_conn: dict[K, list[HeldListen[K]]] = {}
        self._waiting_on: dict[str, list[HeldListen[K]]] = {}

    def __len__(self) -> int:
        """Connections with a held LISTEN."""
        return len(self._by_conn)

    def hold(self, conn: K, reply: bytes, topics: Iterable[Listen], waiting: set[str]) -> None:
        """Keep ``conn``'s LISTEN of ``topics`` until every topic in ``waiting`` is received."""
        held = HeldListen(conn, reply, {item.topic: item for item in topics}, waiting)
        self._by_conn.setdefault(conn, []).append(held)
        for topic in waiting:
            self._waiting_on.setdefault(topic, []).append(held)

    def ready(self, topics: Iterable[str]) -> list[HeldListen[K]]:
        """The broker receives ``topics`` now (or stopped waiting for them): returns the held
        LISTENs to answer now, in the order they became complete."""
        done = []
        for topic in topics:
            for held in self._waiting_on.pop(topic, ()):
                if topic in held.waiting:
                    held.waiting.discard(topic)
                    if not held.waiting:
                        done.append(self._release(held))
        return done

    def drop(self, conn: K, topic: Topic) -> tuple[bool, HeldListen[K] | None]:
        """``conn`` no longer holds ``topic`` (UNLISTEN, expiry, close). Returns whether a held
        LISTEN had it, and that LISTEN if it waits for nothing more now (answer it)."""
        for held in self._by_conn.get(conn, ()):
            if held.topics.pop(topic, None) is not None:
                held.waiting.discard(topic)
                return True, self._release(held) if not held.waiting else None
        return False, None

    def forget_topic(self, topic: str) -> None:
        """No connection wants ``topic`` any more: stop waiting for it."""
        self._waiting_on.pop(topic, None)

    def forget(self, conn: K) -> None:
        """``conn`` is gone."""
        self._by_conn.pop(conn, None)

    def _release(self, held: HeldListen[K]) -> HeldListen[K]:
        helds = self._by_conn.get(held.conn)
        if helds is not None and held in helds:
            helds.remove(held)
            if not helds:
                del self._by_conn[held.conn]
        return held
