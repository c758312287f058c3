"""The Redis subscriber link: one RESP2 connection subscribed to the data and control
channels, and how it is opened.

The subscriber is our own small RESP client (an :class:`asyncio.Protocol` fed through
``hiredis.Reader``): a burst of publications read in one ``data_received`` is fanned out
in one event-loop pass, so writes to each client merge. With ``batch_interval`` set (the
server passes ``WRITE_INTERVAL``), a quiet link (under 32 KiB per interval) writes what a
read fanned out at once, and rests (stops reading until ``batch_interval`` seconds after
that read began) only where a rest pays for its timer: when publications come dense enough
that it gathers four or more, or two or more that fan out wide
(:class:`realtime.read_pacing.ReadPacer` decides, and says why). Under such a stream the
process wakes up, reads and writes once per interval instead of once per publication, at
the same latency as pacing the writes alone; a sparser stream is read and written as it
comes, with no timer. A read that wrote no publication here (other topics, a PONG, a
control message) never rests; a busy link never does either (the flush scheduler paces its
writes). Over TLS the pause only holds back delivery to us (the TLS layer keeps reading the
socket), so it saves less there.

Barriers: a PING written on the link after a command's reply arrived on another connection
is answered after every publication Redis made before that command (Redis writes a
connection's output in order), so its PONG proves those publications were handed on
(:meth:`SubscriberLink.barrier`; the broker's history reads wait for one). Every PING the
link writes (health checks too, :meth:`SubscriberLink.ping`) is matched to its PONG in order.

The link hands raw payloads on, by channel (``on_data``, ``on_control``); what they
mean is :mod:`realtime.envelope`'s business, and reconnecting is the supervisor's
(:class:`realtime.redis_broker.RedisBroker`). A link is never reused.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import hiredis
import structlog
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection

from realtime.read_pacing import ReadPacer
from realtime.redis_cluster import key_slot
from realtime.timer import PreciseTimer

log = structlog.get_logger("realtime.broker")

OnBatchEnd = Callable[[], int]
"""Called after a quiet read: write what it fanned out now; returns how many frames its
publications queued for local listeners, 0 if none (see
:meth:`realtime.broker.BrokerEventHandler.on_batch_end`)."""


def encode_command(*parts: bytes | str) -> bytes:
    """One RESP2 command: an array of bulk strings (``str`` parts UTF-8 encoded)."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        raw = part.encode() if isinstance(part, str) else part
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


_PING = encode_command("PING")
_PONG = [b"pong", b""]
_PONGS = (_PONG, b"PONG")  # b"PONG": the reply to a PING on a link without subscriptions
_MESSAGE = (b"message", b"smessage")  # classic and sharded (Redis Cluster) pub/sub
_SUBSCRIBE = (b"subscribe", b"ssubscribe")
_UNSUBSCRIBE = (b"unsubscribe", b"sunsubscribe")


def _ignore_channel(channel: bytes) -> None:
    """The default ``on_unsubscribed``: nothing to do."""


def _retrieve(fut: asyncio.Future[None]) -> None:
    """Mark a future's exception as seen (the supervisor reads it when it cares)."""
    if not fut.cancelled():
        fut.exception()


SUBSCRIBE_BATCH = 512
"""Most channels named in one SUBSCRIBE or UNSUBSCRIBE command."""


def subscribe_commands(verb: str, channels: Iterable[bytes]) -> bytes:
    """``SUBSCRIBE`` (or ``UNSUBSCRIBE``) commands for ``channels``, at most
    :data:`SUBSCRIBE_BATCH` per command."""
    names = list(channels)
    return b"".join(
        encode_command(verb, *names[i : i + SUBSCRIBE_BATCH]) for i in range(0, len(names), SUBSCRIBE_BATCH)
    )


def shard_commands(verb: str, channels: Iterable[bytes]) -> bytes:
    """``SSUBSCRIBE`` (or ``SUNSUBSCRIBE``) commands for sharded ``channels``: one command
    per hash slot (at most :data:`SUBSCRIBE_BATCH` channels each)."""
    by_slot: dict[int, list[bytes]] = {}
    for name in channels:
        by_slot.setdefault(key_slot(name), []).append(name)
    return b"".join(subscribe_commands(verb, names) for names in by_slot.values())


