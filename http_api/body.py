"""Request bodies: the one JSON body reader of every route.

:func:`read_object` reads and checks a body in a fixed order, each check bounded in time
and memory whatever the client sends:

1. size: at most ``MAX_BODY_BYTES`` (aiohttp refuses more while reading: 413);
2. presence and media type: an empty body is ``{}`` only where the route allows it;
   anything else must be ``application/json`` (415);
3. syntax and depth: orjson parses (it stops by itself past 1024 levels), then an
   iterative walk refuses more than :data:`MAX_DEPTH` levels, before any recursive code
   (marshmallow, the NUL check) sees the value;
4. type: the top level must be an object;
5. U+0000 in any string (PostgreSQL ``text`` and ``jsonb`` cannot store it), unless the
   route allows it.

Problems raise :class:`BodyError` naming the field, and values that do not validate
:class:`~http_api.api_error.InvalidFields`: both are :class:`~http_api.api_error.ApiError`,
rendered by the route family's renderer (:mod:`http_api.render`). A client that hangs up
while its body is being read is a :class:`BodyError` too (not a server error, not a
database outage).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import structlog
from aiohttp import web
from marshmallow import Schema, ValidationError

from http_api.api_error import ApiError, InvalidFields

log = structlog.get_logger("http_api")

MAX_DEPTH = 64
"""Deepest JSON nesting (objects and arrays) accepted in any request body."""


class BodyError(ApiError):
    """A request body that cannot be used: 400 (``fields`` is ``{field: [problem]}``) or 415.

    The envelope shows a 400's message as a sentence and a 415's standard message.

    Attributes:
        status: the HTTP status to answer (400 or 415).
        message: a sentence for the client, without a trailing period.
        field: the field at fault (``"body"`` for the whole body).
        problem: a short stable description (``"invalid JSON"``, ``"too deep"``...).
    """

    def __init__(self, status: int, message: str, field: str = "body", problem: str = "") -> None:
        super().__init__(status, message, fields={field: [problem]} if status == 400 else None)
        self.message: str = message
        self.field, self.problem = field, problem

    def envelope_message(self) -> str | None:
        """A 400's message as a capitalized sentence (unless it starts with the field's
        name); ``None`` (the standard message) otherwise."""
        if self.status != 400:
            return None
        message = (
            self.message if self.message.startswith(f"{self.field}:") else self.message[:1].upper() + self.message[1:]
        )
        return f"{message}."


async def read_object(
    request: web.Request, *, optional: bool = False, allow_nul: bool = False, max_depth: int = MAX_DEPTH
) -> dict[str, Any] | None:
    """Read a request body that must be a JSON object (the checks of the module docstring).

    Args:
        request: the request.
        optional: an empty body is allowed (returns ``None``).
        allow_nul: accept U+0000 in strings (bodies that never reach PostgreSQL).
        max_depth: the deepest nesting accepted, in levels (an object holding an array is 2).

    Returns:
        The JSON object, or ``None`` for an empty body when ``optional``.

    Raises:
        BodyError: 400 (missing, not JSON, too deep, not an object, NUL, connection
            closed mid-body) or 415 (not ``application/json``).
        web.HTTPRequestEntityTooLarge: larger than ``MAX_BODY_BYTES`` (413).
    """
    try:
        raw = await request.read()
    except ConnectionResetError:  # the client hung up mid-body: nothing to answer, nothing broke
        log.info("client_disconnected", path=request.path, method=request.method, reading="body")
        raise BodyError(400, "the connection closed before the whole body arrived", problem="incomplete") from None
    if not raw.strip():
        if optional:
            return None
        raise BodyError(400, "request body is required", problem="required")
    if request.content_type != "application/json":
        raise BodyError(415, "request body must be application/json", problem="not JSON")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth" in str(exc) or "recursion" in str(exc):
            raise _too_deep("body", max_depth) from None
        raise BodyError(400, "request body is not valid JSON", problem="invalid JSON") from None
    where = deep_field(data, max_depth)
    if where is not None:
        raise _too_deep(where, max_depth)
    if not isinstance(data, dict):
        raise BodyError(400, "request body must be a JSON object", problem="must be an object")
    where = None if allow_nul else nul_field(data)
    if where is not None:
        raise BodyError(400, f"{where}: NUL characters are not allowed", where, "contains NUL")
    return data


def _too_deep(field: str, limit: int) -> BodyError:
    return BodyError(400, f"{field}: nested deeper than {limit} levels", field, "too deep")


async def load_json(
    request: web.Request, schema: Schema, *, optional: bool = False, allow_nul: bool = False
) -> dict[str, Any]:
    """Read a JSON object body (:func:`read_object`) and load it with ``schema``.

    Args:
        request: the request.
        schema: the marshmallow schema to load with.
        optional: an empty body is read as ``{}``.
        allow_nul: accept U+0000 in strings (bodies that never reach PostgreSQL).

    Returns:
        The loaded data.

    Raises:
        BodyError: 415 if the body is not ``application/json``; 400 if it is missing, not
            JSON, nested deeper than :data:`MAX_DEPTH`, not an object or holds U+0000
            (unless ``allow_nul``).
        InvalidFields: 400, it does not validate (``fields`` maps each field to its messages).
        web.HTTPRequestEntityTooLarge: larger than ``MAX_BODY_BYTES`` (413).
    """
    data = await read_object(request, optional=optional, allow_nul=allow_nul)
    return validate(schema, data or {})


def validate(schema: Schema, data: Mapping[str, Any]) -> dict[str, Any]:
    """Load ``data`` (a body, a query string) with ``schema``.

    Raises:
        InvalidFields: 400, one entry per field that does not validate.
    """
    try:
        return dict(schema.load(data))
    except ValidationError as exc:
        raise InvalidFields(exc.messages) from None


def nul_field(value: Any, path: str = "body") -> str | None:
    """The path of the first string (key or value) in a JSON value holding U+0000, or ``None``.

    Recursive: call it only on values :func:`deep_field` accepted.
    """
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = nul_field(key, path) or nul_field(item, str(key) if path == "body" else f"{path}.{key}")
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = nul_field(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def deep_field(value: Any, limit: int = MAX_DEPTH) -> str | None:
    """The top-level field under which ``value`` nests lists/objects deeper than ``limit``
    levels (``"body"`` when the top level itself is not an object), or ``None``.

    Iterative (an explicit stack), so any depth orjson accepts is safe to check.
    """
    stack: list[tuple[Any, int, str]] = [(value, 1, "body")]
    while stack:
        item, depth, field = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return field
            if isinstance(item, dict):
                stack.extend((v, depth + 1, str(k) if depth == 1 else field) for k, v in item.items())
            else:
                stack.extend((v, depth + 1, field) for v in item)
    return None
