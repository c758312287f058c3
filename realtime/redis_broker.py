"""Redis pub/sub broker: every instance subscribes to one channel (default ``realtime``)
and to ``<channel>:control`` for control messages between instances (token revocations).

Wire envelope on the channel, published by us or by any service in any language::

    {"topic": "dream:update.abc", "message": "<string>" | <any JSON value>}

A ``message`` that is not a string is delivered JSON-encoded, as in Twitch PubSub.
Invalid envelopes are counted, logged (at most once a second) and dropped.

The subscriber is our own small RESP client (an :class:`asyncio.Protocol` fed through
``hiredis.Reader``): a burst of publications read in one ``data_received`` is fanned out
in one event-loop pass, so writes to each client merge. With ``batch_interval`` set (the
server passes ``WRITE_INTERVAL``), a read that fanned something out is flushed to the
clients at once and, where a rest will gather two or more publications, the link then
stops reading until ``batch_interval`` seconds after this read began: under a stream of
publications the process wakes up, reads and writes once per interval instead of once per
publication, at the same latency as pacing the writes alone (a publication waits at most
one interval, plus the fan-out of the batch before it, either way). A rest is taken when
two or more publications arrived since the previous delivering read, or when that read
began less than half an interval before; so an isolated publication, a stream slower than
two publications per interval, or a rest that gathered only one, is not followed by a
rest, which would only cost a second wake-up (a timer) per publication (a loop stalled for
more than a quarter interval also skips one rest). The rest counts from the start of the
read, so a batch that took longer than the interval is followed by an immediate read. A
link receiving 32 KiB or more per interval never pauses (so a rest's arrivals always fit
in the socket buffer and the pause cannot cap throughput or back data up into Redis); a
read that wrote no publication (other topics, a PONG, a control message) never pauses
either. Over TLS the pause only holds back delivery to us (the TLS layer keeps reading the
socket), so it saves less there. A supervisor task owns the link: it reconnects with
capped, jittered exponential backoff forever, resubscribes, PINGs every
``health_interval`` seconds and drops a link that stays silent for three intervals. A
PING proves the connection, not the subscription: when the data channel has been quiet
for ``probe_interval`` seconds, a delivery probe publishes on it and drops the link if
nothing arrives within ``probe_timeout`` (:mod:`realtime.delivery_probe`).
Publishing goes through redis-py's ``redis.asyncio`` client.

Redis pub/sub is at-most-once: a publication made while this instance is unsubscribed
is lost for its listeners. Whenever the subscription is (re)established after the server
may have accepted listeners without it (every reconnect, and a first subscription made
after :meth:`RedisBroker.start` returned), the broker calls ``on_gap`` so the node can
tell its clients. And while this instance is not subscribed, it refuses to publish
(:class:`realtime.BrokerUnavailable`): it never accepts a publication its own listeners
would miss without a gap.
"""

from __future__ import annotations

import asyncio
import os
import random
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

import hiredis
import orjson
import redis.asyncio as aioredis
import structlog
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from realtime.broker import Deliver, OnBatch, OnControl, OnGap
from realtime.delivery_probe import PROBE_TOPIC_PREFIX, probe_delivery
from realtime.errors import BrokerUnavailable
from realtime.timer import PreciseTimer

log = structlog.get_logger("realtime.broker")


def backoff_delay(attempt: int, *, base: float = 0.1, cap: float = 1.0) -> float:
    """Capped exponential backoff with jitter: a delay in ``[d/2, d]`` seconds,
    where ``d = min(cap, base * 2**attempt)``."""
    delay: float = min(cap, base * 2.0 ** min(attempt, 16))
    return delay * (0.5 + random.random() / 2)


def _encode_command(*parts: bytes | str) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        raw = part.encode() if isinstance(part, str) else part
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


