"""The e-dream response envelope used under ``/api/v1``.

Every response is ``{"success": bool, "data": ..., "message": "...", "errorCode": "..."}``
(``errorCode`` only on failures), as the e-dream backend and its Python SDK expect.
Handlers return :func:`ok` and raise :class:`~http_api.api_error.ApiError`;
:func:`envelope_middleware` renders every failure under ``/api/v1/`` with
:func:`~http_api.render.render_envelope`. Validation failures are 400 ``BAD_REQUEST``
with ``data: [{"field": ..., "message": ...}]``.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from db import NotFound
from http_api.api_error import ApiError
from http_api.errors import client_gone, report
from http_api.render import RenderedError, is_envelope, render_envelope

PREFIX = "/api/v1/"


def ok(data: Any = None, *, status: int = 200, message: str = "") -> web.Response:
    """A successful envelope ``{"success": true, "data": data, "message": message}``."""
    body = {"success": True, "data": data, "message": message}
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


@web.middleware
async def envelope_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Under ``/api/v1/``, answer every failure as an envelope.

    An :class:`ApiError` is rendered with :func:`~http_api.render.render_envelope`;
    aiohttp's own errors (404 unknown path, 405 wrong method, 413) and JSON errors raised
    by hand get the standard message of their status (their own message, except for 401
    and 403); ``db.NotFound`` is a 404; any other exception is a bug: reported, answered
    a 500 envelope. A database outage was already a 503 ``ApiError`` (the availability
    middleware runs inside this one); a client that hung up is left to the error middleware.
    """
    if not request.path.startswith(PREFIX):
        return await handler(request)
    try:
        return await handler(request)
    except ApiError as error:
        raise RenderedError(error, render_envelope) from None
    except web.HTTPException as exc:
        if exc.status < 400 or is_envelope(exc):
            raise
        raise RenderedError(ApiError(exc.status, _detail(exc)), render_envelope) from None
    except NotFound:
        raise RenderedError(ApiError(404), render_envelope) from None
    except Exception as exc:
        if isinstance(exc, ConnectionResetError) and client_gone(request):
            raise  # the error middleware logs the hang-up
        report(request)
        raise RenderedError(ApiError(500), render_envelope) from None  # a bug: never a traceback


def _detail(exc: web.HTTPException) -> str | None:
    """The message of a JSON error raised by hand (``None``: the standard one)."""
    if exc.status in (401, 403):
        return None  # the standard "Unauthorized." / "Action not allowed."
    try:
        message = orjson.loads(exc.text or "").get("message")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return message if isinstance(message, str) else None
