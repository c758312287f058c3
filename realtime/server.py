"""The WebSocket endpoint ``GET /ws``: our own ``asyncio.Protocol`` per connection.

Every accepted TCP connection starts as a :class:`WsProtocol`. If its first request is a
valid WebSocket opening handshake for ``/ws`` (RFC 6455 section 4), the protocol answers
``101`` itself and serves the connection from then on: frames in through the sans-I/O
:class:`realtime.wsconn.WsConnection` (the connection's state, the close handshake) into
the sans-I/O :class:`realtime.protocol.Session`, frames out through the merged-write
:class:`realtime.send_queue.SendQueue` (the send queue). Anything else (every other route,
a malformed or refused handshake) is handed, with the bytes read so far, to aiohttp, wired
up by :mod:`realtime.aiohttp_adapter`. :class:`WsProtocol` only moves bytes and runs timers;
what to write and which state to enter come from :class:`realtime.wsconn.WsConnection`; close
codes and reasons from :mod:`realtime.disconnect`.

Why not aiohttp's ``WebSocketResponse``: it keeps an HTTP request, its handler task, a
reader, a queue and parser state alive for the life of the socket (several times the
memory of an idle connection here; docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable, Mapping
from typing import cast

import sentry_sdk
import structlog

from realtime.disconnect import CloseCode, reason_of
from realtime.http_errors import refusal
from realtime.limits import ConnectionLimiter, TokenBucket, client_ip
from realtime.node import Node
from realtime.protocol import RECONNECT, Session
from realtime.send_queue import SendQueue
from realtime.settings import Settings
from realtime.stall import StallGuard
from realtime.websocket import OP_BINARY, OP_TEXT
from realtime.wsconn import CLOSED, CLOSING, CONNECTING, OPEN, Closing, Head, WsConnection

log = structlog.get_logger("realtime.ws")
_ids = itertools.count(1)
_PREFIX = f"{os.getpid():x}"
CLOSE_TIMEOUT = 5.0
"""Seconds to wait for the client's CLOSE after ours before dropping the socket."""


class WsContext:
    """What every WebSocket connection of one app shares.

    Attributes:
        node: the node (topic index, broker, peers).
        settings: the settings.
        limiter: connections and attempts per client address.
        guard: sockets that have not completed a request (deadlines, per-address cap,
            shedding near the descriptor limit).
        security_headers: headers added to the HTTP errors the engine answers itself
            (given by the composition root: the HTTP API's security headers).
        hsts: add ``Strict-Transport-Security`` to those errors (not in development).
    """

    __slots__ = (
        "client_ip_header", "guard", "hsts", "limiter", "node", "security_headers", "settings", "shutting_down",
    )  # fmt: skip

    def __init__(
        self,
        node: Node,
        settings: Settings,
        limiter: ConnectionLimiter,
        *,
        security_headers: Mapping[str, str] | None = None,
    ) -> None:
        self.node = node
        self.settings = settings
        self.limiter = limiter
        self.client_ip_header = settings.server.client_ip_header.lower()
        self.security_headers: Mapping[str, str] = security_headers or {}
        self.hsts = settings.server.environment != "development"
        self.guard = StallGuard(
            head_timeout=settings.server.http_head_timeout,
            body_timeout=settings.server.http_body_timeout,
            # behind a proxy (CLIENT_IP_HEADER) every socket comes from the proxy's address
            max_per_ip=0 if settings.server.client_ip_header else settings.limits.max_pending_per_ip,
        )
        self.shutting_down = False
        """Set when shutdown starts: new handshakes get 503 (no client is upgraded after the
        RECONNECT broadcast)."""

    def count(self, status: int) -> None:
        """Count one handshake answered with ``status``."""
        self.node.stats.count_handshake(status)


