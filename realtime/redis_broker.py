"""Redis pub/sub broker: every instance subscribes to one channel (default ``realtime``)
and to ``<channel>:control`` for control messages between instances (token revocations).

What travels on both channels is :mod:`realtime.envelope`'s codec (``{"topic", "message"}``
on the data channel, published by us or by any service in any language). Invalid
envelopes are counted, logged (at most once a second) and dropped.

The subscriber is our own small RESP client, which paces its reads under a stream of
publications (:mod:`realtime.redis_link`). A supervisor task owns the link: it reconnects with
capped, jittered exponential backoff forever, resubscribes, PINGs every
``health_interval`` seconds and drops a link that stays silent for three intervals. A
PING proves the connection, not the subscription: when the data channel has been quiet
for ``probe_interval`` seconds, a delivery probe publishes on it and drops the link if
nothing arrives within ``probe_timeout`` (:mod:`realtime.delivery_probe`).
Publishing goes through redis-py's ``redis.asyncio`` client
(:mod:`realtime.redis_publisher`).

Topics whose rule keeps history are published and read through the Redis Function
library of :mod:`realtime.redis_functions` (generated from the channel and the topic
policy), loaded at start and after every reconnect (Redis may have restarted without its
data, and its functions). A history read on a started broker then waits for a barrier on
the subscriber link (:meth:`realtime.redis_link.SubscriberLink.barrier`), so every
publication up to the page's offset has reached the handler when it returns.

Redis pub/sub is at-most-once: a publication made while this instance is unsubscribed
is lost for its listeners. Whenever the subscription is (re)established after the server
may have accepted listeners without it (every reconnect, and a first subscription made
after :meth:`RedisBroker.start` returned), the broker calls its handler's ``on_gap`` so the node
can tell its clients. And while this instance is not subscribed, it refuses to publish
(:class:`realtime.BrokerUnavailable`): it never accepts a publication its own listeners
would miss without a gap.
"""

from __future__ import annotations

import asyncio
import os
import time

import structlog
from redis.asyncio.connection import parse_url

from realtime.backoff import backoff_delay
from realtime.broker import BrokerEventHandler
from realtime.broker_inbox import BrokerInbox
from realtime.delivery_probe import PROBE_TOPIC_PREFIX, probe_delivery
from realtime.envelope import encode_control, encode_publication
from realtime.errors import BrokerUnavailable
from realtime.history import HistoryPage, Position
from realtime.redis_functions import HistoryFunctions, topic_channel
from realtime.redis_link import SubscriberLink, open_link, redis_address
from realtime.redis_presence import RedisPresence
from realtime.redis_publisher import RedisPublisher
from realtime.stats import BrokerStats
from realtime.topic_subscriptions import TopicSubscriptions
from topics import DEFAULT_POLICY, TopicPolicy, TopicRule

log = structlog.get_logger("realtime.broker")


