"""JSON errors with stable codes, and the middleware that guarantees them.

The error middleware is the outermost one: an exception reaching it was not mapped to
an HTTP answer by anything inside (a database outage is a 503 before it gets here), so
it is a bug: logged, reported to Sentry (a no-op without ``SENTRY_DSN``), answered 500.
"""

from __future__ import annotations

import random
import re
from typing import Any

import orjson
import sentry_sdk
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

log = structlog.get_logger("http_api")

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    426: "upgrade_required",
    429: "too_many_requests",
    500: "internal",
    503: "unavailable",
}


def json_response(body: Any, status: int = 200, **kwargs: Any) -> web.Response:
    """A JSON response encoded with orjson."""
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", **kwargs)


def json_error(status: int, message: str, **extra: Any) -> web.HTTPException:
    """An HTTP exception whose body is ``{"error": code, "message": message, **extra}``."""
    body = {"error": _CODES.get(status, "error"), "message": message, **extra}
    exc = web.HTTPException(text=orjson.dumps(body).decode(), content_type="application/json")
    exc.set_status(status)
    if status == 401:
        exc.headers["WWW-Authenticate"] = 'Api-Key realm="realtime"'
    return exc


def _with_id(exc: web.HTTPException, request_id: str) -> web.HTTPException:
    exc.headers["X-Request-ID"] = request_id
    return exc


_SAFE_ID = re.compile(r"[A-Za-z0-9._-]*")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def request_id_from(header: str) -> str:
    """The request id for a request: the caller's ``X-Request-ID`` cut to 64 characters
    of ``[A-Za-z0-9._-]`` (so it is safe in logs and headers), or, when that leaves
    nothing, 32 random hex digits. Request ids are not secrets: they are drawn from
    ``random`` (~10x cheaper than ``uuid4``, which reads ``os.urandom``)."""
    rid = header[:64]
    if not _SAFE_ID.fullmatch(rid):
        rid = _UNSAFE_CHARS.sub("", rid)
    return rid or f"{random.getrandbits(128):032x}"


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
    """Turn every error into JSON; never send a traceback. Binds a request id to logs."""
    request_id = request_id_from(request.headers.get("X-Request-ID", ""))
    structlog.contextvars.bind_contextvars(request_id=request_id)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.content_type == "application/json" or exc.status < 400:
            exc.headers["X-Request-ID"] = request_id
            raise
        raise _with_id(json_error(exc.status, exc.reason), request_id) from None
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
