"""The two renderers of :class:`~http_api.api_error.ApiError`, and its aiohttp exception.

* :func:`render_plain`: ``{"error": "<code>", "message": "...", "fields"?: {...}, ...extra}``,
  the answer of every route outside ``/api/v1`` (README, "HTTP API").
* :func:`render_envelope`: the e-dream envelope ``{"success": false, "data": ...,
  "message": "...", "errorCode": "..."}`` of ``/api/v1`` (README, "/api/v1").

Renderers are pure (an error in, a status, a body and headers out). The route family
picks one: :func:`http_api.errors.error_middleware` renders plain,
:func:`http_api.envelope.envelope_middleware` the envelope for paths under ``/api/v1/``.
:class:`RenderedError` carries the rendered answer to aiohttp and keeps the error, so
outer middlewares (metrics) read its fields instead of parsing its body.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from http_api.api_error import ApiError, AuthReason, field_errors, phrase

ENVELOPE_CODES: dict[int, tuple[str, str]] = {
    400: ("BAD_REQUEST", "Bad request."),
    401: ("UNAUTHORIZED", "Unauthorized."),
    403: ("FORBIDDEN", "Action not allowed."),
    404: ("NOT_FOUND", "Not found."),
    405: ("METHOD_NOT_ALLOWED", "Method not allowed."),
    408: ("REQUEST_TIMEOUT", "Request timeout."),
    413: ("PAYLOAD_TOO_LARGE", "Payload too large."),
    415: ("UNSUPPORTED_MEDIA_TYPE", "Send application/json."),
    429: ("TOO_MANY_REQUESTS", "Too many requests."),
    500: ("INTERNAL_SERVER_ERROR", "Internal server error."),
    503: ("SERVICE_UNAVAILABLE", "Service unavailable."),
}
"""The envelope's stable ``errorCode`` and standard message of each status
(``("ERROR", "Error.")`` for others)."""

PLAIN_CHALLENGE = 'Api-Key realm="realtime"'
ENVELOPE_CHALLENGE = 'Api-Key realm="realtime", Bearer realm="realtime"'


@dataclass(frozen=True, slots=True)
class Rendered:
    """An error answer: ``status``, the JSON ``body`` and the ``headers`` to add."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


Renderer = Callable[[ApiError], Rendered]


def render_plain(error: ApiError) -> Rendered:
    """``{"error": code, "message": message, "fields"?: fields, **extra}``.

    The message defaults to the status's reason phrase (``"Not Found"``); a 401 carries
    ``WWW-Authenticate: Api-Key realm="realtime"`` (RFC 9110, section 11.6.1).
    """
    body: dict[str, Any] = {"error": error.code, "message": error.message or phrase(error.status)}
    if error.fields:
        body["fields"] = error.fields
    body.update(error.extra)
    return Rendered(error.status, body, _headers(error, PLAIN_CHALLENGE))


def render_envelope(error: ApiError) -> Rendered:
    """``{"success": false, "data": [{"field", "message"}] | null, "message": ..., "errorCode": ...}``.

    ``errorCode`` and the default message come from :data:`ENVELOPE_CODES`; ``data``
    lists the error's fields (``null`` without); a 401 challenges for both ``Api-Key``
    and ``Bearer``.
    """
    code, standard = ENVELOPE_CODES.get(error.status, ("ERROR", "Error."))
    data = field_errors(error.fields) if error.fields else None
    body = {"success": False, "data": data, "message": error.envelope_message() or standard, "errorCode": code}
    return Rendered(error.status, body, _headers(error, ENVELOPE_CHALLENGE))


def _headers(error: ApiError, challenge: str) -> dict[str, str]:
    if error.status != 401:
        return dict(error.headers)
    return {**error.headers, "WWW-Authenticate": challenge}


def is_envelope(exc: web.HTTPException) -> bool:
    """``exc`` was rendered by :func:`render_envelope` (read from the exception, not its body)."""
    return isinstance(exc, RenderedError) and exc.renderer is render_envelope


class RenderedError(web.HTTPException):
    """An :class:`ApiError` rendered by ``renderer``, as the exception aiohttp answers with.

    Attributes:
        error: the error it renders (its ``reason``, ``code``... for outer middlewares).
        renderer: the renderer used.
    """

    def __init__(self, error: ApiError, renderer: Renderer) -> None:
        rendered = renderer(error)
        super().__init__(
            headers=rendered.headers, text=orjson.dumps(rendered.body).decode(), content_type="application/json"
        )
        self.set_status(rendered.status)
        self.error = error
        self.renderer = renderer


def auth_reason(answer: web.StreamResponse | web.HTTPException) -> AuthReason | None:
    """The :class:`AuthReason` of an answer rendered from an authentication failure, else ``None``."""
    return answer.error.reason if isinstance(answer, RenderedError) else None
