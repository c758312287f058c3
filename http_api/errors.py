"""JSON answers, request ids, and the middleware that renders every error as plain JSON.

Handlers raise :class:`http_api.api_error.ApiError`; :func:`error_middleware` renders it
with :func:`http_api.render.render_plain` (under ``/api/v1`` the envelope middleware,
inside this one, has already rendered it as an envelope). It is the outermost of our
middlewares: an exception reaching it that is not an ``ApiError`` or an HTTP answer was
not mapped by anything inside (a database outage is a 503 before it gets here), so it is
a bug: logged, reported to Sentry (a no-op without ``SENTRY_DSN``), answered 500.
"""

from __future__ import annotations

from typing import Any

import orjson
import sentry_sdk
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from http_api.api_error import ApiError
from http_api.render import RenderedError, render_plain
from realtime.http_errors import request_id_from

log = structlog.get_logger("http_api")


def json_response(body: Any, status: int = 200, **kwargs: Any) -> web.Response:
    """A JSON response encoded with orjson."""
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", **kwargs)


def json_error(status: int, message: str, **extra: Any) -> web.HTTPException:
    """``ApiError(status, message, extra=extra)`` rendered plain, as an exception to raise.

    For code that must hand aiohttp a finished answer; handlers raise :class:`ApiError`.
    """
    return RenderedError(ApiError(status, message, extra=extra), render_plain)


def _with_id(exc: web.HTTPException, request_id: str) -> web.HTTPException:
    exc.headers["X-Request-ID"] = request_id
    return exc


def client_gone(request: web.Request) -> bool:
    """``True`` once the client's connection is closed (or closing)."""
    transport = request.transport
    return transport is None or transport.is_closing()


def report(request: web.Request) -> None:
    """Log and report to Sentry the exception being handled: a bug answered with 500.

    Call it only from an ``except`` block, after mapping: expected failures (a 4xx, a
    database outage) are answered, not reported.
    """
    log.exception("unhandled_error", path=request.path, method=request.method)
    sentry_sdk.capture_exception()


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render every error as plain JSON (:func:`~http_api.render.render_plain`); never send
    a traceback. Binds a request id to logs and answers."""
    request_id = request_id_from(request.headers.get("X-Request-ID", ""))
    structlog.contextvars.bind_contextvars(request_id=request_id)
    try:
        response = await handler(request)
    except ApiError as error:
        raise _with_id(RenderedError(error, render_plain), request_id) from None
    except web.HTTPException as exc:
        if exc.content_type == "application/json" or exc.status < 400:  # rendered already, or not an error
            exc.headers["X-Request-ID"] = request_id
            raise
        raise _with_id(json_error(exc.status, exc.reason), request_id) from None  # aiohttp's own (404, 405...)
    except ConnectionResetError:
        if not client_gone(request):
            report(request)
            raise _with_id(json_error(500, "internal server error"), request_id) from None
        log.info("client_disconnected", path=request.path, method=request.method)
        raise _with_id(json_error(400, "the client closed the connection"), request_id) from None
    except Exception:  # noqa: BLE001 - a bug: reported, then answered 500
        report(request)
        raise _with_id(json_error(500, "internal server error"), request_id) from None
    finally:
        structlog.contextvars.unbind_contextvars("request_id")
    if not response.prepared:
        response.headers["X-Request-ID"] = request_id
    return response
