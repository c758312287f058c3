"""The Redis Cluster broker's links: one sharded subscriber link per master, one classic
link for the control channel (and the firehose), and reading the slot map.

A sharded link (:class:`ShardLink`) is a :class:`realtime.redis_link.SubscriberLink`
opened without channels; topics are added with ``SSUBSCRIBE`` (one command per slot) and
removed with ``SUNSUBSCRIBE``. It remembers how many ``SUNSUBSCRIBE`` replies it is owed per
topic: on RESP2 a ``sunsubscribe`` Redis pushes when a slot leaves the node looks like the
reply to our own, and only the unasked ones mean the subscription was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Mapping

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from realtime.redis_cluster import Address, ClusterReplyError, Redirect, SlotMap, SlotUncovered, key_slot
from realtime.redis_link import OnBatchEnd, SubscriberLink, encode_command, open_link
from realtime.topic_subscriptions import TopicSubscriptions


def parse_nodes(nodes: str) -> list[Address]:
    """``REDIS_CLUSTER_NODES`` (``host:port,host:port``) as addresses.

    Raises:
        ValueError: an entry is not ``host:port`` with a numeric port.
    """
    out = []
    for item in (part.strip() for part in nodes.split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"not host:port: {item!r}")
        out.append(Address(host.strip("[]"), int(port)))
    if not out:
        raise ValueError("no seed node")
    return out


class SupervisorPasses:
    """Lets callers wait for the end of the broker supervisor's next pass (a topology
    refresh attempt, successful or not)."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next: asyncio.Future[None] | None = None

    def ended(self) -> None:
        """A pass ended: wake every waiter."""
        fut, self._next = self._next, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def next(self, within: float) -> None:
        """Return when the next pass ends, or after ``within`` seconds."""
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._next), max(within, 0))


def _ignore(_: bytes) -> None:
    """No control channel on a sharded link."""


class ShardLink:
    """One master's sharded subscriber link and the topics subscribed on it.

    Attributes:
        address: the master.
        link: the connection.
        sent: topics whose ``SSUBSCRIBE`` was written (and not unsubscribed since).
        confirmed: those Redis confirmed.
    """

    __slots__ = ("_owed", "address", "confirmed", "link", "sent")

    def __init__(self, address: Address, link: SubscriberLink) -> None:
        self.address = address
        self.link = link
        self.sent: set[str] = set()
        self.confirmed: set[str] = set()
        self._owed: dict[str, int] = {}  # topic -> SUNSUBSCRIBE replies still to come

    def subscribe(self, topics: Iterable[str], names: TopicSubscriptions) -> None:
        """SSUBSCRIBE the topics' channels (confirmations go to ``on_subscribed``)."""
        topics = list(topics)
        if topics:
            self.sent.update(topics)
            self.link.ssubscribe([names.channel_of(t) for t in topics])

    def unsubscribe(self, topics: Iterable[str], names: TopicSubscriptions) -> None:
        """SUNSUBSCRIBE the topics' channels, counting the replies owed."""
        topics = list(topics)
        for topic in topics:
            self.forget(topic)
            self._owed[topic] = self._owed.get(topic, 0) + 1
        if topics:
            self.link.sunsubscribe([names.channel_of(t) for t in topics])

    def unsubscribe_acknowledged(self, topic: str) -> bool:
        """A ``sunsubscribe`` for ``topic`` arrived: ``True`` if it answers our own."""
        owed = self._owed.get(topic, 0)
        if owed == 0:
            return False
        if owed == 1:
            del self._owed[topic]
        else:
            self._owed[topic] = owed - 1
        return True

    def forget(self, topic: str) -> None:
        """``topic`` is no longer subscribed here."""
        self.sent.discard(topic)
        self.confirmed.discard(topic)

    def forget_slot(self, slot: int, names: TopicSubscriptions) -> tuple[list[str], list[str]]:
        """This master refused ``slot`` (``MOVED``): forget its topics here, and the
        ``SUNSUBSCRIBE`` replies owed for them (a refused one never comes).

        Returns:
            The slot's topics that were sent, and those of them that had been confirmed.
        """
        sent = [t for t in self.sent if key_slot(names.channel_of(t)) == slot]
        confirmed = [t for t in sent if t in self.confirmed]
        for topic in sent:
            self.forget(topic)
        for topic in [t for t in self._owed if key_slot(names.channel_of(t)) == slot]:
            del self._owed[topic]
        return sent, confirmed

    def close(self) -> None:
        """Close the connection (``link.lost`` fails once it is closed)."""
        if self.link.transport is not None:
            self.link.transport.abort()


