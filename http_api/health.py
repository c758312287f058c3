"""``/health``, ``/ready`` and ``/.well-known/jwks.json``."""

from __future__ import annotations

import asyncio

from aiohttp import web

from http_api.appkeys import DATABASE, KEY_STORE, NODE
from http_api.errors import json_response

DATABASE_CHECK_TIMEOUT = 1.0
"""Seconds a ``SELECT 1`` may take before ``/ready`` calls the database down."""


async def health(request: web.Request) -> web.Response:
    """Liveness: 200 ``{"status": "ok"}`` while the process serves."""
    return json_response({"status": "ok"})


async def _database_up(request: web.Request) -> bool:
    try:
        async with asyncio.timeout(DATABASE_CHECK_TIMEOUT):
            async with request.app[DATABASE].acquire() as conn:
                await conn.fetchval("SELECT 1")
    except Exception:  # noqa: BLE001 - any failure means "not ready"
        return False
    return True


async def ready(request: web.Request) -> web.Response:
    """Readiness: 200 when every dependency is up, else 503.

    Body: ``{"status": "ready"|"not_ready", "dependencies": {"broker": {"kind": ...,
    "state": "connected"|"disconnected"}, "database": {"state": ...}}}``; ``database``
    is present only when the server has one.
    """
    broker = request.app[NODE].broker
    dependencies: dict[str, dict[str, str]] = {
        "broker": {"kind": broker.kind, "state": "connected" if broker.ready else "disconnected"}
    }
    if DATABASE in request.app:
        dependencies["database"] = {"state": "connected" if await _database_up(request) else "disconnected"}
    up = all(dep["state"] == "connected" for dep in dependencies.values())
    body = {"status": "ready" if up else "not_ready", "dependencies": dependencies}
    return json_response(body, status=200 if up else 503)


async def jwks(request: web.Request) -> web.Response:
    """The public signing keys as an RFC 7517 JWK Set."""
    return json_response(request.app[KEY_STORE].jwks(), headers={"Cache-Control": "public, max-age=300"})
