"""The WebSocket endpoint ``GET /ws``: a thin aiohttp adapter around :mod:`realtime.protocol`.

Only the handler task reads from the socket (aiohttp's rule); everything written goes
through the connection's merged-write path (:mod:`realtime.connection`). Close codes
are listed in :mod:`realtime.connection` and the README.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time

import orjson
import structlog
from aiohttp import WSMsgType, web

from realtime.appkeys import LIMITER, NODE, SETTINGS
from realtime.connection import (
    CLOSE_GOING_AWAY,
    CLOSE_IDLE_TIMEOUT,
    CLOSE_LISTEN_TIMEOUT,
    CLOSE_SLOW_CONSUMER,
    Connection,
)
from realtime.limits import TokenBucket, client_ip
from realtime.node import Node
from realtime.protocol import RECONNECT, Session, State
from realtime.settings import Settings

log = structlog.get_logger("realtime.ws")
_ids = itertools.count(1)
_PREFIX = f"{os.getpid():x}"
_REASONS = {
    CLOSE_LISTEN_TIMEOUT: "no LISTEN in time",
    CLOSE_IDLE_TIMEOUT: "idle timeout",
    CLOSE_SLOW_CONSUMER: "slow consumer",
    CLOSE_GOING_AWAY: "server shutting down",
}


class WsPeer:
    """One WebSocket client: its socket, outgoing :class:`Connection` and :class:`Session`."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport,
        conn: Connection,
        session: Session,
    ) -> None:
        self.ws = ws
        self.conn = conn
        self.session = session
        self.closer: asyncio.Task[None] | None = None
        self._transport = transport

    def close_soon(self, code: int, reason: str) -> None:
        """Close from outside the handler task (shutdown, slow consumer); idempotent."""
        if self.closer is None:
            self.closer = asyncio.get_running_loop().create_task(self.close(code, reason))

    async def close(self, code: int, reason: str, timeout: float = 5.0) -> None:
        """Flush (unless slow consumer), send a close frame with ``code`` and wait up to
        ``timeout`` seconds for the client's; abort the socket if it does not answer."""
        conn = self.conn
        if code != CLOSE_SLOW_CONSUMER:
            conn.flush()
        conn.stop(code)
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=reason.encode()), timeout)
        except (TimeoutError, ConnectionError, RuntimeError):
            pass
        finally:
            if code == CLOSE_SLOW_CONSUMER or not self._transport.is_closing():
                self._transport.abort()


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    """Serve one client: admit, upgrade, then read frames until either side closes.

    Raises:
        web.HTTPException: 429 (JSON) before the upgrade when the client's address has too
            many connections or attempts.
    """
    settings = request.app[SETTINGS]
    limiter = request.app[LIMITER]
    ip = client_ip(request.remote, request.headers, settings.client_ip_header)
    refused = limiter.admit(ip)
    if refused is not None:
        log.info("ws_refused", reason=refused, ip=ip)
        body = orjson.dumps({"error": "too_many_requests", "message": refused}).decode()
        raise web.HTTPTooManyRequests(text=body, content_type="application/json")
    try:
        return await _serve_socket(request, settings)
    finally:
        limiter.release(ip)


async def _serve_socket(request: web.Request, settings: Settings) -> web.StreamResponse:
    node = request.app[NODE]
    ws = web.WebSocketResponse(compress=False, max_msg_size=settings.max_frame_bytes, autoping=True, timeout=5.0)
    await ws.prepare(request)
    transport = request.transport
    if transport is None:
        return ws
    conn_id = f"{_PREFIX}-{next(_ids)}"
    structlog.contextvars.bind_contextvars(conn_id=conn_id)  # every log line of this connection's task

    conn = Connection(
        conn_id,
        transport,
        node.scheduler,
        max_bytes=settings.send_queue_max_bytes,
        max_messages=settings.send_queue_max_messages,
        on_overflow=lambda c: _slow_consumer(node, c),
    )
    rate = TokenBucket(settings.listen_rate, settings.listen_burst) if settings.listen_rate > 0 else None
    session = node.new_session(conn, max_topics=settings.max_topics_per_connection, rate=rate)
    peer = WsPeer(ws, transport, conn, session)
    node.add_peer(peer)
    log.debug("ws_connected", peer=request.remote)
    try:
        code = await _read_loop(peer, settings.listen_timeout, settings.idle_timeout)
        if code is not None:
            await peer.close(code, _REASONS[code])
        elif peer.closer is not None:
            await peer.closer
    finally:
        node.remove_peer(peer)
        log.debug("ws_closed", code=conn.close_code or ws.close_code, sent=conn.sent)
    return ws


async def _read_loop(peer: WsPeer, listen_timeout: float, idle_timeout: float) -> int | None:
    """Read until the socket closes (returns ``None``) or a timeout (returns its code)."""
    ws, conn, session = peer.ws, peer.conn, peer.session
    listen_deadline = time.monotonic() + listen_timeout
    while not conn.closed:
        if session.state is State.CONNECTED:
            timeout, code = listen_deadline - time.monotonic(), CLOSE_LISTEN_TIMEOUT
        else:
            timeout, code = idle_timeout, CLOSE_IDLE_TIMEOUT
        try:
            msg = await ws.receive(timeout=max(timeout, 0.001))
        except TimeoutError:
            return code
        if msg.type is WSMsgType.TEXT:
            conn.send_payload(session.receive(msg.data))
        elif msg.type is WSMsgType.BINARY:
            conn.send_payload(session.receive_binary())
        else:  # CLOSE, CLOSING, CLOSED, ERROR (aiohttp already answered the close)
            return None
    return None


def _slow_consumer(node: Node, conn: Connection) -> None:
    peer = node.peers.get(conn)
    node.slow_consumers += 1
    log.warning("slow_consumer_closed", conn_id=conn.id)
    if peer is not None:
        peer.close_soon(CLOSE_SLOW_CONSUMER, _REASONS[CLOSE_SLOW_CONSUMER])


async def shutdown_peers(node: Node, grace: float) -> None:
    """Send RECONNECT to every client, wait up to ``grace`` seconds for them to leave,
    then close the rest with 1001 (going away)."""
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
    deadline = time.monotonic() + 6.0
    while node.peers and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