_PACE_BELOW = 32768
"""The link rests only while it receives less than this many bytes per ``batch_interval``
(in the current and the previous interval): what arrives during one rest then fits easily
in the socket's receive buffer, so resting never backs data up into Redis's output buffer
(where the pub/sub limit would cut the link). 32 KiB per 8 ms is 4 MB/s."""

_STREAM_GAP = 1.25
"""A delivering read rests only if the previous one began less than this many
``batch_interval`` before it: under a stream, paced reads come one interval (plus the
timer's ~0.2 ms) apart; a longer gap means the loop stalled, and the backlog is read at
once."""


def _retrieve(fut: asyncio.Future[None]) -> None:
    """Mark a future's exception as seen (the supervisor reads it when it cares)."""
    if not fut.cancelled():
        fut.exception()


class _Subscriber(asyncio.Protocol):
    """One RESP2 connection subscribed to the data and control channels. Not reused."""

    def __init__(
        self,
        channel: bytes,
        control: bytes,
        on_data: Callable[[bytes], None],
        on_control: Callable[[bytes], None],
        on_batch: OnBatch | None = None,
        batch_interval: float = 0.0,
    ) -> None:
        self._channel = channel
        self._control = control
        self._on_data = on_data
        self._on_control = on_control
        self._on_batch = on_batch
        self._batch_interval = batch_interval
        self._resume = PreciseTimer(asyncio.get_running_loop())  # ends a rest (resume reading)
        self._window_start = -1e9  # the current interval's start (monotonic s) and bytes received
        self._window_bytes = 0
        self._previous_bytes = 0  # bytes received in the interval before it
        self._last_delivery = -1e9  # start of the last read that delivered here (monotonic s)
        self._count = 0  # publications on the data channel since the last paced delivering read
        self.received = 0  # publications on the data channel, ever (read by the delivery probe)
        self._waiter: asyncio.Future[None] | None = None  # resolved by the next publication (probe)
        self._waiter_mark = 0  # ``received`` when the waiter was made
        self._confirmations = 0
        self._reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for fut in (self.subscribed, self.lost):
            fut.add_done_callback(_retrieve)
        self.last_seen = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but implement it
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.last_seen = started = time.monotonic()
        reader = self._reader
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not False:
                try:
                    self._handle(reply)
                except Exception:  # one bad publication must never cost the link
                    log.exception("publication_dropped")
        except hiredis.ProtocolError as exc:
            self._fail(RuntimeError(f"redis protocol error: {exc}"))
            return
        waiter = self._waiter
        if waiter is not None and self.received != self._waiter_mark:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        # a quiet link (< 32 KiB per interval): write the batch now and pace the next read. A
        # busy one keeps reading, and the flush scheduler paces the writes.
        interval = self._batch_interval
        if started - self._window_start >= interval:
            recent = started - self._window_start < 2 * interval
            self._previous_bytes = self._window_bytes if recent else 0
            self._window_start, self._window_bytes = started, 0
        self._window_bytes += len(data)
        if interval > 0 and max(self._window_bytes, self._previous_bytes) < _PACE_BELOW and self._on_batch:
            try:
                wrote = self._on_batch()
            except Exception:  # a failed flush must never cost the link
                log.exception("batch_flush_failed")
                return
            if not wrote:
                return
            # rest only where a rest gathers two or more publications (one wake-up, one read and
            # one write per listener for all of them): two or more arrived since the previous
            # delivering read (this read's, or reads that delivered nothing here), or that read
            # began less than half an interval before (a stream of two or more per interval).
            # A rest that gathered a single publication is not repeated (the read after a rest
            # is an interval after the one before it), and an isolated publication is not
            # followed by one: its timer would only cost a second wake-up per publication. A
            # stalled loop (the previous delivering read _STREAM_GAP intervals back or more)
            # skips a rest.
            gap = started - self._last_delivery
            count, self._count = self._count, 0
            rest = (count >= 2 or gap < interval / 2) and gap < _STREAM_GAP * interval
            self._last_delivery = started
            # the interval counts from the start of this read: a batch that took longer to fan
            # out than the interval is followed by an immediate read, never by an idle rest
            until = started + interval
            transport = self.transport
            if rest and until > time.monotonic() and transport is not None and not transport.is_closing():
                transport.pause_reading()
                self._resume.call_at(until, self._resume_reading)

    def _resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _handle(self, reply: Any) -> None:
        if isinstance(reply, list) and len(reply) == 3:
            kind = reply[0]
            if kind == b"message":
                if reply[1] == self._channel:
                    self._count += 1
                    self.received += 1
                    self._on_data(reply[2])
                elif reply[1] == self._control:
                    self._on_control(reply[2])
                return
            if kind == b"subscribe":
                self._confirmations += 1
                if self._confirmations == 2 and not self.subscribed.done():
                    self.subscribed.set_result(None)
                return
        if isinstance(reply, hiredis.ReplyError):
            self._fail(RuntimeError(f"redis refused: {reply}"))
        # +OK (AUTH), ["pong", ""] (health check): nothing to do

    def next_delivery(self) -> asyncio.Future[None]:
        """A future resolved when the next publication arrives on the data channel."""
        if self._waiter is None or self._waiter.done():
            self._waiter = asyncio.get_running_loop().create_future()
            self._waiter_mark = self.received
        return self._waiter

    def drop(self, reason: str) -> None:
        """Abort the link (``lost`` fails with ``reason``); the supervisor reconnects."""
        self._fail(RuntimeError(reason))

    def _fail(self, exc: BaseException) -> None:
        for fut in (self.subscribed, self.lost):
            if not fut.done():
                fut.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._resume.close()
        error = exc or ConnectionError("redis closed the connection")
        for fut in (self.subscribed, self.lost):
            if not fut.done():
                fut.set_exception(error)