class WsProtocol(asyncio.Protocol):
    """One client connection: first its HTTP request head, then (after ``101``) its
    WebSocket frames. Implements :class:`realtime.node.Peer`.

    Attributes:
        ws: the connection's state machine (state, close code, frame reader).
        conn: the send queue (set once the WebSocket is open).
        session: the protocol session (set once the WebSocket is open).
    """

    __slots__ = (
        "_adopted", "_ctx", "_done", "_http", "_ip", "_last_rx", "_opened", "_timer", "_transport",
        "conn", "session", "ws",
    )  # fmt: skip

    conn: SendQueue
    session: Session

    def __init__(self, ctx: WsContext, http: Callable[[], asyncio.Protocol] | None) -> None:
        """Args:
        ctx: the app's shared context.
        http: aiohttp's protocol factory for connections that are not ours (``None``
            when adopting a socket aiohttp already upgraded).
        """
        self._ctx = ctx
        self._http = http
        self.ws = WsConnection(ctx.settings.limits.max_frame_bytes)
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._ip = ""
        self._opened = 0.0
        self._last_rx = 0.0
        self._adopted: asyncio.BaseProtocol | None = None
        self._done: asyncio.Future[None] | None = None

    # -- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start reading the request head: the socket is pending in the guard until the
        head completes (``HTTP_HEAD_TIMEOUT`` applies). Both loops set ``TCP_NODELAY`` on
        every TCP socket they accept, so frames leave without waiting."""
        self._transport = tcp = cast(asyncio.Transport, transport)
        peer = tcp.get_extra_info("peername")
        self._ip = peer[0] if peer else "unknown"  # the socket's peer, until the handshake names the client
        self._ctx.guard.accepted(tcp, self._ip)

    def data_received(self, data: bytes) -> None:
        """Frames once open; the request head before."""
        state = self.ws.state
        if state is OPEN or state is CLOSING:
            self._frames(data)
        elif state is CONNECTING:
            self._head_received(data)

    def eof_received(self) -> bool | None:
        """The client half-closed: close our side too (dropped if it never drains)."""
        self._close_transport()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection: topics, limits, timers; then tell whoever waits."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        ws = self.ws
        opened = hasattr(self, "conn")  # set when the WebSocket opened
        if self._http is not None:  # accepted here (an adopted socket is counted by aiohttp's handler)
            guard = self._ctx.guard
            if ws.state is CONNECTING and self._transport is not None:
                guard.done(self._transport)
            guard.lost()
        ws.state = CLOSED
        self._transport = None
        if opened:
            ctx = self._ctx
            conn = self.conn
            conn.detach()
            ctx.node.remove_peer(self)
            ctx.limiter.release(self._ip)
            code = CloseCode.ABNORMAL if ws.close_code is None else ws.close_code
            log.debug("ws_closed", conn_id=conn.id, code=code, sent=conn.sent)
        if self._done is not None and not self._done.done():
            self._done.set_result(None)
        if self._adopted is not None:
            self._adopted.connection_lost(exc)
            self._adopted = None

    # -- handshake ------------------------------------------------------------------

    def _head_received(self, data: bytes) -> None:
        got = self.ws.receive_head(data)
        if got is None:
            return
        if not isinstance(got, Head):
            self._handoff(got)  # aiohttp answers it (a refused /ws handshake as JSON)
            return
        head = got.head
        ctx = self._ctx
        transport = self._transport
        assert transport is not None
        ctx.guard.done(transport)  # a complete WebSocket handshake: no longer pending
        ip = client_ip(self._ip, head.headers, ctx.client_ip_header)
        if ctx.shutting_down:
            self._refuse(transport, 503, "server shutting down; reconnect", head.headers)
            return
        refused = ctx.limiter.admit(ip)
        if refused is not None:
            log.info("ws_refused", reason=refused, ip=ip)
            self._refuse(transport, 429, refused, head.headers)
            return
        ctx.count(101)
        transport.write(self.ws.accept(got.key))
        self._open(transport, ip)
        if got.rest:
            self._frames(got.rest)

    def _refuse(self, transport: asyncio.Transport, status: int, message: str, headers: Mapping[str, str]) -> None:
        """Answer the handshake with a JSON error (429, 503) and close."""
        self._ctx.count(status)
        transport.write(refusal(status, message, headers.get("x-request-id", "")))
        self.ws.reject()
        self._close_transport()

    def _handoff(self, data: bytes) -> None:
        """Give the connection, and what it sent so far, to aiohttp."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.ws.handed_off()
        transport, self._transport = self._transport, None
        if transport is None or self._http is None:
            return
        if transport.is_closing():
            self._ctx.guard.done(transport)  # its connection_lost comes here, in state CLOSED
            return
        handler = self._http()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        handler.data_received(data)

    def adopt(
        self, transport: asyncio.Transport, ip: str, previous: asyncio.BaseProtocol, tail: bytes = b""
    ) -> asyncio.Future[None]:
        """Serve a socket aiohttp upgraded (``101`` already written); returns a future
        done when the connection is lost. ``previous`` (aiohttp's protocol) is told
        ``connection_lost`` then, so aiohttp forgets the connection as usual. ``tail``: bytes
        the client sent after its handshake that aiohttp read already."""
        self._adopted = previous
        self._done = asyncio.get_running_loop().create_future()
        transport.set_protocol(self)
        self.ws.open()
        self._open(transport, ip)
        if not transport.is_reading():
            transport.resume_reading()  # aiohttp pauses a socket whose unparsed tail grew large
        if tail:
            self._frames(tail)
        return self._done

    def _open(self, transport: asyncio.Transport, ip: str) -> None:
        ctx = self._ctx
        node = ctx.node
        settings = ctx.settings
        if self._timer is not None:
            self._timer.cancel()
        conn_id = f"{_PREFIX}-{next(_ids)}"
        self._transport = transport
        self.conn = SendQueue(
            conn_id,
            transport,
            node.scheduler,
            max_bytes=settings.limits.send_queue_max_bytes,
            max_messages=settings.limits.send_queue_max_messages,
            on_overflow=self._slow_consumer,
        )
        rate = (
            TokenBucket(settings.limits.listen_rate, settings.limits.listen_burst)
            if settings.limits.listen_rate > 0
            else None
        )
        self.session = node.new_session(self.conn, max_topics=settings.limits.max_topics_per_connection, rate=rate)
        self._ip = ip
        loop = asyncio.get_running_loop()
        self._opened = self._last_rx = now = loop.time()
        self._timer = loop.call_at(
            now + min(settings.limits.listen_timeout, settings.limits.idle_timeout), self._deadline
        )
        node.add_peer(self)
        log.debug("ws_connected", conn_id=conn_id, peer=ip)

    # -- frames ---------------------------------------------------------------------

    def _frames(self, data: bytes) -> None:
        self._last_rx = asyncio.get_running_loop().time()
        messages, closing = self.ws.receive_data(data)
        if messages:
            try:
                self._handle(messages)
            except Exception as exc:
                log.exception("ws_frame_failed", conn_id=self.conn.id)
                sentry_sdk.capture_exception(exc)  # a no-op unless SENTRY_DSN is set
                closing = self.ws.close(CloseCode.INTERNAL_ERROR) or closing
        if closing is not None:
            self._enter(closing)

    def _handle(self, messages: list[tuple[int, bytes]]) -> None:
        conn = self.conn
        session = self.session
        for opcode, payload in messages:
            if conn.closed:
                return  # closed while handling (a slow consumer): the rest is ignored
            if opcode == OP_TEXT:
                reply = session.receive(payload)
                if reply:  # empty: a LISTEN answered once the broker receives its topics
                    conn.send_payload(reply)
            elif opcode == OP_BINARY:
                conn.send_payload(session.receive_binary())
            else:  # OP_PONG: the answer to a PING, queued behind the replies before it
                conn.send(payload)

    # -- closing --------------------------------------------------------------------

    def close(self, code: int, reason: str | None = None) -> None:
        """Start the closing handshake with ``code``: flush what is queued (not for a slow
        consumer), send CLOSE, and drop the socket if the client's CLOSE does not arrive
        within ``CLOSE_TIMEOUT`` seconds. Idempotent; callable from anywhere.

        Args:
            code: a :class:`realtime.disconnect.CloseCode`.
            reason: the CLOSE reason (default: the table's in :mod:`realtime.disconnect`).
        """
        closing = self.ws.close(code, reason)
        if closing is not None:
            self._enter(closing)

    def _enter(self, closing: Closing) -> None:
        """Carry out one close step of the state machine: pending frames, bytes, timers."""
        conn = self.conn
        if closing.flush:
            conn.flush()
        conn.stop()
        transport = self._transport
        if closing.data and transport is not None and not transport.is_closing():
            transport.write(closing.data)
        if closing.state is CLOSED:
            self._close_transport()  # the server closes TCP first (RFC 6455 section 7.1.1)
        else:
            self._arm_abort()

    def _close_transport(self) -> None:
        """Close TCP once the buffer drains; drop it if that takes ``CLOSE_TIMEOUT`` seconds
        (a client that stops reading must not keep its socket and slot)."""
        if self._transport is not None:
            self._transport.close()
            self._arm_abort()

    def _arm_abort(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self._abort)

    @property
    def address(self) -> str:
        """The client's address (:func:`realtime.limits.client_ip`; the :class:`realtime.node.Peer` interface)."""
        return self._ip

    def close_soon(self, code: int, reason: str) -> None:
        """:meth:`close` (the :class:`realtime.node.Peer` interface)."""
        self.close(code, reason)

    def _deadline(self) -> None:
        """Close after ``LISTEN_TIMEOUT`` without a LISTEN or ``IDLE_TIMEOUT`` without a frame."""
        self._timer = None
        if self.ws.state is not OPEN:
            return
        settings = self._ctx.settings
        if not self.session.listening:
            deadline, code = self._opened + settings.limits.listen_timeout, CloseCode.LISTEN_TIMEOUT
        else:
            deadline, code = self._last_rx + settings.limits.idle_timeout, CloseCode.IDLE_TIMEOUT
        loop = asyncio.get_running_loop()
        if loop.time() >= deadline:
            self.close(code)
        else:
            self._timer = loop.call_at(deadline, self._deadline)

    def _abort(self) -> None:
        self._timer = None
        if self._transport is not None:
            self._transport.abort()

    def _slow_consumer(self, conn: SendQueue) -> None:
        self._ctx.node.stats.count_slow_consumer()
        log.warning("slow_consumer_closed", conn_id=conn.id)
        self.close(CloseCode.SLOW_CONSUMER)


async def shutdown_peers(ctx: WsContext, grace: float) -> None:
    """Refuse new handshakes (503), send RECONNECT to every client, wait up to ``grace``
    seconds for them to leave, then close the rest with 1001 (going away)."""
    ctx.shutting_down = True
    node = ctx.node
    if not node.peers:
        return
    log.info("shutdown_reconnect_sent", connections=len(node.peers), grace=grace)
    node.broadcast(RECONNECT)
    node.scheduler.flush()
    deadline = time.monotonic() + grace
    while node.peers and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    for peer in list(node.peers.values()):
        peer.close_soon(CloseCode.GOING_AWAY, reason_of(CloseCode.GOING_AWAY))
    deadline = time.monotonic() + CLOSE_TIMEOUT + 1.0
    while node.peers and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
