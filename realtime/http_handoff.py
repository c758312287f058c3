"""aiohttp's side of a connection handed over by :class:`realtime.server.WsProtocol`.

:class:`GuardedRequestHandler` is aiohttp's ``RequestHandler`` (``aiohttp/web_protocol.py``,
aiohttp 3.14) telling a :class:`realtime.stall.StallGuard` where each connection stands:

- pending in ``HEAD`` (registered by ``WsProtocol`` at accept) until aiohttp's parser yields
  a complete request head;
- pending in ``BODY`` while a request's body has not fully arrived. At ``HTTP_BODY_TIMEOUT``
  a handler still reading it gets a JSON 408 (``request_timeout``) and the connection closes
  after that answer; a connection no longer handling that request is closed;
- pending in ``IDLE`` between keep-alive requests (aiohttp's ``keepalive_timeout``, set from
  ``HTTP_KEEPALIVE_TIMEOUT``, closes it).

It also answers aiohttp's own parser errors (a malformed request line, header or framing,
answered before any route sees the request) like every other error of the API: JSON
``{"error": "bad_request", "message": ...}`` with the security headers of
:mod:`http_api.security` and an ``X-Request-ID``, never echoing the request.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import orjson
import structlog
from aiohttp import http_exceptions, web
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from http_api.security import SECURITY_HEADERS
from realtime.stall import BODY, IDLE, StallGuard

log = structlog.get_logger("realtime.http")

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


def error_response(status: int, message: str, *, hsts: bool) -> web.Response:
    """A ``Connection: close`` JSON error with the API's security headers.

    Args:
        status: 400 (a request aiohttp could not parse) or 500.
        message: a fixed text (never request data).
        hsts: add ``Strict-Transport-Security`` (not in ``ENVIRONMENT=development``).
    """
    code = "bad_request" if status < 500 else "internal"
    resp = web.Response(
        body=orjson.dumps({"error": code, "message": message}), status=status, content_type="application/json"
    )
    headers = resp.headers
    headers.update(SECURITY_HEADERS)
    if hsts:
        headers["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
    headers["Cache-Control"] = "no-store"
    headers["X-Request-ID"] = f"{random.getrandbits(128):032x}"
    resp.force_close()
    return resp


def body_timeout_error(timeout: float) -> web.HTTPException:
    """The 408 a handler reading a body too slowly raises (through ``request.read()``)."""
    body = {"error": "request_timeout", "message": f"the request body did not arrive within {timeout:g} seconds"}
    exc = web.HTTPRequestTimeout(text=orjson.dumps(body).decode(), content_type="application/json")
    exc.force_close()
    return exc


class GuardedRequestHandler(RequestHandler):
    """aiohttp's request handler, reporting each connection's phase to a :class:`StallGuard`
    and answering parser errors as JSON. Created by :class:`realtime.server.WsProtocol` when
    it hands a connection to aiohttp."""

    __slots__ = ("_body", "_body_timeout", "_guard", "_guarded", "_hsts", "_ip", "_timed_out")

    def __init__(
        self, manager: web.Server, *, guard: StallGuard, body_timeout: float, hsts: bool, **kwargs: Any
    ) -> None:
        """Args:
        manager: aiohttp's server (its ``connection_made``/``connection_lost`` bookkeeping).
        guard: the pending-socket registry.
        body_timeout: ``HTTP_BODY_TIMEOUT`` (for the 408's message).
        hsts: send ``Strict-Transport-Security`` on parser errors.
        kwargs: ``RequestHandler``'s own options (``keepalive_timeout``, ``loop``...).
        """
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._body_timeout = body_timeout
        self._hsts = hsts
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
            return error_response(status, reason, hsts=self._hsts)
        log.error("http_internal_error", peer=self._ip, exc_info=exc)
        return error_response(500, "internal server error", hsts=self._hsts)