async def open_shard_link(
    address: Address,
    *,
    client_name: str,
    connect_timeout: float,
    batch_interval: float,
    on_data: Callable[[bytes], None],
    on_batch: OnBatchEnd | None,
    on_subscribed: Callable[[bytes], None],
    on_unsubscribed: Callable[[ShardLink, bytes], None],
    on_refused: Callable[[ShardLink, str], bool],
) -> ShardLink:
    """Connect to a master, name the connection and wait for its first PONG.

    ``on_refused`` gets every error reply; ``False`` (not handled) fails the link.

    Raises:
        OSError, TimeoutError, ConnectionError: the master cannot be reached in time.
        RuntimeError: it refused a command.
    """
    cell: list[ShardLink] = []

    def factory() -> SubscriberLink:
        return SubscriberLink(
            b"",
            on_data,
            _ignore,
            on_batch,
            batch_interval,
            initial=0,
            on_subscribed=on_subscribed,
            on_unsubscribed=lambda channel: on_unsubscribed(cell[0], channel),
            on_refused=lambda text: on_refused(cell[0], text),
        )

    loop = asyncio.get_running_loop()
    _, link = await asyncio.wait_for(loop.create_connection(factory, address.host, address.port), connect_timeout)
    shard = ShardLink(address, link)
    cell.append(shard)
    assert link.transport is not None
    link.transport.write(encode_command("CLIENT", "SETNAME", client_name))
    try:
        await asyncio.wait_for(asyncio.shield(link.barrier()), connect_timeout)
    except BaseException:
        shard.close()
        raise
    return shard


class ClassicLinkOpener:
    """The classic (``SUBSCRIBE``) link to any node: the control channel and the firehose.

    Attributes:
        link: the current link, if one was opened.
    """

    def __init__(
        self,
        *,
        channel: str,
        firehose: bool,
        client_name: str,
        connect_timeout: float,
        batch_interval: float,
        on_data: Callable[[bytes], None],
        on_control: Callable[[bytes], None],
        on_batch: OnBatchEnd,
    ) -> None:
        self._channel = channel
        self._firehose = firehose
        self._client_name = client_name
        self._connect_timeout = connect_timeout
        self._batch_interval = batch_interval
        self._on_data = on_data
        self._on_control = on_control
        self._on_batch = on_batch
        self.link: SubscriberLink | None = None
        self._opened = 0

    @property
    def up(self) -> bool:
        """``True`` while the link is open."""
        return self.link is not None and not self.link.lost.done()

    async def open(self, candidates: Iterable[Address]) -> bool:
        """Open the link on the first candidate that answers.

        Returns:
            ``True`` if a link had been open before (a reconnect).

        Raises:
            OSError, TimeoutError, ConnectionError, RuntimeError: no candidate answered.
        """
        error: BaseException = ConnectionError("no node to connect to")
        for address in dict.fromkeys(candidates):
            params = {"host": address.host, "port": address.port}
            try:
                self.link = await open_link(
                    params,
                    channels=[self._channel] if self._firehose else [],
                    control=f"{self._channel}:control",
                    client_name=self._client_name,
                    connect_timeout=self._connect_timeout,
                    on_data=self._on_data,
                    on_control=self._on_control,
                    on_batch=self._on_batch,
                    batch_interval=self._batch_interval,
                )
            except (OSError, TimeoutError, ConnectionError, RuntimeError) as exc:
                error = exc
                continue
            self._opened += 1
            return self._opened > 1
        raise error

    def close(self) -> None:
        """Close the link."""
        if self.link is not None and self.link.transport is not None:
            self.link.transport.abort()


def _node(address: Address, wait: float) -> aioredis.Redis:
    return aioredis.Redis(
        host=address.host,
        port=address.port,
        socket_timeout=wait,
        socket_connect_timeout=wait,
        retry=Retry(NoBackoff(), 0),
    )


async def load_library(masters: Iterable[Address], code: str, *, wait: float) -> None:
    """``FUNCTION LOAD REPLACE`` the library on every master (a new master, promoted or
    added, may lack it; replicas get it from their master).

    Raises:
        OSError, TimeoutError, RedisError: a master did not take it.
    """
    for address in masters:
        node = _node(address, wait)
        try:
            await node.function_load(code, replace=True)
        finally:
            await node.aclose()


async def read_slot_map(
    candidates: Iterable[Address], *, wait: float, redirects: Mapping[int, Address] | None = None
) -> SlotMap:
    """``CLUSTER SHARDS`` from the first candidate that answers (``wait``: connect and
    read timeout per candidate, seconds), with ``redirects`` (slot -> owner, from ``MOVED``
    replies) applied where the reply does not show them yet (a node's view may lag).

    Raises:
        OSError, TimeoutError, ConnectionError, RedisError, ClusterReplyError: none answered.
    """
    error: BaseException = ConnectionError("no node to read the topology from")
    for address in dict.fromkeys(candidates):
        node = _node(address, wait)
        try:
            read = SlotMap.from_shards(await node.execute_command("CLUSTER", "SHARDS"))  # type: ignore[no-untyped-call]
            for slot, owner in (redirects or {}).items():
                with contextlib.suppress(SlotUncovered):
                    if read.master_for(slot) == owner:
                        continue
                read = read.with_redirect(Redirect(slot, owner.host, owner.port))
            return read
        except (OSError, TimeoutError, RedisError, ClusterReplyError) as exc:
            error = exc
        finally:
            await node.aclose()
    raise error
