"""Presence: who listens to a topic, on every instance, and JOIN/LEAVE as they come and go.

A topic whose policy rule has ``presence`` keeps one entry per listening connection (a
*client*): ``{"user": <token sub or null>, "client": "<id>", "info": {...}}``, where
``info`` is the LISTEN's ``client_info`` (:func:`check_client_info`; ``{}`` without one)
and ``client`` is ``<instance id>.<connection id>`` (random per process start; never an
address or a token).

Each instance writes its own connections' entries to a :class:`PresenceStore` (the broker's:
Redis, :mod:`realtime.redis_presence`; or in process, :class:`MemoryPresence`):

- joins and leaves are gathered per topic for :data:`BATCH_WINDOW` (8 ms) and written in
  one batch (one pipelined round trip to Redis, however many LISTENs came meanwhile; what
  piles up while one batch is written is the next); a join and a leave of the same connection in
  one batch are a remove of an entry the store never had: no JOIN, no LEAVE;
- every ``ttl / 3`` seconds the instance refreshes all its entries; an entry not refreshed
  for ``ttl`` seconds (its instance died) expires, and whoever writes or reads the topic
  next prunes it (with a LEAVE when the topic has ``join_leave``): no ghost stays longer
  than ``ttl``;
- a failed write is kept and retried every second (later changes of the same client
  win); after a broker gap everything is written again (Redis may have lost it);
- :meth:`Presence.close` (SIGTERM) removes every local entry at once.

Counts are kept as they change (connections: the entries; users: distinct non-null
``user`` values), so reading them is O(1) however large the topic; the list of clients is
returned only up to a cap, the counts always.

Pure asyncio, no I/O of its own (the store does it).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Protocol

import orjson
import structlog

from realtime.errors import BrokerUnavailable
from topics import TopicRule

log = structlog.get_logger("realtime.presence")

MAX_CLIENT_INFO_BYTES: Final = 512
"""Largest ``client_info`` a LISTEN may carry, bytes of compact JSON."""
MAX_CLIENT_INFO_DEPTH: Final = 3
"""Deepest nesting of objects and arrays in ``client_info`` (the object itself is 1)."""
PRESENCE_SCOPE: Final = "realtime:presence"
"""The scope that may read any topic's presence (in-band and ``GET /presence/{topic}``)."""
DEFAULT_TTL: Final = 60.0
"""``PRESENCE_TTL``: seconds an entry lives without a refresh."""
RETRY_DELAY: Final = 1.0
"""Seconds between attempts to write changes the store refused."""
BATCH_WINDOW: Final = 0.008
"""Seconds a batch gathers changes before it is written (JOINs are that much later): at
3,000 LISTENs/s, 8 ms make a batch of ~24 instead of one per event-loop pass (measured:
181 instead of 1,056 ``FCALL``s for 10,000 LISTENs; docs/benchmarks.md)."""
READ_WAIT: Final = 1.0
"""Longest time a read waits for this instance's pending changes of its topic, seconds."""
CHUNK: Final = 500
"""Most changes of one topic per store call (a refresh of a 100,000-listener topic is 200 calls)."""

CLOSE_TIMEOUT: Final = 2.0
"""Seconds :meth:`Presence.close` waits for the store to take the removals."""

JOIN: Final = "JOIN"
LEAVE: Final = "LEAVE"


class BadClientInfo(ValueError):
    """A ``client_info`` that is not a small JSON object (the message says why)."""


def check_client_info(value: object) -> dict[str, Any]:
    """Check a LISTEN's ``client_info``.

    Args:
        value: the decoded JSON value.

    Returns:
        ``value``, a JSON object.

    Raises:
        BadClientInfo: not an object, nested deeper than :data:`MAX_CLIENT_INFO_DEPTH`, or
            longer than :data:`MAX_CLIENT_INFO_BYTES` encoded.
    """
    if not isinstance(value, dict):
        raise BadClientInfo("data.client_info must be a JSON object")
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children: Iterable[object]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > MAX_CLIENT_INFO_DEPTH:
            raise BadClientInfo(f"data.client_info is nested deeper than {MAX_CLIENT_INFO_DEPTH} levels")
        stack.extend((child, depth + 1) for child in children)
    if len(orjson.dumps(value)) > MAX_CLIENT_INFO_BYTES:
        raise BadClientInfo(f"data.client_info is longer than {MAX_CLIENT_INFO_BYTES} bytes as JSON")
    return value


def encode_entry(user: str | None, client: str, info: dict[str, Any] | None) -> bytes:
    """One presence entry as stored and sent: ``{"user", "client", "info"}`` JSON bytes
    (a copy of its length: orjson's own result sits in a ~4 KB buffer, and an instance keeps
    one entry per present connection)."""
    return bytes(memoryview(orjson.dumps({"user": user, "client": client, "info": {} if info is None else info})))


