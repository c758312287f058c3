"""Request bodies: JSON only, validated with marshmallow; errors name the field."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from marshmallow import Schema, ValidationError

from http_api.errors import json_error


async def load_json(
    request: web.Request, schema: Schema, *, optional: bool = False, allow_nul: bool = False
) -> dict[str, Any]:
    """Read and validate a JSON body.

    Args:
        request: the request.
        schema: the marshmallow schema to load with.
        optional: an empty body is read as ``{}``.
        allow_nul: accept U+0000 in strings (bodies that never reach PostgreSQL).

    Returns:
        The loaded data.

    Raises:
        web.HTTPException: 415 if the body is not ``application/json``; 400 if it is
            not JSON, holds U+0000 (unless ``allow_nul``) or does not validate (``fields``
            maps each field to its messages);
            413 if it is larger than ``MAX_BODY_BYTES``.
    """
    raw = await request.read()
    if not raw.strip():
        if optional:
            return dict(schema.load({}))
        raise json_error(400, "request body is required", fields={"body": ["required"]})
    if request.content_type != "application/json":
        raise json_error(415, "request body must be application/json")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise json_error(400, "request body is not valid JSON", fields={"body": ["invalid JSON"]}) from None
    if not isinstance(data, dict):
        raise json_error(400, "request body must be a JSON object", fields={"body": ["must be an object"]})
    where = None if allow_nul else nul_field(data)
    if where is not None:  # PostgreSQL text and jsonb cannot store U+0000
        raise json_error(400, f"{where}: NUL characters are not allowed", fields={where: ["contains NUL"]})
    try:
        return dict(schema.load(data))
    except ValidationError as exc:
        fields = exc.messages if isinstance(exc.messages, dict) else {"body": exc.messages}
        raise json_error(400, f"invalid field(s): {', '.join(sorted(map(str, fields)))}", fields=fields) from None


def nul_field(value: Any, path: str = "body") -> str | None:
    """The path of the first string (key or value) in a JSON value holding U+0000, or ``None``.

    Bodies carrying NUL are refused up front: PostgreSQL ``text`` and ``jsonb`` cannot
    store it, and a 400 naming the field beats a database error.
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


MAX_DEPTH = 64
"""Deepest JSON nesting accepted in bodies bound for PostgreSQL (``jsonb``)."""


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """``True`` when ``value`` nests lists/objects deeper than ``limit`` levels."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False
