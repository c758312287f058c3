"""The WebSocket endpoint ``GET /ws``: our own ``asyncio.Protocol`` per connection.

Every accepted TCP connection starts as a :class:`WsProtocol`. If its first request is a
valid WebSocket opening handshake for ``/ws`` (RFC 6455 section 4), the protocol answers
``101`` itself and serves the connection from then on: frames in through
:class:`realtime.websocket.FrameReader` into the sans-I/O :class:`realtime.protocol.Session`,
frames out through the merged-write :class:`realtime.connection.Connection`. Anything else
(every other route, a malformed or refused handshake) is handed, with the bytes read so far,
to aiohttp's request handler (``transport.set_protocol``), which serves HTTP as usual.

aiohttp's route for ``/ws`` (:func:`websocket_handler`) answers handshakes that reach it on a
reused keep-alive connection, and the errors: 429 (limits), 400 and 426 (bad handshakes), as
JSON with the usual headers. On success it adopts the socket into a :class:`WsProtocol` too,
so there is one implementation of the WebSocket side.

Why not aiohttp's ``WebSocketResponse``: it keeps an HTTP request, its handler task, a
reader, a queue and parser state alive for the life of the socket (~11 KB per idle
connection here). Close codes are listed in :mod:`realtime.connection` and the README.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable
from typing import Any, cast

import orjson
import sentry_sdk
import structlog
from aiohttp import web

from http_api.errors import json_error, request_id_from
from realtime.connection import (
    CLOSE_GOING_AWAY,
    CLOSE_IDLE_TIMEOUT,
    CLOSE_LISTEN_TIMEOUT,
    CLOSE_SLOW_CONSUMER,
    Connection,
)
from realtime.http_handoff import GuardedRequestHandler
from realtime.limits import ConnectionLimiter, TokenBucket, client_ip
from realtime.node import Node
from realtime.protocol import RECONNECT, Session, State
from realtime.settings import Settings
from realtime.stall import StallGuard, limit_descriptors
from realtime.websocket import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_INVALID_DATA,
    MAX_HEAD_BYTES,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    FrameReader,
    HandshakeError,
    ProtocolError,
    close_frame,
    parse_close,
    parse_head,
    pong_frame,
    switching_protocols,
    upgrade_key,
)

log = structlog.get_logger("realtime.ws")
_ids = itertools.count(1)
_PREFIX = f"{os.getpid():x}"
_REASONS = {
    CLOSE_LISTEN_TIMEOUT: "no LISTEN in time",
    CLOSE_IDLE_TIMEOUT: "idle timeout",
    CLOSE_SLOW_CONSUMER: "slow consumer",
    CLOSE_GOING_AWAY: "server shutting down",
}
CLOSE_TIMEOUT = 5.0
"""Seconds to wait for the client's CLOSE after ours before dropping the socket."""
_WS_PREFIX = b"GET /ws"

_HEAD, _OPEN, _CLOSING, _CLOSED = range(4)


class WsContext:
    """What every WebSocket connection of one app shares.

    Attributes:
        node: the node (topic index, broker, peers).
        settings: the settings.
        limiter: connections and attempts per client address.
        guard: sockets that have not completed a request (deadlines, per-address cap,
            shedding near the descriptor limit).
    """

    __slots__ = ("client_ip_header", "guard", "limiter", "node", "settings", "shutting_down")

    def __init__(self, node: Node, settings: Settings, limiter: ConnectionLimiter) -> None:
        self.node = node
        self.settings = settings
        self.limiter = limiter
        self.client_ip_header = settings.client_ip_header.lower()
        self.guard = StallGuard(
            head_timeout=settings.http_head_timeout,
            body_timeout=settings.http_body_timeout,
            # behind a proxy (CLIENT_IP_HEADER) every socket comes from the proxy's address
            max_per_ip=0 if settings.client_ip_header else settings.max_pending_per_ip,
        )
        self.shutting_down = False
        """Set when shutdown starts: new handshakes get 503 (no client is upgraded after the
        RECONNECT broadcast)."""

    def count(self, status: int) -> None:
        """Count one handshake answered with ``status``."""
        self.node.stats.count_handshake(status)


WS_CONTEXT = web.AppKey("ws_context", WsContext)


