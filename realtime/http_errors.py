"""The few HTTP error answers the engine gives itself, as bytes (no I/O, no web framework).

Before a socket is a WebSocket, the engine answers refused handshakes (400, 426, 429, 503)
and requests aiohttp could not parse (400, 408, 500). They have the same shape as the HTTP
API's errors (``{"error": code, "message": text}`` with an ``X-Request-ID``), built here so
the engine does not import the HTTP API (layers point one way); the security headers of
those answers are given by the composition root (:class:`realtime.server.WsContext`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from typing import Final

import orjson

ERROR_CODES: Final[Mapping[int, str]] = {
    400: "bad_request",
    408: "request_timeout",
    426: "upgrade_required",
    429: "too_many_requests",
    500: "internal",
    503: "unavailable",
}
"""The stable ``error`` code of each status the engine answers (as in ``http_api.errors``)."""

_STATUS_LINES: Final = {429: b"429 Too Many Requests", 503: b"503 Service Unavailable"}
_SAFE_ID = re.compile(r"[A-Za-z0-9._-]*")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def error_body(status: int, message: str) -> bytes:
    """``{"error": code, "message": message}`` as JSON bytes, ``code`` from :data:`ERROR_CODES`."""
    return orjson.dumps({"error": ERROR_CODES.get(status, "error"), "message": message})


def request_id_from(header: str) -> str:
    """The request id for a request: the caller's ``X-Request-ID`` cut to 64 characters of
    ``[A-Za-z0-9._-]`` (safe in logs and headers), or, when that leaves nothing, 32 random
    hex digits (not secrets: drawn from ``random``)."""
    rid = header[:64]
    if not _SAFE_ID.fullmatch(rid):
        rid = _UNSAFE_CHARS.sub("", rid)
    return rid or f"{random.getrandbits(128):032x}"


def refusal(status: int, message: str, request_id: str) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response refusing a handshake.

    Args:
        status: 429 or 503.
        message: the ``message`` of the JSON body.
        request_id: the client's ``X-Request-ID`` header (``""`` if none).
    """
    body = error_body(status, message)
    rid = request_id_from(request_id)
    return (
        b"HTTP/1.1 %s\r\nContent-Type: application/json; charset=utf-8\r\n"
        b"Content-Length: %d\r\nConnection: close\r\nX-Request-ID: %s\r\n"
        b"X-Content-Type-Options: nosniff\r\nCache-Control: no-store\r\n\r\n"
        % (_STATUS_LINES[status], len(body), rid.encode())
    ) + body