class SubscriberLink(asyncio.Protocol):
    """One RESP2 connection subscribed to the control channel and to data channels (the
    firehose, this instance's probe channel, and one channel per topic with local
    listeners, added and removed while it lives: :meth:`subscribe`, :meth:`unsubscribe`).
    Not reused. An error reply fails the link, unless ``on_refused`` (given the error's
    text) returns ``True``: handled.

    Attributes:
        received: publications on the data channels, ever (read by the delivery probe).
        subscribed: resolved once every channel it was opened with is subscribed; fails if
            the link fails first.
        lost: fails with the reason the link was lost.
        last_seen: when the link last received anything (``time.monotonic()`` seconds).
    """

    def __init__(
        self,
        control: bytes,
        on_data: Callable[[bytes], None],
        on_control: Callable[[bytes], None],
        on_batch: OnBatchEnd | None = None,
        batch_interval: float = 0.0,
        *,
        initial: int = 2,
        on_subscribed: Callable[[bytes], None] | None = None,
        on_unsubscribed: Callable[[bytes], None] | None = None,
        on_refused: Callable[[str], bool] | None = None,
    ) -> None:
        self._on_refused = on_refused  # an error reply: True if handled, else the link fails
        self._initial = initial  # channels subscribed when opened: ``subscribed`` waits for them
        self._on_subscribed = on_subscribed
        self._on_unsubscribed = on_unsubscribed or _ignore_channel
        self._control = control
        self._on_data = on_data
        self._on_control = on_control
        self._on_batch = on_batch
        self._batch_interval = batch_interval
        self._resume = PreciseTimer(asyncio.get_running_loop())  # ends a rest (resume reading)
        self._pacer = ReadPacer(batch_interval)
        self.received = 0  # publications on the data channel, ever (read by the delivery probe)
        self._waiter: asyncio.Future[None] | None = None  # resolved by the next publication (probe)
        self._waiter_mark = 0  # ``received`` when the waiter was made
        self._confirmations = 0
        self._pongs: deque[list[asyncio.Future[None]] | None] = deque()  # per PING written: its barriers
        self._barriers: list[asyncio.Future[None]] | None = None  # waiting for this pass's PING
        self._reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for fut in (self.subscribed, self.lost):
            fut.add_done_callback(_retrieve)
        if initial == 0:  # opened without channels (a sharded link: channels come later)
            self.subscribed.set_result(None)
        self.last_seen = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but implement it
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.last_seen = started = time.monotonic()
        before = self.received
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
        publications = self.received - before
        waiter = self._waiter
        if waiter is not None and self.received != self._waiter_mark:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        # a quiet link writes the batch now and may rest; a busy one keeps reading (the flush
        # scheduler paces the writes)
        if self._pacer.read(started, len(data), publications) and self._on_batch is not None:
            self._end_batch(started, publications)

    def _end_batch(self, started: float, publications: int) -> None:
        """Write what this read fanned out, then rest if :class:`ReadPacer` says it pays."""
        assert self._on_batch is not None
        try:
            frames = self._on_batch()
        except Exception:  # a failed flush must never cost the link
            log.exception("batch_flush_failed")
            return
        if not frames:
            return
        until = self._pacer.rest_until(started, frames, publications)
        transport = self.transport
        if until is not None and until > time.monotonic() and transport is not None and not transport.is_closing():
            transport.pause_reading()
            self._resume.call_at(until, self._resume_reading)

    def _resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _handle(self, reply: Any) -> None:
        if isinstance(reply, list) and len(reply) == 3:
            kind = reply[0]
            if kind in _MESSAGE:
                if reply[1] == self._control:
                    self._on_control(reply[2])
                else:
                    self.received += 1
                    self._on_data(reply[2])
                return
            if kind in _SUBSCRIBE:
                self._confirmations += 1
                if self._confirmations >= self._initial and not self.subscribed.done():
                    self.subscribed.set_result(None)
                elif self._confirmations > self._initial and self._on_subscribed is not None:
                    self._on_subscribed(reply[1])
                return
            if kind in _UNSUBSCRIBE:
                self._on_unsubscribed(reply[1])
                return
        if reply in _PONGS:
            self._pong()
        elif isinstance(reply, hiredis.ReplyError):
            self._refused(str(reply))
        # +OK (AUTH): nothing to do

    def _refused(self, error: str) -> None:
        """An error reply: ``on_refused`` handles it, or the link fails."""
        if self._on_refused is None or not self._on_refused(error):
            self._fail(RuntimeError(f"redis refused: {error}"))

    def _pong(self) -> None:
        """The answer to the oldest PING written: resolve its barriers."""
        barriers = self._pongs.popleft() if self._pongs else None
        for fut in barriers or ():
            if not fut.done():
                fut.set_result(None)

    def subscribe(self, channels: Iterable[bytes]) -> None:
        """SUBSCRIBE to more channels; each confirmation is handed to ``on_subscribed``."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(subscribe_commands("SUBSCRIBE", channels))

    def unsubscribe(self, channels: Iterable[bytes]) -> None:
        """UNSUBSCRIBE from channels (publications already on the way may still arrive)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(subscribe_commands("UNSUBSCRIBE", channels))

    def ssubscribe(self, channels: Iterable[bytes]) -> None:
        """SSUBSCRIBE to sharded channels (Redis Cluster): one command per hash slot (Redis
        refuses channels of several slots in one command), pipelined; each confirmation is
        handed to ``on_subscribed``."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(shard_commands("SSUBSCRIBE", channels))

    def sunsubscribe(self, channels: Iterable[bytes]) -> None:
        """SUNSUBSCRIBE from sharded channels, one command per hash slot; each reply is
        handed to ``on_unsubscribed`` (as is a ``sunsubscribe`` Redis pushes unasked)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(shard_commands("SUNSUBSCRIBE", channels))

    def ping(self) -> None:
        """Write a PING (a health check; its PONG refreshes ``last_seen``)."""
        if self.transport is not None and not self.transport.is_closing():
            self._pongs.append(None)
            self.transport.write(_PING)

    def barrier(self) -> asyncio.Future[None]:
        """A future resolved once every publication Redis made before now was handed on.

        Call it after the reply of a command on another connection arrived: a PING is
        written at the end of this event-loop pass (shared by every barrier asked for in
        it) and the future resolves when its PONG is read, after everything Redis sent
        before it.

        Returns:
            The future; it fails (``ConnectionError``, or the reason the link was lost) if
            the link is lost first.
        """
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_retrieve)
        if self.lost.done():
            fut.set_exception(ConnectionError("redis link lost"))
            return fut
        if self._barriers is None:
            self._barriers = []
            asyncio.get_running_loop().call_soon(self._write_barrier)
        self._barriers.append(fut)
        return fut

    def _write_barrier(self) -> None:
        barriers, self._barriers = self._barriers or [], None
        transport = self.transport
        if transport is None or transport.is_closing() or self.lost.done():
            self._fail_barriers([barriers], ConnectionError("redis link lost"))
            return
        self._pongs.append(barriers)
        transport.write(_PING)

    def _fail_barriers(self, groups: Iterable[list[asyncio.Future[None]] | None], exc: BaseException) -> None:
        for barriers in groups:
            for fut in barriers or ():
                if not fut.done():
                    fut.set_exception(exc)

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
        self._fail_barriers(self._pongs, exc)
        self._pongs.clear()
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._resume.close()
        error = exc or ConnectionError("redis closed the connection")
        for fut in (self.subscribed, self.lost):
            if not fut.done():
                fut.set_exception(error)
        self._fail_barriers(self._pongs, error)
        self._pongs.clear()


