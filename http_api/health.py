"""``/health``, ``/ready`` and ``/.well-known/jwks.json``."""

from __future__ import annotations

from aiohttp import web

from http_api.errors import json_response
from realtime.appkeys import KEY_STORE, NODE


async def health(request: web.Request) -> web.Response:
    """Liveness: 200 ``{"status": "ok"}`` while the process serves."""
    return json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """Readiness: 200 when every dependency is up, else 503.

    Body: ``{"status": "ready"|"not_ready", "dependencies": {"broker": {"kind": ...,
    "state": "connected"|"disconnected"}}}``.
    """
    broker = request.app[NODE].broker
    up = broker.ready
    body = {
        "status": "ready" if up else "not_ready",
        "dependencies": {"broker": {"kind": broker.kind, "state": "connected" if up else "disconnected"}},
    }
    return json_response(body, status=200 if up else 503)


async def jwks(request: web.Request) -> web.Response:
    """The public signing keys as an RFC 7517 JWK Set."""
    return json_response(request.app[KEY_STORE].jwks(), headers={"Cache-Control": "public, max-age=300"})