class WsProtocol(asyncio.Protocol):
    """One client connection: first its HTTP request head, then (after ``101``) its
    WebSocket frames. Implements :class:`realtime.node.Peer`.

    Attributes:
        conn: the outgoing side (set once the WebSocket is open).
        session: the protocol session (set once the WebSocket is open).
    """

    __slots__ = (
        "_adopted", "_ctx", "_done", "_head", "_http", "_ip", "_last_rx", "_opened", "_reader",
        "_state", "_timer", "_transport", "conn", "session",
    )  # fmt: skip

    conn: Connection
    session: Session

    def __init__(self, ctx: WsContext, http: Callable[[], asyncio.Protocol] | None) -> None:
        """Args:
        ctx: the app's shared context.
        http: aiohttp's protocol factory for connections that are not ours (``None``
            when adopting a socket aiohttp already upgraded).
        """
        self._ctx = ctx
        self._http = http
        self._state = _HEAD
        self._head = b""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._reader: FrameReader | None = None
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
        state = self._state
        if state in (_OPEN, _CLOSING):
            self._frames(data)
        elif state == _HEAD:
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
        opened = self._reader is not None
        if self._http is not None:  # accepted here (an adopted socket is counted by aiohttp's handler)
            guard = self._ctx.guard
            if self._state == _HEAD and self._transport is not None:
                guard.done(self._transport)
            guard.lost()
        self._state = _CLOSED
        self._transport = None
        if opened:
            ctx = self._ctx
            conn = self.conn
            conn.detach()
            ctx.node.remove_peer(self)
            ctx.limiter.release(self._ip)
            log.debug("ws_closed", conn_id=conn.id, code=conn.close_code, sent=conn.sent)
        if self._done is not None and not self._done.done():
            self._done.set_result(None)
        if self._adopted is not None:
            self._adopted.connection_lost(exc)
            self._adopted = None

    # -- handshake ------------------------------------------------------------------

    def _head_received(self, data: bytes) -> None:
        buf = self._head + data if self._head else data
        size = len(buf)
        if buf[: min(size, 7)] != _WS_PREFIX[: min(size, 7)] or (size > 7 and buf[7:8] not in (b" ", b"?")):
            self._handoff(buf)
            return
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if size > MAX_HEAD_BYTES:
                self._handoff(buf)
            else:
                self._head = buf
            return
        self._head = b""
        head = parse_head(buf[:end])
        if head is None or head.path != "/ws":
            self._handoff(buf)
            return
        try:
            key = upgrade_key(head.method, head.headers)
        except HandshakeError:
            self._handoff(buf)  # aiohttp's /ws route answers it, as JSON with the usual headers
            return
        ctx = self._ctx
        transport = self._transport
        assert transport is not None
        ctx.guard.done(transport)  # a complete WebSocket handshake: no longer pending
        ip = client_ip(self._ip, head.headers, ctx.client_ip_header)
        request_id = head.headers.get("x-request-id", "")
        if ctx.shutting_down:
            ctx.count(503)
            transport.write(_json_error(503, "unavailable", "server shutting down; reconnect", request_id))
            self._state = _CLOSED
            self._close_transport()
            return
        refused = ctx.limiter.admit(ip)
        if refused is not None:
            log.info("ws_refused", reason=refused, ip=ip)
            ctx.count(429)
            transport.write(_json_error(429, "too_many_requests", refused, request_id))
            self._state = _CLOSED
            self._close_transport()
            return
        ctx.count(101)
        transport.write(switching_protocols(key))
        self._open(transport, ip)
        rest = buf[end + 4 :]
        if rest:
            self._frames(rest)

    def _handoff(self, data: bytes) -> None:
        """Give the connection, and what it sent so far, to aiohttp."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._state = _CLOSED
        transport, self._transport = self._transport, None
        if transport is None or self._http is None:
            return
        if transport.is_closing():
            self._ctx.guard.done(transport)  # its connection_lost comes here, in state _CLOSED
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
        self.conn = Connection(
            conn_id,
            transport,
            node.scheduler,
            max_bytes=settings.send_queue_max_bytes,
            max_messages=settings.send_queue_max_messages,
            on_overflow=self._slow_consumer,
        )
        rate = TokenBucket(settings.listen_rate, settings.listen_burst) if settings.listen_rate > 0 else None
        self.session = node.new_session(self.conn, max_topics=settings.max_topics_per_connection, rate=rate)
        self._reader = FrameReader(settings.max_frame_bytes)
        self._ip = ip
        self._state = _OPEN
        loop = asyncio.get_running_loop()
        self._opened = self._last_rx = now = loop.time()
        self._timer = loop.call_at(now + min(settings.listen_timeout, settings.idle_timeout), self._deadline)
        node.add_peer(self)
        log.debug("ws_connected", conn_id=conn_id, peer=ip)

    # -- frames ---------------------------------------------------------------------

    def _frames(self, data: bytes) -> None:
        reader = self._reader
        assert reader is not None
        self._last_rx = asyncio.get_running_loop().time()
        try:
            messages = reader.feed(data)
        except ProtocolError as exc:
            self._fail(exc.code, exc.reason)
            return
        if not messages:
            return
        try:
            self._handle(messages)
        except Exception as exc:
            log.exception("ws_frame_failed", conn_id=self.conn.id)
            sentry_sdk.capture_exception(exc)  # a no-op unless SENTRY_DSN is set
            self.close(CLOSE_INTERNAL_ERROR, "internal error")

    def _handle(self, messages: list[tuple[int, bytes]]) -> None:
        conn = self.conn
        session = self.session
        for opcode, payload in messages:
            state = self._state
            if state != _OPEN:
                if state == _CLOSING and opcode == OP_CLOSE:
                    self._state = _CLOSED
                    self._close_transport()  # the client answered our CLOSE
                    return
                if state == _CLOSING:
                    continue  # sent before it saw our CLOSE: ignored
                return
            if opcode == OP_TEXT:
                try:
                    text = payload.decode()
                except UnicodeDecodeError:
                    self._fail(CLOSE_INVALID_DATA, "text message is not UTF-8")
                    return
                conn.send_payload(session.receive(text))
            elif opcode == OP_BINARY:
                conn.send_payload(session.receive_binary())
            elif opcode == OP_PING:
                conn.send(pong_frame(payload))
            elif opcode == OP_CLOSE:
                self._closed_by_client(payload)
                return

    def _closed_by_client(self, payload: bytes) -> None:
        try:
            code, _ = parse_close(payload)
        except ProtocolError as exc:
            self._fail(exc.code, exc.reason)
            return
        conn = self.conn
        conn.flush()
        conn.stop(code)
        self._state = _CLOSED
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(close_frame(1000 if code == 1005 else code))
        self._close_transport()  # the server closes TCP first (RFC 6455 section 7.1.1)

    # -- closing --------------------------------------------------------------------

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake with ``code``: flush what is queued (not for a slow
        consumer), send CLOSE, and drop the socket if the client's CLOSE does not arrive
        within ``CLOSE_TIMEOUT`` seconds. Idempotent; callable from anywhere."""
        if self._state != _OPEN:
            return
        conn = self.conn
        if code != CLOSE_SLOW_CONSUMER:
            conn.flush()
        conn.stop(code)
        self._state = _CLOSING
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(close_frame(code, reason))
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

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 section 7.1.7): CLOSE with ``code``, then drop TCP."""
        self.close(code, reason)
        self._state = _CLOSED
        self._close_transport()

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
        if self._state != _OPEN:
            return
        settings = self._ctx.settings
        if self.session.state is State.CONNECTED:
            deadline, code = self._opened + settings.listen_timeout, CLOSE_LISTEN_TIMEOUT
        else:
            deadline, code = self._last_rx + settings.idle_timeout, CLOSE_IDLE_TIMEOUT
        loop = asyncio.get_running_loop()
        if loop.time() >= deadline:
            self.close(code, _REASONS[code])
        else:
            self._timer = loop.call_at(deadline, self._deadline)

    def _abort(self) -> None:
        self._timer = None
        if self._transport is not None:
            self._transport.abort()

    def _slow_consumer(self, conn: Connection) -> None:
        self._ctx.node.stats.count_slow_consumer()
        log.warning("slow_consumer_closed", conn_id=conn.id)
        self.close(CLOSE_SLOW_CONSUMER, _REASONS[CLOSE_SLOW_CONSUMER])


_STATUS_LINES = {429: b"429 Too Many Requests", 503: b"503 Service Unavailable"}


def _json_error(status: int, error: str, message: str, request_id: str) -> bytes:
    """A complete ``Connection: close`` HTTP response with a JSON error body (as the HTTP
    API's errors: ``{"error", "message"}`` and an ``X-Request-ID``)."""
    body = orjson.dumps({"error": error, "message": message})
    rid = request_id_from(request_id)
    return (
        b"HTTP/1.1 %s\r\nContent-Type: application/json; charset=utf-8\r\n"
        b"Content-Length: %d\r\nConnection: close\r\nX-Request-ID: %s\r\n"
        b"X-Content-Type-Options: nosniff\r\nCache-Control: no-store\r\n\r\n"
        % (_STATUS_LINES[status], len(body), rid.encode())
    ) + body


class _FrontServer:
    """aiohttp's protocol factory, wrapped: every connection starts as a :class:`WsProtocol`,
    which hands what is not a ``/ws`` handshake to a :class:`GuardedRequestHandler`."""

    def __init__(self, http: web.Server, ctx: WsContext) -> None:
        self._http = http
        self._ctx = ctx
        settings = ctx.settings
        # aiohttp's own handler options (keepalive_timeout, access_log...), as web.Server passes them
        self._options: dict[str, Any] = {
            **getattr(http, "_kwargs", {}),
            "loop": asyncio.get_running_loop(),
            "guard": ctx.guard,
            "body_timeout": settings.http_body_timeout,
            "hsts": settings.environment != "development",
        }

    def __call__(self) -> WsProtocol:
        return WsProtocol(self._ctx, self._handler)

    def _handler(self) -> GuardedRequestHandler:
        return GuardedRequestHandler(self._http, **self._options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._http, name)


class RealtimeRunner(web.AppRunner):
    """``web.AppRunner`` whose server serves ``/ws`` handshakes with :class:`WsProtocol`
    and everything else with aiohttp. Use it wherever an ``AppRunner`` would be used.

    aiohttp's ``keepalive_timeout`` defaults to ``HTTP_KEEPALIVE_TIMEOUT``; the pending-socket
    budget is set from ``RLIMIT_NOFILE`` once the app has started (its Redis and database
    connections are open by then)."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs.setdefault("keepalive_timeout", app[WS_CONTEXT].settings.http_keepalive_timeout)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        http = await super()._make_server()
        ctx = self.app[WS_CONTEXT]
        limit_descriptors(ctx.guard)
        return cast(web.Server, _FrontServer(http, ctx))


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    """``GET /ws`` through aiohttp: the errors, and handshakes on reused connections.

    Raises:
        web.HTTPException: 429 (JSON) when the client's address has too many connections
            or attempts; 400 for a malformed handshake; 426 for a version other than 13.
    """
    ctx = request.app[WS_CONTEXT]
    if ctx.shutting_down:
        ctx.count(503)
        raise json_error(503, "server shutting down; reconnect")
    ip = client_ip(request.remote, request.headers, ctx.settings.client_ip_header)
    refused = ctx.limiter.admit(ip)
    if refused is not None:
        log.info("ws_refused", reason=refused, ip=ip)
        ctx.count(429)
        raise json_error(429, refused)
    transport = request.transport
    try:
        key = upgrade_key(request.method, request.headers)
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client went away")
    except HandshakeError as exc:
        ctx.limiter.release(ip)
        ctx.count(exc.status)
        error = json_error(exc.status, exc.message)
        if exc.status == 426:
            error.headers["Sec-WebSocket-Version"] = "13"
        raise error from None
    except ConnectionResetError:
        ctx.limiter.release(ip)
        raise
    ctx.count(101)
    transport.write(switching_protocols(key))
    # bytes the client sent right behind its handshake, already read by aiohttp (private
    # attribute of aiohttp's RequestHandler; absent in other versions: then nothing is lost
    # for clients that wait for the 101, as RFC 6455 requires)
    tail = getattr(request.protocol, "_message_tail", b"")
    done = WsProtocol(ctx, None).adopt(transport, ip, request.protocol, tail if isinstance(tail, bytes) else b"")
    await done
    return web.Response(status=101)  # never sent (the socket was ours and is closed); counted as 101


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
        peer.close_soon(CLOSE_GOING_AWAY, _REASONS[CLOSE_GOING_AWAY])
    deadline = time.monotonic() + CLOSE_TIMEOUT + 1.0
    while node.peers and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