@dataclass(frozen=True, slots=True)
class TopicChanges:
    """One topic's changes for a store call.

    Attributes:
        topic: the topic.
        join_leave: its rule's ``join_leave`` (the store publishes JOIN/LEAVE then).
        upserts: client -> ``(user, entry)``: written, or refreshed if present with the
            same entry (a new one is a JOIN; one present with another entry, a LEAVE of
            the old and a JOIN of the new).
        removes: clients to remove (one that was present is a LEAVE).
    """

    topic: str
    join_leave: bool
    upserts: dict[str, tuple[str | None, bytes]]
    removes: list[str]


@dataclass(frozen=True, slots=True)
class PresenceSnapshot:
    """A topic's presence as read.

    Attributes:
        connections: entries (listening connections), exact.
        users: distinct non-null users among them.
        clients: the entries (``{"user", "client", "info"}``) sorted by client, or ``None``
            when there are more than the reader's cap.
    """

    connections: int
    users: int
    clients: list[dict[str, Any]] | None

    def as_data(self) -> dict[str, Any]:
        """The JSON object sent to clients (``clients`` omitted beyond the cap)."""
        data: dict[str, Any] = {"connections": self.connections, "users": self.users}
        if self.clients is not None:
            data["clients"] = self.clients
        return data


class PresenceStore(Protocol):
    """Where presence lives (a broker's): Redis for a cluster of instances, or in process."""

    async def apply(self, changes: list[TopicChanges], ttl: float) -> None:
        """Write the changes; entries written or refreshed live ``ttl`` seconds. Expired
        entries of these topics are pruned (LEAVE on ``join_leave`` topics). Idempotent:
        applying a batch twice changes nothing more and sends no second JOIN/LEAVE.

        Raises:
            BrokerUnavailable: not (wholly) written.
        """
        ...

    async def read(self, topic: str, rule: TopicRule, limit: int) -> PresenceSnapshot:
        """Read a topic's presence (after pruning expired entries); ``clients`` only when
        there are at most ``limit`` (``limit`` 0: counts only).

        Raises:
            BrokerUnavailable: not read.
        """
        ...


EventSink = Callable[[str, str, dict[str, Any]], None]
"""Where an in-process store sends JOIN/LEAVE: ``(topic, JOIN | LEAVE, entry)``."""


class MemoryPresence:
    """The in-process :class:`PresenceStore` of the memory broker (single-instance mode):
    the same contract, JOIN/LEAVE handed to ``sink`` at once."""

    def __init__(self, sink: EventSink | None = None) -> None:
        """Args:
        sink: where JOIN/LEAVE of ``join_leave`` topics go (the broker's handler), or ``None``.
        """
        self.sink = sink
        self._topics: dict[str, dict[str, tuple[float, str | None, bytes]]] = {}
        self._users: dict[str, dict[str, int]] = {}

    def _event(self, topic: str, kind: str, entry: bytes, join_leave: bool) -> None:
        if join_leave and self.sink is not None:
            self.sink(topic, kind, orjson.loads(entry))

    def _remove(self, topic: str, client: str, join_leave: bool) -> None:
        entries = self._topics.get(topic)
        found = entries.pop(client, None) if entries is not None else None
        if found is None:
            return
        _, user, entry = found
        if user:  # None or "": anonymous, as in Redis
            users = self._users[topic]
            users[user] -= 1
            if users[user] <= 0:
                del users[user]
        self._event(topic, LEAVE, entry, join_leave)

    def _prune(self, topic: str, join_leave: bool, now: float) -> None:
        entries = self._topics.get(topic, {})
        for client in [c for c, (expiry, _, _) in entries.items() if expiry <= now]:
            self._remove(topic, client, join_leave)

    def _forget_if_empty(self, topic: str) -> None:
        if not self._topics.get(topic):
            self._topics.pop(topic, None)
            self._users.pop(topic, None)

    async def apply(self, changes: list[TopicChanges], ttl: float) -> None:
        """Apply the changes in process (see :meth:`PresenceStore.apply`)."""
        now = time.monotonic()
        for change in changes:
            topic, join_leave = change.topic, change.join_leave
            self._prune(topic, join_leave, now)
            entries = self._topics.setdefault(topic, {})
            users = self._users.setdefault(topic, {})
            for client, (user, entry) in change.upserts.items():
                old = entries.get(client)
                if old is not None and old[2] != entry:
                    # listens again with another user or info: LEAVE the old, JOIN the new
                    self._remove(topic, client, join_leave)
                    old = None
                entries[client] = (now + ttl, user, entry)
                if old is None:
                    if user:
                        users[user] = users.get(user, 0) + 1
                    self._event(topic, JOIN, entry, join_leave)
            for client in change.removes:
                self._remove(topic, client, join_leave)
            self._forget_if_empty(topic)

    async def read(self, topic: str, rule: TopicRule, limit: int) -> PresenceSnapshot:
        """Read in process (see :meth:`PresenceStore.read`)."""
        self._prune(topic, rule.join_leave, time.monotonic())
        self._forget_if_empty(topic)
        entries = self._topics.get(topic, {})
        clients = None
        if limit and len(entries) <= limit:
            clients = [orjson.loads(entries[c][2]) for c in sorted(entries)]
        return PresenceSnapshot(len(entries), len(self._users.get(topic, {})), clients)


