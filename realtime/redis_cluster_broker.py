"""Redis Cluster broker: per-topic sharded channels, one subscriber link per master.

Selected by ``REDIS_CLUSTER_NODES`` (seed ``host:port`` list). What changes from
:class:`realtime.redis_broker.RedisBroker` (one Redis):

- a topic's channel ``<channel>:{<topic>}`` is a sharded channel: published with
  ``SPUBLISH`` (the history library, loaded on every master, ``SPUBLISH``es too), and
  received over one link per master (``SSUBSCRIBE``, one command per hash slot, pipelined;
  :meth:`realtime.redis_link.SubscriberLink.ssubscribe`), the link of the master that owns
  the channel's slot (:class:`realtime.redis_cluster.SlotMap`, read with ``CLUSTER SHARDS``);
- the control channel ``<channel>:control`` and the firehose (``REDIS_FIREHOSE``) stay
  classic channels on one more link to any node: a classic ``PUBLISH`` reaches every node
  of a cluster (and costs every node its traffic);
- commands go through redis-py's ``RedisCluster`` (routed by key; never retried, so a
  publication is never sent twice).

Following the topology: when a master link is lost, or Redis pushes a ``sunsubscribe`` we
did not ask for (the slot moved, or the master was demoted), the topics concerned lose
their subscription. A ``MOVED`` in reply to one slot's ``SSUBSCRIBE`` (our map is behind)
costs only that slot's topics on that link, not the link. Then the supervisor reads
``CLUSTER SHARDS`` again, with capped backoff until a master answers for every slot (first
from the node a ``MOVED`` named; a redirect the map read does not show yet is applied on top
of it), loads the library again if the map changed, opens links to new masters and
subscribes each wanted topic on its owner's link. When that subscription is confirmed the
handler's ``on_gap(topics)`` catches those topics up (from history, or a ``GAP``). The
bookkeeping of which topic is subscribed where is :class:`realtime.redis_cluster_topics.ShardTopics`. Between the loss and the new subscription, publications on those
topics are not delivered to this instance (at-most-once, as on one Redis).

``ready`` says the classic link is up and the slot map known; it does not follow each
master's link (one lost master leaves the topics of the others served). A history read of a
topic whose master link is down, or that fails while the topology changes (a failover takes
``cluster-node-timeout`` plus an election), waits for the supervisor's next pass and tries
again, for up to ``follow_timeout`` seconds, before it raises ``BrokerUnavailable``.

Not done in cluster mode: the delivery probe (``REDIS_PROBE_INTERVAL`` is not used).
"""

from __future__ import annotations

import asyncio
import os
import time

import structlog
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from realtime.backoff import backoff_delay
from realtime.broker import BrokerEventHandler
from realtime.broker_inbox import BrokerInbox
from realtime.envelope import encode_control, encode_publication
from realtime.errors import BrokerUnavailable
from realtime.history import HistoryPage, Position
from realtime.redis_cluster import Address, ClusterReplyError, SlotUncovered
from realtime.redis_cluster_client import ClusterCommands
from realtime.redis_cluster_links import (
    ClassicLinkOpener,
    ShardLink,
    SupervisorPasses,
    load_library,
    open_shard_link,
    parse_nodes,
    read_slot_map,
)
from realtime.redis_cluster_topics import ShardTopics
from realtime.redis_functions import library_code
from realtime.redis_presence import RedisPresence
from realtime.stats import BrokerStats
from topics import DEFAULT_POLICY, TopicPolicy, TopicRule

log = structlog.get_logger("realtime.broker")

_FAILURES = (OSError, TimeoutError, RuntimeError, ConnectionError, RedisError, ClusterReplyError, SlotUncovered)


