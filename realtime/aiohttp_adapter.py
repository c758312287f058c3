"""The one module where the engine meets aiohttp's web layer, private hooks included.

Every accepted socket starts as our :class:`realtime.server.WsProtocol`; this module wires
that into aiohttp and back:

- :class:`RealtimeRunner` (``web.AppRunner._make_server``) wraps aiohttp's protocol factory
  in :class:`_FrontServer`, which builds our handler with aiohttp's own handler options
  (``web.Server._kwargs``);
- :class:`GuardedRequestHandler` is aiohttp's ``RequestHandler`` (``aiohttp/web_protocol.py``)
  serving what ``WsProtocol`` hands over, and telling a :class:`realtime.stall.StallGuard`
  where each connection stands (it reads ``_request_count``, ``_messages``,
  ``_current_request``, ``_close``, ``_force_close``):

  - pending in ``HEAD`` (registered by ``WsProtocol`` at accept) until aiohttp's parser
    yields a complete request head;
  - pending in ``BODY`` while a request's body has not fully arrived. At
    ``HTTP_BODY_TIMEOUT`` a handler still reading it gets a JSON 408 (``request_timeout``)
    and the connection closes after that answer; a connection no longer handling that
    request is closed;
  - pending in ``IDLE`` between keep-alive requests (aiohttp's ``keepalive_timeout``, set
    from ``HTTP_KEEPALIVE_TIMEOUT``, closes it).

  It also answers aiohttp's own parser errors (a malformed request line, header or framing,
  answered before any route sees the request) like every other error of the API: JSON
  ``{"error": "bad_request", "message": ...}`` with the security headers the composition
  root gave :class:`realtime.server.WsContext` and an ``X-Request-ID``, never echoing the
  request;
- :func:`websocket_handler`, aiohttp's route for ``GET /ws``, answers handshakes on reused
  keep-alive connections and the refusals (400, 426, 429, 503 as JSON), then adopts the
  socket into a ``WsProtocol`` (with the bytes aiohttp read behind the handshake,
  ``RequestHandler._message_tail``); its ``101`` response object is never sent;
- :func:`body_read_so_far` gives the body a handler already read (``BaseRequest._read_bytes``),
  for the Sentry scrubber, which must not read it again.

Those private names are valid for :data:`AIOHTTP_VERSIONS` (``tests/unit/test_aiohttp_adapter.py``
fails on any other installed aiohttp, and ``pyproject.toml`` pins the same range): check
them against ``aiohttp/web_protocol.py``, ``web_server.py`` and ``web_runner.py`` before
widening it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from typing import Any, Final, cast

import structlog
from aiohttp import http_exceptions, web
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from realtime.http_errors import error_body
from realtime.limits import client_ip
from realtime.server import WsContext, WsProtocol
from realtime.stall import BODY, IDLE, StallGuard, limit_descriptors
from realtime.websocket import HandshakeError, switching_protocols, upgrade_key

log = structlog.get_logger("realtime.http")
ws_log = structlog.get_logger("realtime.ws")

AIOHTTP_VERSIONS: Final = ((3, 14), (3, 15))
"""The aiohttp releases whose private names this module uses: ``>= 3.14, < 3.15``."""

WS_CONTEXT = web.AppKey("ws_context", WsContext)

_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (http_exceptions.BadHttpMethod, "malformed request: unknown or invalid HTTP method"),
    (http_exceptions.LineTooLong, "malformed request: request line or header too long"),
    (http_exceptions.BadStatusLine, "malformed request: invalid request line"),
    (http_exceptions.InvalidHeader, "malformed request: invalid header"),
    (http_exceptions.InvalidURLError, "malformed request: invalid URL"),
    (http_exceptions.PayloadEncodingError, "malformed request: invalid body framing"),
)


def parser_error_message(exc: BaseException | None) -> str:
    """A fixed description of an aiohttp parser error (its own message quotes the request)."""
    for kind, message in _REASONS:
        if isinstance(exc, kind):
            return message
    return "malformed request"


def body_read_so_far(request: web.BaseRequest) -> bytes | None:
    """The body a handler already read with ``request.read()``/``json()``, or ``None``;
    never reads (aiohttp keeps it in the private ``BaseRequest._read_bytes``)."""
    raw: bytes | None = request._read_bytes
    return raw


def error_response(status: int, message: str, *, hsts: bool, security_headers: Mapping[str, str]) -> web.Response:
    """A ``Connection: close`` JSON error with the API's security headers.

    Args:
        status: 400 (a request aiohttp could not parse) or 500.
        message: a fixed text (never request data).
        hsts: add ``Strict-Transport-Security`` (not in ``ENVIRONMENT=development``).
        security_headers: the headers every API response carries.
    """
    resp = web.Response(body=error_body(status, message), status=status, content_type="application/json")
    headers = resp.headers
    headers.update(security_headers)
    if hsts:
        headers["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
    headers["Cache-Control"] = "no-store"
    headers["X-Request-ID"] = f"{random.getrandbits(128):032x}"
    resp.force_close()
    return resp


def body_timeout_error(timeout: float) -> web.HTTPException:
    """The 408 a handler reading a body too slowly raises (through ``request.read()``)."""
    body = error_body(408, f"the request body did not arrive within {timeout:g} seconds")
    exc = web.HTTPRequestTimeout(text=body.decode(), content_type="application/json")
    exc.force_close()
    return exc


class GuardedRequestHandler(RequestHandler):
    """aiohttp's request handler, reporting each connection's phase to a :class:`StallGuard`
    and answering parser errors as JSON. Created by :class:`realtime.server.WsProtocol` when
    it hands a connection to aiohttp."""

    __slots__ = ("_body", "_body_timeout", "_guard", "_guarded", "_headers", "_hsts", "_ip", "_timed_out")

    def __init__(
        self,
        manager: web.Server,
        *,
        guard: StallGuard,
        body_timeout: float,
        hsts: bool,
        security_headers: Mapping[str, str],
        **kwargs: Any,
    ) -> None:
        """Args:
        manager: aiohttp's server (its ``connection_made``/``connection_lost`` bookkeeping).
        guard: the pending-socket registry.
        body_timeout: ``HTTP_BODY_TIMEOUT`` (for the 408's message).
        hsts: send ``Strict-Transport-Security`` on parser errors.
        security_headers: headers for parser errors (the API's security headers).
        kwargs: ``RequestHandler``'s own options (``keepalive_timeout``, ``loop``...).
        """
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._body_timeout = body_timeout
        self._hsts = hsts
        self._headers = security_headers
        self._guarded: asyncio.Transport | None = None
        self._ip = ""
        self._body: StreamReader | None = None
        self._timed_out = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start serving ``transport``, pending in ``HEAD`` since its accept."""
        super().connection_made(transport)
        self._guarded = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self._ip = peer[0] if isinstance(peer, tuple) else "unknown"

    def connection_lost(self, exc: BaseException | None) -> None:
        """Forget the connection in the guard, then let aiohttp clean up."""
        transport, self._guarded = self._guarded, None
        if transport is not None:
            self._guard.done(transport)
            self._guard.lost()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Parse as aiohttp does; a new complete head ends ``HEAD``/``IDLE``, and starts
        ``BODY`` when its body has not all arrived."""
        count = self._request_count
        super().data_received(data)
        transport = self._guarded
        if self._request_count == count or transport is None:
            return
        payload = self._messages[-1][1] if self._messages else None
        if payload is None or payload.is_eof() or not isinstance(payload, StreamReader):
            self._guard.done(transport)
            return
        self._body = payload
        self._guard.waiting(transport, self._ip, BODY, self._body_expired)
        payload.on_eof(self._body_arrived)

    def _body_arrived(self) -> None:
        if self._guarded is not None:
            self._guard.done(self._guarded)

    def _body_expired(self) -> None:
        """``HTTP_BODY_TIMEOUT`` passed with the body incomplete: a handler reading it gets
        a 408 and the connection closes after that answer; otherwise it closes now."""
        payload, self._body = self._body, None
        if payload is None or payload.is_eof():
            return
        if self._current_request is not None and self._current_request.content is payload:
            self._timed_out = True
            payload.set_exception(body_timeout_error(self._body_timeout))
        else:
            self.force_close()

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        """Send the response as aiohttp does; then close after a 408, or register the
        connection as ``IDLE`` when it stays open for another request."""
        result = await super().finish_response(request, resp, start_time)
        transport = self._guarded
        if self._timed_out:
            self._timed_out = False
            self.force_close()
        elif (
            transport is not None
            and resp.keep_alive
            and not (self._close or self._force_close or self._messages)
            and request.content.is_eof()
        ):
            self._guard.waiting(transport, self._ip, IDLE)
        return result

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Answer an error aiohttp met outside our handlers (a request it could not parse,
        a handler that returned no response) as JSON with the security headers; never the
        request's bytes, never a traceback."""
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send the error")
        if status < 500:
            reason = parser_error_message(exc)
            log.debug("http_bad_request", reason=reason, peer=self._ip)
            return error_response(status, reason, hsts=self._hsts, security_headers=self._headers)
        log.error("http_internal_error", peer=self._ip, exc_info=exc)
        return error_response(500, "internal server error", hsts=self._hsts, security_headers=self._headers)


class _FrontServer:
    """aiohttp's protocol factory, wrapped: every connection starts as a :class:`WsProtocol`,
    which hands what is not a ``/ws`` handshake to a :class:`GuardedRequestHandler`."""

    def __init__(self, http: web.Server, ctx: WsContext) -> None:
        self._http = http
        self._ctx = ctx
        # aiohttp's own handler options (keepalive_timeout, access_log...), as web.Server passes them
        self._options: dict[str, Any] = {
            **getattr(http, "_kwargs", {}),
            "loop": asyncio.get_running_loop(),
            "guard": ctx.guard,
            "body_timeout": ctx.settings.server.http_body_timeout,
            "hsts": ctx.hsts,
            "security_headers": ctx.security_headers,
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
        kwargs.setdefault("keepalive_timeout", app[WS_CONTEXT].settings.server.http_keepalive_timeout)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        http = await super()._make_server()
        ctx = self.app[WS_CONTEXT]
        limit_descriptors(ctx.guard)
        return cast(web.Server, _FrontServer(http, ctx))


def json_error(status: int, message: str) -> web.HTTPException:
    """An HTTP exception with the API's JSON error body (``{"error", "message"}``); the
    API's middleware adds its ``X-Request-ID`` and the security headers."""
    exc = web.HTTPException(text=error_body(status, message).decode(), content_type="application/json")
    exc.set_status(status)
    return exc


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
    ip = client_ip(request.remote, request.headers, ctx.settings.server.client_ip_header)
    refused = ctx.limiter.admit(ip)
    if refused is not None:
        ws_log.info("ws_refused", reason=refused, ip=ip)
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
    done = WsProtocol(ctx, None).adopt(transport, ip, request.protocol, _message_tail(request))
    await done
    return web.Response(status=101)  # never sent (the socket was ours and is closed); counted as 101


def _message_tail(request: web.Request) -> bytes:
    """Bytes the client sent right behind its handshake, already read by aiohttp (private
    attribute of aiohttp's ``RequestHandler``; if absent, nothing is lost for clients that
    wait for the ``101``, as RFC 6455 requires)."""
    tail = getattr(request.protocol, "_message_tail", b"")
    return tail if isinstance(tail, bytes) else b""