class RedisBroker:
    """Broker over one Redis pub/sub channel; see the module docstring.

    Attributes:
        client_name: the subscriber's ``CLIENT SETNAME``, so operators can spot it in
            ``CLIENT LIST``.
    """

    kind = "redis"

    def __init__(
        self,
        url: str,
        *,
        channel: str = "realtime",
        connect_timeout: float = 2.0,
        health_interval: float = 5.0,
        backoff_cap: float = 1.0,
        batch_interval: float = 0.0,
        probe_interval: float = 15.0,
        probe_timeout: float = 5.0,
        policy: TopicPolicy = DEFAULT_POLICY,
        firehose: bool = True,
    ) -> None:
        """Args:
        url: ``redis://``, ``rediss://`` (TLS, e.g. Upstash) or ``unix://`` URL.
        channel: the pub/sub channel shared by all instances.
        connect_timeout: per connection attempt, seconds.
        health_interval: PING period on the subscriber link, seconds.
        backoff_cap: longest wait between reconnect attempts, seconds.
        batch_interval: after a read that fanned out (``on_batch_end`` returned frames),
            the link may stop reading for up to this long, seconds (0: never pause). See
            :mod:`realtime.read_pacing`.
        probe_interval: quiet time on the data channel before a delivery probe, seconds
            (0: no probe). See :mod:`realtime.delivery_probe`.
        probe_timeout: how long a delivery probe may take to come back, seconds.
        policy: the topic policy (its history sizes and ttls go into the Redis Function
            library; every instance on the channel must share it).
        firehose: also subscribe to ``channel`` itself, where raw ``PUBLISH`` from any
            language lands (every instance receives all of it); ``False`` when every
            publisher uses the per-topic channels (``/publish``, ``realtime publish``, the
            Function library).
        """
        self._params = parse_url(url)
        self._where = redis_address(self._params)
        self._channel = channel
        self._control_channel = f"{channel}:control"
        self._connect_timeout = connect_timeout
        self._health_interval = health_interval
        self._backoff_cap = backoff_cap
        self._batch_interval = batch_interval
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout
        self._handler: BrokerEventHandler | None = None
        self._publisher = RedisPublisher(url, timeout=connect_timeout)
        self._policy = policy
        self._functions: HistoryFunctions | None = None
        self._task: asyncio.Task[None] | None = None
        self._subscribing = False  # start() was called: publish only while subscribed, ever after
        self._closing = False
        self._link: SubscriberLink | None = None
        self._ready = False
        self._serving = False  # start() returned: listeners may be accepted, subscribed or not
        self._stats = BrokerStats()
        self._inbox = BrokerInbox(self._stats)
        self.client_name = f"realtime-sub-{os.getpid()}-{id(self):x}"
        self._probe_envelope = encode_publication(PROBE_TOPIC_PREFIX + self.client_name, "")
        self._probe_channel = f"{channel}:probe:{self.client_name}"  # this instance's alone
        self._firehose = firehose
        self._topics = TopicSubscriptions(channel)
        self._flush_due = False
        self._presence = RedisPresence(lambda: self._functions if self._publisher.started else None)

    @property
    def presence(self) -> RedisPresence:
        """Presence in Redis (:mod:`realtime.redis_presence`)."""
        return self._presence

    @property
    def ready(self) -> bool:
        """``True`` while subscribed."""
        return self._ready

    @property
    def stats(self) -> BrokerStats:
        """Reconnects, stalls (links dropped by the delivery probe) and invalid envelopes."""
        return self._stats

    async def start(self, handler: BrokerEventHandler) -> None:
        """Start the supervisor, which hands what it receives to ``handler``; waits up to
        ``connect_timeout`` for the first subscription (the server starts anyway, not
        ready, if Redis is down; a subscription made after this returns is announced with
        ``handler.on_gap``)."""
        self._handler = handler
        self._inbox.handler = handler
        self._subscribing = True
        self.start_publisher()
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._supervise(first), name="redis-subscriber")
        try:
            await asyncio.wait_for(asyncio.shield(first), self._connect_timeout + 0.5)
        except TimeoutError:
            log.warning("redis_not_ready_at_start", channel=self._channel)
        self._serving = True

    def start_publisher(self) -> None:
        """Create the publishing client only (for ``realtime publish``; the history
        library is loaded on its first call if Redis does not have it)."""
        self._publisher.start()
        if self._functions is None:
            self._functions = HistoryFunctions(self._publisher.client, channel=self._channel, policy=self._policy)

    async def load_functions(self) -> bool:
        """(Re)load the history library; a failure is logged (the first history call loads
        it again). Returns ``True`` if it was loaded."""
        if self._functions is None:
            return False
        try:
            await self._functions.load()
        except BrokerUnavailable as exc:
            log.warning("redis_functions_not_loaded", channel=self._channel, error=str(exc))
            return False
        return True

    def _history_functions(self) -> HistoryFunctions:
        """The library's wrapper, if this broker may call it now.

        Raises:
            BrokerUnavailable: not started, or started and not subscribed.
        """
        if self._functions is None or not self._publisher.started:
            raise BrokerUnavailable("broker is not started")
        if self._subscribing and not self._ready:
            raise BrokerUnavailable("this instance is not subscribed to redis")
        return self._functions

    async def _publish(self, channel: str, payload: bytes) -> None:
        """PUBLISH ``payload``; refused while a started broker is not subscribed (its own
        listeners would miss the publication).

        Raises:
            BrokerUnavailable: not sent (not started, not subscribed, or Redis did not take it).
        """
        if not self._publisher.started:
            raise BrokerUnavailable("broker is not started")
        if self._subscribing and not self._ready:
            raise BrokerUnavailable("this instance is not subscribed to redis")
        await self._publisher.publish(channel, payload)

    async def publish(self, topic: str, message: str, rule: TopicRule | None = None) -> Position | None:
        """PUBLISH the envelope on the channel; with a ``rule`` that keeps history, through
        the library's ``<p>_publish`` (appended to history and published with its offset
        and epoch, atomically).

        A broker started with :meth:`start` publishes only while subscribed; one with
        only :meth:`start_publisher` (``realtime publish``) publishes whenever Redis does.

        Returns:
            The publication's position when it went to history, else ``None``.

        Raises:
            BrokerUnavailable: Redis did not accept it (down, timeout, refused), or this
                instance is not subscribed; it was not sent.
        """
        if rule is not None and rule.has_history:
            return await self._history_functions().publish(topic, message, rule)
        await self._publish(topic_channel(self._channel, topic), encode_publication(topic, message))
        return None

    def watch(self, topic: str) -> bool:
        """Receive ``topic``'s channel (a local listener needs it); ``True`` if it is received
        now (subscribed, or no link at all: a GAP or recovery follows the next one), ``False``
        while the SUBSCRIBE is on its way (``on_listen_ready`` tells when it is done)."""
        topics = self._topics
        topics.want(topic)
        if not self._ready or topics.receiving(topic):
            return True
        self._flush_soon()
        return False

    def unwatch(self, topic: str) -> None:
        """No local listener needs ``topic`` any more: unsubscribe from its channel."""
        self._topics.unwant(topic)
        if self._ready:
            self._flush_soon()

    def _flush_soon(self) -> None:
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Write this pass's (un)subscriptions to the link, batched."""
        self._flush_due = False
        link = self._link
        if not self._ready or link is None:
            return
        added, removed = self._topics.changes()
        if removed:
            link.unsubscribe(removed)
        if added:
            link.subscribe(added)

    def _on_subscribed(self, channel: bytes) -> None:
        topic = self._topics.confirm(channel)
        if topic is not None and self._handler is not None:
            self._handler.on_listen_ready([topic])

    async def history(self, topic: str, *, since: int, limit: int, rule: TopicRule) -> HistoryPage:
        """Read a topic's history through the library's ``<p>_history``; on a started
        broker, then wait for a barrier on the subscriber link, so every publication up to
        the page's offset has been handed to the handler when this returns.

        Raises:
            realtime.NoHistory: ``rule`` keeps no history.
            BrokerUnavailable: Redis could not be read, or (started) this instance is not
                subscribed or lost its subscription before the barrier came back.
        """
        functions = self._history_functions()
        link = self._link if self._subscribing else None
        page = await functions.read(topic, since, limit, rule)
        if link is None:
            return page
        try:
            await asyncio.wait_for(asyncio.shield(link.barrier()), self._connect_timeout)
        except (ConnectionError, RuntimeError, OSError, TimeoutError) as exc:
            raise BrokerUnavailable(f"redis subscription lost: {str(exc) or type(exc).__name__}") from None
        return page

    async def publish_control(self, message: dict[str, object]) -> None:
        """PUBLISH a control message on ``<channel>:control``.

        Raises:
            BrokerUnavailable: Redis did not accept it, or this instance is not subscribed
                (it would miss its own control message); it was not sent.
        """
        await self._publish(self._control_channel, encode_control(message))

    async def close(self) -> None:
        """Stop the supervisor and close both connections."""
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            # Python 3.11's wait_for swallows a cancellation that arrives as the awaited
            # connect fails (seen under load: the supervisor kept reconnecting after
            # shutdown); cancel until the task ends, and the loop also checks _closing
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.1)
            await asyncio.gather(task, return_exceptions=True)
        if self._link is not None and self._link.transport is not None:
            self._link.transport.close()
        self._ready = False
        await self._publisher.close()

    async def _open(self) -> SubscriberLink:
        handler = self._handler
        channels = [self._probe_channel, *(c.decode() for c in self._topics.begin_link())]
        if self._firehose:
            channels.append(self._channel)
        return await open_link(
            self._params,
            channels=channels,
            control=self._control_channel,
            on_subscribed=self._on_subscribed,
            client_name=self.client_name,
            connect_timeout=self._connect_timeout,
            on_data=self._inbox.publication,
            on_control=self._inbox.control,
            on_batch=handler.on_batch_end if handler is not None else None,
            batch_interval=self._batch_interval,
        )

    async def _supervise(self, first: asyncio.Future[None]) -> None:
        attempt = 0
        connected_before = False
        while not self._closing:
            try:
                link = self._link = await self._open()
            except (OSError, TimeoutError, RuntimeError, ConnectionError) as exc:
                if not first.done():
                    first.set_result(None)
                delay = backoff_delay(attempt, cap=self._backoff_cap)
                log.warning(
                    "redis_connect_failed",
                    **self._where,
                    error=str(exc) or type(exc).__name__,
                    retry_in=round(delay, 3),
                    attempt=attempt + 1,
                )
                attempt += 1
                await asyncio.sleep(delay)
                continue
            await self.load_functions()
            self._topics.link_opened()
            self._ready = True
            self._flush()  # topics wanted while the link was opening
            if not first.done():
                first.set_result(None)
            if connected_before:
                self._stats.count_reconnect()
                log.info(
                    "redis_reconnected",
                    channel=self._channel,
                    reconnects=self._stats.reconnects,
                    after_attempts=attempt,
                )
            else:
                log.info("redis_subscribed", channel=self._channel, late=self._serving)
            if connected_before or self._serving:  # listeners may have been accepted without it
                assert self._handler is not None
                self._handler.on_gap()
            connected_before = True
            attempt = 0
            probe = self._start_probe(link)
            try:
                await self._watch(link)
            finally:
                self._ready = False
                waiting = self._topics.link_lost()
                if waiting and self._handler is not None:
                    self._handler.on_listen_ready(waiting)  # answered now; the next link's GAP covers them
                if probe is not None:
                    probe.cancel()
                    await asyncio.gather(probe, return_exceptions=True)

    def _start_probe(self, link: SubscriberLink) -> asyncio.Task[None] | None:
        if self._probe_interval <= 0:
            return None
        return asyncio.create_task(self._probe(link), name="redis-delivery-probe")

    async def _probe(self, link: SubscriberLink) -> None:
        async def publish() -> None:  # reaches no listener: no client can LISTEN to the topic
            await self._publish(self._probe_channel, self._probe_envelope)

        await probe_delivery(link, publish, interval=self._probe_interval, timeout=self._probe_timeout)
        self._stats.count_stall()  # it returns only after dropping a link that stopped delivering

    async def _watch(self, link: SubscriberLink) -> None:
        """Return when the link is lost; PING it and drop it when it goes silent."""
        assert link.transport is not None
        while True:
            done, _ = await asyncio.wait({link.lost}, timeout=self._health_interval)
            if done:
                exc = link.lost.exception()
                log.warning("redis_link_lost", error=str(exc) or type(exc).__name__)
                return
            if time.monotonic() - link.last_seen > 3 * self._health_interval:
                log.warning("redis_link_silent", seconds=round(time.monotonic() - link.last_seen, 1))
                link.transport.abort()
                return
            link.ping()