class ClusterBroker:
    """Broker over a Redis Cluster's sharded pub/sub; see the module docstring."""

    kind = "redis"

    def __init__(
        self,
        nodes: str,
        *,
        channel: str = "realtime",
        connect_timeout: float = 2.0,
        health_interval: float = 5.0,
        backoff_cap: float = 1.0,
        batch_interval: float = 0.0,
        policy: TopicPolicy = DEFAULT_POLICY,
        firehose: bool = True,
        follow_timeout: float = 5.0,
    ) -> None:
        """Args:
        nodes: seed nodes, ``host:port`` comma-separated (any reachable one will do).
        channel: the prefix of every channel and key; the firehose channel.
        connect_timeout: per connection attempt and per command, seconds.
        health_interval: PING period on every subscriber link, seconds.
        backoff_cap: longest wait between topology refresh attempts, seconds.
        batch_interval: read pacing of the links (:mod:`realtime.redis_link`), seconds.
        policy: the topic policy baked into the history library.
        firehose: also subscribe to ``channel`` itself (classic pub/sub).
        follow_timeout: longest a history read waits for the topology to be followed
            (see the module docstring), seconds.

        Raises:
            ValueError: ``nodes`` does not parse.
        """
        self._seeds = parse_nodes(nodes)
        self._channel = channel
        self._connect_timeout = connect_timeout
        self._health_interval = health_interval
        self._backoff_cap = backoff_cap
        self._batch_interval = batch_interval
        self._policy = policy
        self._library = library_code(channel, policy, sharded=True)
        self._firehose = firehose
        self._follow_timeout = follow_timeout
        self._passes = SupervisorPasses()
        self._handler: BrokerEventHandler | None = None
        self._commands = ClusterCommands(self._seeds, channel=channel, policy=policy, timeout=connect_timeout)
        self._stale = True  # the map must be read (again)
        self._redirects: dict[int, Address] = {}  # slot -> owner, from MOVED since the last refresh
        self._topics = ShardTopics(channel, on_stale=self._refresh_soon, on_moved=self._moved)
        self._classic: ClassicLinkOpener | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._topics.active = False
        self._publisher_only = False  # start_publisher: commands only, no subscription
        self._serving = False
        self._closing = False
        self._stats = BrokerStats()
        self._inbox = BrokerInbox(self._stats)
        self.client_name = f"realtime-sub-{os.getpid()}-{id(self):x}"
        self._presence = RedisPresence(lambda: self._commands.functions)

    @property
    def ready(self) -> bool:
        """``True`` while the classic link is up and the slot map is known."""
        return self._topics.active

    @property
    def classic_node(self) -> Address | None:
        """The node the classic link (control channel, firehose) is connected to, if up."""
        assert self._classic is not None
        link = self._classic.link
        if link is None or link.transport is None or link.lost.done():
            return None
        host, port = link.transport.get_extra_info("peername")[:2]
        return Address(host, port)

    @property
    def stats(self) -> BrokerStats:
        """Reconnects (of the classic link and topology refreshes) and invalid envelopes."""
        return self._stats

    @property
    def presence(self) -> RedisPresence:
        """Presence in the cluster (:mod:`realtime.redis_presence`; each call routed by slot)."""
        return self._presence

    # -- lifecycle ----------------------------------------------------------------

    async def start(self, handler: BrokerEventHandler) -> None:
        """Start the supervisor; waits up to ``connect_timeout`` for the first subscription."""
        self._handler = handler
        self._inbox.handler = handler
        self._topics.handler = handler
        self._commands.start()
        self._classic = ClassicLinkOpener(
            channel=self._channel,
            firehose=self._firehose,
            client_name=self.client_name,
            connect_timeout=self._connect_timeout,
            batch_interval=self._batch_interval,
            on_data=self._inbox.publication,
            on_control=self._inbox.control,
            on_batch=handler.on_batch_end,
        )
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._supervise(first), name="redis-cluster-subscriber")
        try:
            await asyncio.wait_for(asyncio.shield(first), self._connect_timeout * 2 + 0.5)
        except TimeoutError:
            log.warning("redis_cluster_not_ready_at_start", channel=self._channel)
        self._serving = True

    def start_publisher(self) -> None:
        """Create the command client only, no subscriber link (the CLI: ``realtime publish``,
        ``realtime history``, revocations); ``history`` then reads without a barrier, and the
        library is loaded on its first call if a master lacks it."""
        self._publisher_only = True
        self._commands.start()

    async def close(self) -> None:
        """Stop the supervisor and close every link and the client."""
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.1)
            await asyncio.gather(task, return_exceptions=True)
        for shard in list(self._topics.shards.values()):
            shard.close()
        if self._classic is not None:
            self._classic.close()
        self._topics.active = False
        await self._commands.close()

    # -- the supervisor -------------------------------------------------------------

    async def _supervise(self, first: asyncio.Future[None]) -> None:
        attempt = 0
        while not self._closing:
            try:
                await self._sync()
            except _FAILURES as exc:
                self._stale = True  # read the topology again: e.g. a dead master not yet replaced
                self._done(first)
                self._passes.ended()
                delay = backoff_delay(attempt, cap=self._backoff_cap)
                log.warning("redis_cluster_sync_failed", error=str(exc) or type(exc).__name__, retry_in=round(delay, 3))
                attempt += 1
                await asyncio.sleep(delay)
                continue
            attempt = 0
            self._done(first)
            self._passes.ended()
            await self._idle()

    @staticmethod
    def _done(first: asyncio.Future[None]) -> None:
        if not first.done():
            first.set_result(None)

    async def _sync(self) -> None:
        """Bring links and subscriptions in line with the cluster (see the module docstring).

        Raises:
            OSError, TimeoutError, RuntimeError, ConnectionError, RedisError,
            ClusterReplyError, SlotUncovered: a step failed; the caller retries.
        """
        classic = self._classic
        assert classic is not None
        if not classic.up:
            self._topics.active = False
            candidates = [*(self._topics.map.masters() if self._topics.map else ()), *self._seeds]
            again = await classic.open(candidates)
            if again:
                self._stats.count_reconnect()
            if again and self._firehose and self._handler is not None:
                self._handler.on_gap()  # raw publications on the firehose may have been missed
        if self._stale or self._topics.map is None:
            await self._refresh()
        for master in self._topics.map.masters() if self._topics.map else ():
            if master not in self._topics.shards:
                await self._open_shard(master)
        self._topics.active = True
        self._topics.flush()

    async def _refresh(self) -> None:
        redirects, self._redirects = self._redirects, {}
        old = self._topics.map
        candidates = [*redirects.values(), *(old.masters() if old else ()), *self._seeds]
        try:
            new = await read_slot_map(candidates, wait=self._connect_timeout, redirects=redirects)
            if not new.covered():
                raise SlotUncovered("the cluster does not cover every slot yet")
        except BaseException:
            self._redirects = redirects | self._redirects  # kept for the next attempt
            raise
        self._topics.map = new
        self._stale = False
        if old is not None and new != old:
            log.info("redis_cluster_topology_changed", masters=sorted(map(str, new.masters())))
            self._stats.count_reconnect()
        for address in [a for a in self._topics.shards if a not in new.masters()]:
            self._topics.shards[address].close()  # its done callback marks its topics lost
        self._topics.move_topics(new)
        if old is None or new != old:
            await load_library(new.masters(), self._library, wait=self._connect_timeout)
            if old is not None:
                self._commands.renew()

    async def _open_shard(self, master: Address) -> None:
        shard = await open_shard_link(
            master,
            client_name=self.client_name,
            connect_timeout=self._connect_timeout,
            batch_interval=self._batch_interval,
            on_data=self._inbox.publication,
            on_batch=self._handler.on_batch_end if self._handler is not None else None,
            on_subscribed=self._topics.on_subscribed,
            on_unsubscribed=self._topics.on_unsubscribed,
            on_refused=self._topics.on_refused,
        )
        self._topics.shards[master] = shard
        shard.link.lost.add_done_callback(lambda _: self._shard_lost(shard))

    def _shard_lost(self, shard: ShardLink) -> None:
        waiting = self._topics.link_lost(shard)
        if not self._closing:
            log.warning("redis_cluster_master_link_lost", master=str(shard.address))
            self._refresh_soon()
        if waiting and self._handler is not None:
            self._handler.on_listen_ready(waiting)  # answered now; on_gap follows the new subscription

    async def _idle(self) -> None:
        """Return when something needs the supervisor; PING the links meanwhile."""
        while not self._closing:
            assert self._classic is not None
            if self._stale or not self._classic.up:
                return
            try:
                await asyncio.wait_for(self._wake.wait(), self._health_interval)
            except TimeoutError:
                self._health_check()
            self._wake.clear()

    def _health_check(self) -> None:
        assert self._classic is not None
        links = [s.link for s in self._topics.shards.values()]
        if self._classic.link is not None:
            links.append(self._classic.link)
        for link in links:
            if time.monotonic() - link.last_seen > 3 * self._health_interval:
                link.drop("redis link silent")
            else:
                link.ping()

    # -- subscriptions ----------------------------------------------------------------

    def watch(self, topic: str) -> bool:
        """Receive ``topic``'s sharded channel (:meth:`ShardTopics.watch`)."""
        return self._topics.watch(topic)

    def unwatch(self, topic: str) -> None:
        """No local listener needs ``topic`` any more (:meth:`ShardTopics.unwatch`)."""
        self._topics.unwatch(topic)

    def _moved(self, slot: int, owner: Address) -> None:
        """A ``MOVED`` named ``slot``'s owner: read the topology from it first, and trust it
        over a map read that lags (:func:`read_slot_map`)."""
        self._redirects[slot] = owner

    def _refresh_soon(self) -> None:
        """Have the supervisor read the topology again."""
        self._stale = True
        self._wake.set()

    # -- publishing and history --------------------------------------------------------

    def _usable(self) -> RedisCluster:
        client = self._commands.client
        if client is None:
            raise BrokerUnavailable("broker is not started")
        if not self._topics.active and not self._publisher_only:
            raise BrokerUnavailable("this instance is not subscribed to redis")
        return client

    def _refused(self, exc: BaseException) -> BrokerUnavailable:
        if "MOVED" in str(exc):
            self._refresh_soon()
        return BrokerUnavailable(f"redis unavailable: {type(exc).__name__}")

    async def publish(self, topic: str, message: str, rule: TopicRule | None = None) -> Position | None:
        """``SPUBLISH`` the envelope on the topic's channel; with a ``rule`` that keeps
        history, through the library's ``<p>_publish`` (routed by its key). Never retried.

        Raises:
            BrokerUnavailable: not sent (not started, not subscribed, Redis refused or failed).
        """
        client = self._usable()
        if rule is not None and rule.has_history:
            assert self._commands.functions is not None
            return await self._commands.functions.publish(topic, message, rule)
        channel = self._topics.names.channel_of(topic)
        try:
            await client.spublish(channel, encode_publication(topic, message))
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._refused(exc) from None
        return None

    async def publish_control(self, message: dict[str, object]) -> None:
        """Classic ``PUBLISH`` on ``<channel>:control`` (reaches every node's subscribers).

        Raises:
            BrokerUnavailable: not sent.
        """
        client = self._usable()
        try:
            await client.publish(f"{self._channel}:control", encode_control(message))
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._refused(exc) from None

    async def history(self, topic: str, *, since: int, limit: int, rule: TopicRule) -> HistoryPage:
        """Read ``topic``'s history, then wait for a barrier on the link of the master that
        owns its slot (every publication up to the page's offset has then been handed on).
        While that link is down, or when the read fails, wait for the supervisor's next pass
        (which reads the topology again) and try again, for up to ``follow_timeout`` seconds.

        Raises:
            realtime.NoHistory: ``rule`` keeps no history.
            BrokerUnavailable: not readable within ``follow_timeout``, or not started.
        """
        functions = self._commands.functions
        if self._publisher_only and functions is not None:
            return await functions.read(topic, since, limit, rule)  # nothing received: no barrier
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._follow_timeout
        attempt = 0
        while True:
            try:
                return await self._history_once(topic, since, limit, rule)
            except BrokerUnavailable:
                remaining = deadline - loop.time()
                if self._commands.client is None or self._closing or remaining <= 0:
                    raise
            self._refresh_soon()  # a failover or a slot move under way: read the topology again
            await self._passes.next(remaining)
            await asyncio.sleep(min(max(deadline - loop.time(), 0), backoff_delay(attempt, initial=0.05, cap=0.5)))
            attempt += 1

    async def _history_once(self, topic: str, since: int, limit: int, rule: TopicRule) -> HistoryPage:
        """One read of ``history``, in step with the owner's link.

        Raises:
            BrokerUnavailable: not ready, no link to the owner, the read or the barrier failed.
        """
        self._usable()
        functions = self._commands.functions
        assert functions is not None
        shard = self._topics.owner(topic) if not self._stale else None
        if shard is None:
            raise BrokerUnavailable("no link to the master of this topic's slot")
        page = await functions.read(topic, since, limit, rule)
        try:
            await asyncio.wait_for(asyncio.shield(shard.link.barrier()), self._connect_timeout)
        except (ConnectionError, RuntimeError, OSError, TimeoutError) as exc:
            raise BrokerUnavailable(f"redis subscription lost: {str(exc) or type(exc).__name__}") from None
        return page