class Presence:
    """One instance's presence: its connections' entries, written to the store in batches.

    Attributes:
        instance: this process's random id, the first part of every client id.
        writes: batches the store took.
        write_failures: batches the store refused (each retried).
        events: JOIN/LEAVE frames queued to this instance's listeners (counted by the node).
    """

    def __init__(self, store: PresenceStore, *, ttl: float = DEFAULT_TTL, max_clients: int = 100) -> None:
        """Args:
        store: where entries go (the broker's).
        ttl: seconds an entry lives without a refresh (``PRESENCE_TTL``); refreshed every
            ``ttl / 3``.
        max_clients: most clients listed in a read (``PRESENCE_MAX_CLIENTS``; counts are
            always exact).
        """
        self._store = store
        self.ttl = ttl
        self.max_clients = max_clients
        self.instance = secrets.token_hex(4)
        self._local: dict[str, dict[str, tuple[str | None, bytes]]] = {}  # topic -> client -> (user, entry)
        self._join_leave: dict[str, bool] = {}  # topic -> its rule's join_leave, while it has local entries
        self._pending: dict[str, dict[str, tuple[str | None, bytes] | None]] = {}  # None: remove
        self._writer: asyncio.Task[None] | None = None
        self._refresher: asyncio.TimerHandle | None = None
        self._reads: dict[tuple[str, int], asyncio.Future[PresenceSnapshot]] = {}
        self._gathering: asyncio.Future[None] | None = None  # done when the pending changes are written
        self._writing: tuple[set[str], asyncio.Future[None]] | None = None  # the batch in flight
        self._closed = False
        self._failing = False  # the last write failed (logged once)
        self.writes = 0
        self.write_failures = 0
        self.events = 0

    def client_id(self, conn_id: str) -> str:
        """The client id of a connection of this instance: ``<instance>.<conn_id>``."""
        return f"{self.instance}.{conn_id}"

    def __contains__(self, topic: object) -> bool:
        """``True`` while ``topic`` has local entries."""
        return topic in self._local

    def holds(self, topic: str, client: str) -> bool:
        """``True`` if ``client`` has an entry on ``topic`` (from this instance)."""
        return client in self._local.get(topic, ())

    def local(self, topic: str) -> int:
        """How many of this instance's connections are present on ``topic``."""
        return len(self._local.get(topic, ()))

    @property
    def entries(self) -> int:
        """This instance's entries on every topic (O(topics))."""
        return sum(map(len, self._local.values()))

    def join(self, topic: str, rule: TopicRule, client: str, user: str | None, info: dict[str, Any] | None) -> None:
        """``client`` listens to ``topic`` now (a ``presence`` topic): write its entry with
        the next batch (a JOIN if ``rule.join_leave``)."""
        if self._closed:
            return
        entry = (user, encode_entry(user, client, info))
        self._local.setdefault(topic, {})[client] = entry
        self._join_leave[topic] = rule.join_leave
        self._pending.setdefault(topic, {})[client] = entry
        self._write_soon()
        if self._refresher is None:
            self._arm_refresh()

    def leave(self, topic: str, client: str) -> None:
        """``client`` stopped listening to ``topic``: remove its entry with the next batch
        (a LEAVE if the topic has ``join_leave``). Nothing if it has no entry there."""
        entries = self._local.get(topic)
        if entries is None or entries.pop(client, None) is None:
            return
        if not entries:
            del self._local[topic]
        # a remove of an entry the store never got (joined and left within one batch) is a
        # no-op there: no JOIN, no LEAVE
        self._pending.setdefault(topic, {})[client] = None
        self._write_soon()

    def refresh(self) -> None:
        """Write every local entry again with the next batch (after a broker gap, and every
        ``ttl / 3``)."""
        for topic, entries in self._local.items():
            pending = self._pending.setdefault(topic, {})
            for client, entry in entries.items():
                pending.setdefault(client, entry)
        if self._local:
            self._write_soon()

    def _arm_refresh(self) -> None:
        loop = asyncio.get_running_loop()
        self._refresher = loop.call_later(self.ttl / 3, self._on_refresh)

    def _on_refresh(self) -> None:
        self._refresher = None
        if self._closed or not self._local:
            return
        self.refresh()
        self._arm_refresh()

    def _write_soon(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write(), name="presence-writer")

    def _take(self) -> list[TopicChanges]:
        pending, self._pending = self._pending, {}
        changes = []
        for topic, clients in pending.items():
            join_leave = self._join_leave.get(topic, False)
            upserts = [(c, e) for c, e in clients.items() if e is not None]
            removes = [c for c, e in clients.items() if e is None]
            for start in range(0, max(len(upserts), len(removes)), CHUNK):
                part = dict(upserts[start : start + CHUNK])
                changes.append(TopicChanges(topic, join_leave, part, removes[start : start + CHUNK]))
            if topic not in self._local:
                self._join_leave.pop(topic, None)
        return changes

    def _put_back(self, changes: list[TopicChanges]) -> None:
        """Requeue a failed batch under what was queued since (later changes win)."""
        for change in changes:
            pending = self._pending.setdefault(change.topic, {})
            self._join_leave.setdefault(change.topic, change.join_leave)
            for client, entry in change.upserts.items():
                pending.setdefault(client, entry)
            for client in change.removes:
                pending.setdefault(client, None)

    async def _write(self) -> None:
        """Drain the pending changes: one store call per batch; what piles up meanwhile is
        the next batch. A failure is logged once, until a write succeeds again."""
        loop = asyncio.get_running_loop()
        while self._pending:
            if not self._closed:
                await asyncio.sleep(BATCH_WINDOW)
            changes = self._take()
            if not changes:  # pending held only empty topics
                continue
            done, self._gathering = self._gathering, None
            self._writing = ({c.topic for c in changes}, done or loop.create_future())
            try:
                await self._apply(changes)
            finally:
                _, written = self._writing
                self._writing = None
                if not written.done():
                    written.set_result(None)

    async def _apply(self, changes: list[TopicChanges]) -> None:
        try:
            await self._store.apply(changes, self.ttl)
        except Exception as exc:
            self.write_failures += 1
            if self._closed:
                log.warning("presence_not_removed", error=str(exc), topics=len(changes))
                return
            if not self._failing:
                self._failing = True
                if isinstance(exc, BrokerUnavailable):
                    log.warning("presence_write_failed", error=str(exc), retry_every=RETRY_DELAY)
                else:
                    log.exception("presence_write_failed", retry_every=RETRY_DELAY)
            self._put_back(changes)
            await asyncio.sleep(RETRY_DELAY)
        else:
            self.writes += 1
            if self._failing:
                self._failing = False
                log.info("presence_written_again")

    async def _settled(self, topic: str) -> None:
        """Wait (at most :data:`READ_WAIT` seconds) until this instance's changes of
        ``topic`` made so far are written: a connection that LISTENed, then asks, sees itself."""
        if topic in self._pending:
            if self._gathering is None:
                self._gathering = asyncio.get_running_loop().create_future()
            waiting = self._gathering
        elif self._writing is not None and topic in self._writing[0]:
            waiting = self._writing[1]
        else:
            return
        with contextlib.suppress(TimeoutError):  # the store is failing: the read says so, or reads what it has
            await asyncio.wait_for(asyncio.shield(waiting), READ_WAIT)

    async def read(self, topic: str, rule: TopicRule, *, counts_only: bool = False) -> PresenceSnapshot:
        """Read ``topic``'s presence from the store, once this instance's changes of it made
        so far are written (concurrent reads of one topic share one store call); ``clients``
        listed up to ``max_clients``.

        Raises:
            BrokerUnavailable: not read.
        """
        await self._settled(topic)
        limit = 0 if counts_only else self.max_clients
        key = (topic, limit)
        shared = self._reads.get(key)
        if shared is None:
            shared = asyncio.ensure_future(self._store.read(topic, rule, limit))
            self._reads[key] = shared
            shared.add_done_callback(lambda _: self._reads.pop(key, None))
        return await asyncio.shield(shared)

    async def close(self) -> None:
        """Remove every local entry from the store (a SIGTERM'ed instance leaves no ghost),
        waiting up to :data:`CLOSE_TIMEOUT` seconds; then stop refreshing."""
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None
        for topic, entries in self._local.items():
            pending = self._pending.setdefault(topic, {})
            for client in entries:
                pending[client] = None
        self._local.clear()
        self._closed = True
        if self._pending:
            self._write_soon()
        writer = self._writer
        if writer is not None and not writer.done():
            try:
                await asyncio.wait_for(asyncio.shield(writer), CLOSE_TIMEOUT)
            except TimeoutError:
                log.warning("presence_close_timed_out", pending=len(self._pending))
                writer.cancel()
