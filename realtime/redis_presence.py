"""Presence on Redis: the :class:`realtime.presence.PresenceStore` of both Redis brokers.

Per topic, three keys with the topic as hash tag (one Cluster slot, the slot of the topic's
history and channel), all expiring ``PRESENCE_TTL`` after the last write:

- ``<channel>:{<topic>}:presence``: a sorted set, client -> expiry (Unix milliseconds, by
  Redis's clock, so instances' clocks need not agree);
- ``<channel>:{<topic>}:presence:info``: a hash, client -> entry JSON
  (``{"user", "client", "info"}``);
- ``<channel>:{<topic>}:presence:users``: a hash, user -> entries of that user (its
  ``HLEN`` is the distinct users: O(1)).

The Function library (:mod:`realtime.redis_functions`) changes them atomically:
``FCALL <p>_presence 1 <set> <topic> <ttl> <n> [<client> <user> <entry>]*n [<client>]*``
(``ttl``: 1 to 86,400 s, else an error before any write) prunes up to 1,000 expired
entries, upserts ``n`` entries and removes the rest, and, on a
topic whose rule has ``join_leave``, publishes ``{"topic", "presence": "join"|"leave",
"entry"}`` on the topic's channel (``SPUBLISH`` on a Cluster) for each entry that was new
or was removed (an upsert of a present client with another entry is both)
(:func:`realtime.envelope.decode_presence_event`).
``FCALL <p>_presence_get 1 <set> <topic> <limit>`` prunes, then answers the counts and,
up to ``limit`` entries, the list.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from realtime.errors import BrokerUnavailable
from realtime.presence import PresenceSnapshot, TopicChanges
from realtime.redis_functions import HistoryFunctions
from topics import TopicRule


class RedisPresence:
    """Presence in Redis through the Function library (see the module docstring)."""

    __slots__ = ("_functions",)

    def __init__(self, functions: Callable[[], HistoryFunctions | None]) -> None:
        """Args:
        functions: the broker's library wrapper, or ``None`` while the broker has no
            publishing client.
        """
        self._functions = functions

    def _library(self) -> HistoryFunctions:
        functions = self._functions()
        if functions is None:
            raise BrokerUnavailable("broker is not started")
        return functions

    async def apply(self, changes: list[TopicChanges], ttl: float) -> None:
        """Write ``changes`` in one pipeline (see :meth:`realtime.presence.PresenceStore.apply`).

        Raises:
            BrokerUnavailable: Redis failed or refused a call.
        """
        seconds = str(max(1, round(ttl)))
        calls: list[tuple[str, list[str | bytes]]] = []
        for change in changes:
            args: list[str | bytes] = [seconds, str(len(change.upserts))]
            for client, (user, entry) in change.upserts.items():
                args += (client, "" if user is None else user, entry)
            args += change.removes
            calls.append((change.topic, args))
        if calls:
            await self._library().presence_apply(calls)

    async def read(self, topic: str, rule: TopicRule, limit: int) -> PresenceSnapshot:
        """Read ``topic``'s presence (see :meth:`realtime.presence.PresenceStore.read`).

        Raises:
            BrokerUnavailable: Redis failed or refused the call.
        """
        connections, users, entries = await self._library().presence_get(topic, limit)
        clients = None
        if limit and connections <= limit and len(entries) == connections:
            decoded = [orjson.loads(entry) for entry in entries]
            clients = sorted(decoded, key=lambda item: str(item.get("client")))
        return PresenceSnapshot(connections, users, clients)