async def open_link(
    params: Mapping[str, Any],
    *,
    channels: Iterable[str],
    control: str,
    client_name: str,
    connect_timeout: float,
    on_data: Callable[[bytes], None],
    on_control: Callable[[bytes], None],
    on_batch: OnBatchEnd | None = None,
    batch_interval: float = 0.0,
    on_subscribed: Callable[[bytes], None] | None = None,
) -> SubscriberLink:
    """Connect, authenticate, name the connection and subscribe to the channels.

    Args:
        params: the parsed Redis URL (``redis.asyncio.connection.parse_url``): TCP, TLS
            (``rediss://``) or a Unix socket.
        channels: the data channels (distinct).
        control: the control channel.
        client_name: the ``CLIENT SETNAME`` (so operators can spot the link in ``CLIENT LIST``).
        connect_timeout: for connecting, and again for the subscription, seconds.
        on_data: called with each payload on a data channel.
        on_control: called with each payload on ``control``.
        on_batch: called after a read that handed publications on (see the module docstring).
        batch_interval: the pacing interval, seconds (0: never pause).
        on_subscribed: called with each channel subscribed later (:meth:`SubscriberLink.subscribe`).

    Returns:
        The subscribed link.

    Raises:
        OSError, TimeoutError, ConnectionError: Redis cannot be reached in time.
        RuntimeError: Redis refused a command (e.g. a wrong password).
    """
    loop = asyncio.get_running_loop()
    control_channel = control.encode()
    data_channels = [c.encode() for c in channels]

    def factory() -> SubscriberLink:
        return SubscriberLink(
            control_channel,
            on_data,
            on_control,
            on_batch,
            batch_interval,
            initial=1 + len(data_channels),
            on_subscribed=on_subscribed,
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
    _, link = await asyncio.wait_for(connect, connect_timeout)
    assert link.transport is not None
    commands = []
    if params.get("password"):
        auth = [params["username"]] if params.get("username") else []
        commands.append(encode_command("AUTH", *auth, params["password"]))
    commands.append(encode_command("CLIENT", "SETNAME", client_name))
    commands.append(subscribe_commands("SUBSCRIBE", [control_channel, *data_channels]))
    link.transport.write(b"".join(commands))
    try:
        await asyncio.wait_for(asyncio.shield(link.subscribed), connect_timeout)
    except BaseException:
        link.transport.abort()
        raise
    return link


def redis_address(params: Mapping[str, Any]) -> dict[str, Any]:
    """Where a parsed Redis URL points, for log lines: ``{"host", "port"}`` or ``{"path"}``
    (never the password)."""
    if params.get("connection_class") is UnixDomainSocketConnection:
        return {"path": params.get("path", "")}
    return {"host": params.get("host", "localhost"), "port": params.get("port", 6379)}
