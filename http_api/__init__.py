"""HTTP handlers: health, JWKS, WS token issue (``/auth/ws``), ``/publish``, ``/history`` and ``/presence``.

Handlers raise :class:`http_api.api_error.ApiError`; every error is JSON
``{"error": "<code>", "message": "...", ...}`` with a stable code (:data:`http_api.api_error.CODES`):
``bad_request`` (400, with ``fields``), ``unauthorized`` (401), ``forbidden`` (403),
``not_found`` (404), ``method_not_allowed`` (405), ``request_timeout`` (408),
``payload_too_large`` (413), ``unsupported_media_type`` (415), ``unavailable`` (503),
``internal`` (500); under ``/api/v1`` the e-dream envelope (:mod:`http_api.render`).
"""

from __future__ import annotations

from aiohttp import web

from http_api import auth, health, history, presence, publish, revoke
from http_api.api_v1 import setup_api_v1
from http_api.errors import error_middleware
from http_api.index import setup_index
from http_api.security import setup_security
from realtime.limits import KeyedBuckets


def setup_routes(app: web.Application) -> None:
    """Add every HTTP route and the JSON error middleware to ``app``."""
    app.middlewares.append(error_middleware)
    setup_index(app)
    app.router.add_get("/health", health.health)
    app.router.add_get("/ready", health.ready)
    app.router.add_get("/.well-known/jwks.json", health.jwks)
    app.router.add_route("GET", "/auth/ws", auth.issue_ws_token)
    app.router.add_route("POST", "/auth/ws", auth.issue_ws_token)
    app[revoke.REVOKE_BUCKETS] = KeyedBuckets(revoke.REVOKE_RATE, revoke.REVOKE_BURST)
    app.router.add_post("/auth/ws/revoke", revoke.revoke_ws_tokens)
    app.router.add_post("/publish", publish.publish)
    app.router.add_get("/history/{topic}", history.read_history)
    app.router.add_get("/presence/{topic}", presence.read_presence)
    app.router.add_get("/presence/{topic}/stats", presence.read_presence_stats)
    setup_api_v1(app)
    setup_security(app)


__all__ = ["setup_routes"]