class RedisBroker:
    """Broker over one Redis pub/sub channel; see the module docstring.

    Attributes:
        reconnects: number of times the subscriber link came back after a loss.
        stalls: links dropped by the delivery probe (answering, not delivering).
        invalid_envelopes: number of publications dropped as malformed.
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
    ) -> None:
        """Args:
        url: ``redis://``, ``rediss://`` (TLS, e.g. Upstash) or ``unix://`` URL.
        channel: the pub/sub channel shared by all instances.
        connect_timeout: per connection attempt, seconds.
        health_interval: PING period on the subscriber link, seconds.
        backoff_cap: longest wait between reconnect attempts, seconds.
        batch_interval: after a read that fanned out (``on_batch`` returned ``True``),
            stop reading for this long, seconds (0: never pause). See the module docstring.
        probe_interval: quiet time on the data channel before a delivery probe, seconds
            (0: no probe). See :mod:`realtime.delivery_probe`.
        probe_timeout: how long a delivery probe may take to come back, seconds.
        """
        self._url = url
        self._params = parse_url(url)
        self._where = _address(self._params)
        self._channel = channel
        self._connect_timeout = connect_timeout
        self._health_interval = health_interval
        self._backoff_cap = backoff_cap
        self._batch_interval = batch_interval
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout
        self._on_batch: OnBatch | None = None
        self._deliver: Deliver | None = None
        self._on_gap: OnGap | None = None
        self._on_control: OnControl | None = None
        self._control_channel = f"{channel}:control"
        self._client: aioredis.Redis | None = None
        self._task: asyncio.Task[None] | None = None
        self._link: _Subscriber | None = None
        self._ready = False
        self._serving = False  # start() returned: listeners may be accepted, subscribed or not
        self._last_invalid_log = 0.0
        self.reconnects = 0
        self.stalls = 0
        self.invalid_envelopes = 0
        self.client_name = f"realtime-sub-{os.getpid()}-{id(self):x}"
        """The subscriber's ``CLIENT SETNAME``, so operators can spot it in ``CLIENT LIST``."""
        self._probe_envelope = orjson.dumps({"topic": PROBE_TOPIC_PREFIX + self.client_name, "message": ""})

    @property
    def ready(self) -> bool:
        """``True`` while subscribed."""
        return self._ready

    async def start(
        self, deliver: Deliver, on_gap: OnGap, on_control: OnControl, on_batch: OnBatch | None = None
    ) -> None:
        """Start the supervisor; waits up to ``connect_timeout`` for the first subscription
        (the server starts anyway, not ready, if Redis is down; a subscription made after
        this returns is announced with ``on_gap``)."""
        self._deliver, self._on_gap, self._on_control = deliver, on_gap, on_control
        self._on_batch = on_batch
        self.start_publisher()
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._supervise(first), name="redis-subscriber")
        try:
            await asyncio.wait_for(asyncio.shield(first), self._connect_timeout + 0.5)
        except TimeoutError:
            log.warning("redis_not_ready_at_start", channel=self._channel)
        self._serving = True

    def start_publisher(self) -> None:
        """Create the publishing client only (for ``realtime publish``)."""
        if self._client is None:
            self._client = aioredis.from_url(
                self._url,
                socket_connect_timeout=self._connect_timeout,
                socket_timeout=self._connect_timeout,
                # never retry a PUBLISH: one that reached Redis before its reply was lost would be
                # sent twice, or answered 503 though delivered. A PING before a command on a
                # connection idle for 5 s catches most dead connections first.
                retry=Retry(NoBackoff(), 0),
                health_check_interval=5,
            )

    async def _publish(self, channel: str, payload: bytes) -> None:
        """PUBLISH ``payload``; refused while a started broker is not subscribed (its own
        listeners would miss the publication).

        Raises:
            BrokerUnavailable: not sent (not started, not subscribed, or Redis did not take it).
        """
        if self._client is None:
            raise BrokerUnavailable("broker is not started")
        if self._task is not None and not self._ready:
            raise BrokerUnavailable("this instance is not subscribed to redis")
        try:
            await self._client.publish(channel, payload)
        except (RedisError, OSError, TimeoutError) as exc:
            raise BrokerUnavailable(f"redis unavailable: {type(exc).__name__}") from None

    async def publish(self, topic: str, message: str) -> None:
        """PUBLISH the envelope on the channel.

        A broker started with :meth:`start` publishes only while subscribed; one with
        only :meth:`start_publisher` (``realtime publish``) publishes whenever Redis does.

        Raises:
            BrokerUnavailable: Redis did not accept it (down, timeout, refused), or this
                instance is not subscribed; it was not sent.
        """
        await self._publish(self._channel, orjson.dumps({"topic": topic, "message": message}))

    async def publish_control(self, message: dict[str, object]) -> None:
        """PUBLISH a control message on ``<channel>:control``.

        Raises:
            BrokerUnavailable: Redis did not accept it, or this instance is not subscribed
                (it would miss its own control message); it was not sent.
        """
        await self._publish(self._control_channel, orjson.dumps(message))

    async def close(self) -> None:
        """Stop the supervisor and close both connections."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._link is not None and self._link.transport is not None:
            self._link.transport.close()
        self._ready = False
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _open(self) -> _Subscriber:
        loop = asyncio.get_running_loop()
        channel, control = self._channel.encode(), self._control_channel.encode()
        params = self._params

        def factory() -> _Subscriber:
            return _Subscriber(
                channel, control, self._on_envelope, self._on_control_data, self._on_batch, self._batch_interval
            )

        if params.get("connection_class") is UnixDomainSocketConnection:
            connect = loop.create_unix_connection(factory, params["path"])
        else:
            tls = None
            if params.get("connection_class") is SSLConnection:
                tls = ssl.create_default_context()
                if params.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
                    tls.check_hostname = False
                    tls.verify_mode = ssl.CERT_NONE
            host, port = params.get("host", "localhost"), params.get("port", 6379)
            connect = loop.create_connection(factory, host, port, ssl=tls)
        _, link = await asyncio.wait_for(connect, self._connect_timeout)
        assert link.transport is not None
        commands = []
        if params.get("password"):
            auth = [params["username"]] if params.get("username") else []
            commands.append(_encode_command("AUTH", *auth, params["password"]))
        commands.append(_encode_command("CLIENT", "SETNAME", self.client_name))
        commands.append(_encode_command("SUBSCRIBE", channel, control))
        link.transport.write(b"".join(commands))
        try:
            await asyncio.wait_for(asyncio.shield(link.subscribed), self._connect_timeout)
        except BaseException:
            link.transport.abort()
            raise
        return link

    async def _supervise(self, first: asyncio.Future[None]) -> None:
        attempt = 0
        connected_before = False
        while True:
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
            self._ready = True
            if not first.done():
                first.set_result(None)
            if connected_before:
                self.reconnects += 1
                log.info("redis_reconnected", channel=self._channel, reconnects=self.reconnects, after_attempts=attempt)
            else:
                log.info("redis_subscribed", channel=self._channel, late=self._serving)
            if connected_before or self._serving:  # listeners may have been accepted without it
                assert self._on_gap is not None
                self._on_gap()
            connected_before = True
            attempt = 0
            probe = self._start_probe(link)
            try:
                await self._watch(link)
            finally:
                self._ready = False
                if probe is not None:
                    probe.cancel()
                    await asyncio.gather(probe, return_exceptions=True)

    def _start_probe(self, link: _Subscriber) -> asyncio.Task[None] | None:
        if self._probe_interval <= 0:
            return None
        return asyncio.create_task(self._probe(link), name="redis-delivery-probe")

    async def _probe(self, link: _Subscriber) -> None:
        async def publish() -> None:  # reaches no listener: no client can LISTEN to the topic
            await self._publish(self._channel, self._probe_envelope)

        await probe_delivery(link, publish, interval=self._probe_interval, timeout=self._probe_timeout)
        self.stalls += 1  # it returns only after dropping a link that stopped delivering

    async def _watch(self, link: _Subscriber) -> None:
        """Return when the link is lost; PING it and drop it when it goes silent."""
        assert link.transport is not None
        ping = _encode_command("PING")
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
            link.transport.write(ping)

    def _on_envelope(self, data: bytes) -> None:
        try:
            envelope = orjson.loads(data)
            topic = envelope["topic"]
            message = envelope["message"]
            if not isinstance(topic, str):
                raise TypeError("topic must be a string")
            if not isinstance(message, str):
                message = orjson.dumps(message).decode()  # TypeError past 255 levels of nesting
        except (orjson.JSONDecodeError, TypeError, KeyError) as exc:
            self._invalid(exc)
            return
        assert self._deliver is not None
        try:
            self._deliver(topic, message)
        except Exception:
            log.exception("deliver_failed", topic=topic[:128])

    def _on_control_data(self, data: bytes) -> None:
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            self._invalid(exc)
            return
        if not isinstance(message, dict):
            self._invalid(TypeError("control message must be an object"))
            return
        assert self._on_control is not None
        try:
            self._on_control(message)
        except Exception:
            log.exception("control_failed")

    def _invalid(self, exc: Exception) -> None:
        self.invalid_envelopes += 1
        now = time.monotonic()
        if now - self._last_invalid_log >= 1.0:
            self._last_invalid_log = now
            log.warning(
                "invalid_envelope_dropped",
                error=f"{type(exc).__name__}: {exc}",
                total_dropped=self.invalid_envelopes,
                expected='{"topic": "...", "message": ...}',
            )


def _address(params: Mapping[str, Any]) -> dict[str, Any]:
    """Where a parsed Redis URL points, for log lines: ``{"host", "port"}`` or ``{"path"}``
    (never the password)."""
    if params.get("connection_class") is UnixDomainSocketConnection:
        return {"path": params.get("path", "")}
    return {"host": params.get("host", "localhost"), "port": params.get("port", 6379)}
