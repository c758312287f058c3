"""The e-dream response envelope used under ``/api/v1``.

Every response is ``{"success": bool, "data": ..., "message": "...", "errorCode": "..."}``
(``errorCode`` only on failures), as the e-dream backend and its Python SDK expect.
Validation failures are 400 ``BAD_REQUEST`` with ``data: [{"field": ..., "message": ...}]``.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web
from marshmallow import Schema, ValidationError

from db import DatabaseUnavailable, NotFound
from http_api.body import BodyError, read_object
from http_api.errors import client_gone, report

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ERRORS: dict[int, tuple[str, str]] = {
    400: ("BAD_REQUEST", "Bad request."),
    401: ("UNAUTHORIZED", "Unauthorized."),
    403: ("FORBIDDEN", "Action not allowed."),
    404: ("NOT_FOUND", "Not found."),
    405: ("METHOD_NOT_ALLOWED", "Method not allowed."),
    413: ("PAYLOAD_TOO_LARGE", "Payload too large."),
    415: ("UNSUPPORTED_MEDIA_TYPE", "Send application/json."),
    429: ("TOO_MANY_REQUESTS", "Too many requests."),
    500: ("INTERNAL_SERVER_ERROR", "Internal server error."),
    503: ("SERVICE_UNAVAILABLE", "Service unavailable."),
}


def ok(data: Any = None, *, status: int = 200, message: str = "") -> web.Response:
    """A successful envelope ``{"success": true, "data": data, "message": message}``."""
    body = {"success": True, "data": data, "message": message}
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def fail(status: int, message: str | None = None, *, data: Any = None, code: str | None = None) -> web.HTTPException:
    """A failed envelope as an exception to raise (the standard message for ``status`` by default)."""
    default_code, default_message = ERRORS.get(status, ("ERROR", "Error."))
    body = {"success": False, "data": data, "message": message or default_message, "errorCode": code or default_code}
    exc = web.HTTPException(text=orjson.dumps(body).decode(), content_type="application/json")
    exc.set_status(status)
    if status == 401:
        exc.headers["WWW-Authenticate"] = 'Api-Key realm="realtime", Bearer realm="realtime"'
    return exc


def field_errors(messages: Mapping[str, Any] | list[Any]) -> list[dict[str, str]]:
    """marshmallow's error messages as ``[{"field": ..., "message": ...}]``."""
    if not isinstance(messages, Mapping):
        return [{"field": "body", "message": str(m)} for m in messages]
    out: list[dict[str, str]] = []
    for field, value in sorted(messages.items()):
        if isinstance(value, Mapping):
            out.extend({"field": f"{field}.{e['field']}", "message": e["message"]} for e in field_errors(value))
        else:
            items = value if isinstance(value, list) else [value]
            out.extend({"field": str(field), "message": str(m)} for m in items)
    return out


def validate(schema: Schema, data: Mapping[str, Any]) -> dict[str, Any]:
    """Load ``data`` with ``schema``.

    Raises:
        web.HTTPException: 400 ``BAD_REQUEST`` with one ``{field, message}`` per problem.
    """
    try:
        return dict(schema.load(data))
    except ValidationError as exc:
        errors = field_errors(exc.messages)
        raise fail(400, errors[0]["message"] if len(errors) == 1 else "Invalid request.", data=errors) from None


async def read_body(request: web.Request, schema: Schema, *, optional: bool = False) -> dict[str, Any]:
    """Read a JSON object body (:func:`http_api.body.read_object`) and validate it (an
    empty body is ``{}`` when ``optional``).

    Raises:
        web.HTTPException: 400 ``BAD_REQUEST`` (missing, not JSON, nested deeper than
            ``MAX_DEPTH``, not an object, U+0000, invalid: ``data`` names the field),
            415 (not JSON), 413 (larger than ``MAX_BODY_BYTES``).
    """
    try:
        data = await read_object(request, optional=optional)
    except BodyError as exc:
        errors = [{"field": exc.field, "message": exc.problem}] if exc.status == 400 else None
        raise fail(exc.status, _sentence(exc) if exc.status == 400 else None, data=errors) from None
    return validate(schema, data or {})


def _sentence(exc: BodyError) -> str:
    """The envelope's style: a capitalized sentence (unless it starts with a field name)."""
    message = exc.message if exc.message.startswith(f"{exc.field}:") else exc.message[:1].upper() + exc.message[1:]
    return f"{message}."


def enveloped(handler: Handler) -> Handler:
    """Decorate a ``/api/v1`` handler so every error it raises is an envelope.

    Errors already in the envelope pass through; other HTTP errors (e.g. a 401 from
    :func:`http_api.auth.authenticate`) get the standard message of their status;
    ``db.NotFound`` is a 404 and ``db.DatabaseUnavailable`` a 503.
    """

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400 or (exc.text or "").startswith('{"success"'):
                raise
            raise fail(exc.status, _detail(exc)) from None
        except NotFound:
            raise fail(404) from None
        except DatabaseUnavailable:
            raise fail(503) from None
        except Exception as exc:
            from http_api.availability import UNAVAILABLE  # here: that module imports this one

            if isinstance(exc, UNAVAILABLE) or (isinstance(exc, ConnectionResetError) and client_gone(request)):
                raise  # the availability middleware answers 503; the error middleware a hang-up
            report(request)
            raise fail(500) from None  # a bug: a 500 envelope, never a traceback

    return wrapper


@web.middleware
async def envelope_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Under ``/api/v1/``, turn router errors (404 unknown path, 405 wrong method, 413) into envelopes."""
    if not request.path.startswith("/api/v1/"):
        return await handler(request)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or (exc.text or "").startswith('{"success"'):
            raise
        raise fail(exc.status, _detail(exc)) from None


def _detail(exc: web.HTTPException) -> str | None:
    if exc.status in (401, 403):
        return None  # the standard "Unauthorized." / "Action not allowed."
    try:
        message = orjson.loads(exc.text or "").get("message")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return message if isinstance(message, str) else None
