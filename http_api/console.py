"""The live console: ``GET /console`` (a static page) and ``GET /console/stats`` (admins).

The page, its script and its stylesheet are package data (``http_api/static``), plain
HTML, CSS and JavaScript with no build step and nothing loaded from elsewhere (a strict
Content-Security-Policy says so). They hold no data: everything the page shows comes from
``/console/stats``, ``/auth/ws``, ``/ws`` and ``/publish``, each with the admin's
credentials (``Authorization: Api-Key``, kept in the tab's ``sessionStorage``).

The console's WebSocket client is the JavaScript package of ``clients/js``, built into one
ES module (``http_api/static/realtime-client.js``, committed; a test checks it equals a fresh
build) and served as ``GET /static/realtime-client.js`` for any page to import, from any origin
(``Access-Control-Allow-Origin: *``: module scripts are fetched with CORS; it holds no data).

``/console/stats`` needs a caller with the ``realtime:admin`` scope.
"""

from __future__ import annotations

import os
import time
from importlib.resources import files
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from http_api.appkeys import NODE
from http_api.auth import authenticate, require_scope
from http_api.errors import json_response
from http_api.metrics import METRICS, LatencyProbe, listens_by_name, topic_count
from realtime.node import Node

ADMIN_SCOPE = "realtime:admin"
CONSOLE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_ASSETS = {
    "/console": ("console.html", "text/html"),
    "/console/console.js": ("console.js", "text/javascript"),
    "/console/console.css": ("console.css", "text/css"),
}
CLIENT_PATH = "/static/realtime-client.js"


class ConsoleStats:
    """Counts for the console, with rates over the time since the previous sample.

    Rates are sampled at most every half second, so several open consoles do not make
    them jumpy.
    """

    def __init__(self, node: Node, probe: LatencyProbe | None = None, min_interval: float = 0.5) -> None:
        self._node = node
        self._probe = probe
        self._min_interval = min_interval
        self._started = time.monotonic()
        self._last = (self._started, node.stats.published, node.stats.delivered)
        self._rates = (0.0, 0.0)

    def snapshot(self) -> dict[str, Any]:
        """The stats document.

        Returns:
            ``{"connections": int, "topics": int, "listens": {name: int}, "published": int,
            "delivered": int, "published_per_second": float, "delivered_per_second": float,
            "broker": {"kind": str, "ready": bool}, "topic_names": [str], "pid": int,
            "uptime_seconds": float}``.
        """
        node = self._node
        stats = node.stats
        now = time.monotonic()
        node_delivered = stats.delivered - (self._probe.deliveries if self._probe else 0)
        then, published, delivered = self._last
        if now - then >= self._min_interval:
            elapsed = now - then
            self._rates = ((stats.published - published) / elapsed, (node_delivered - delivered) / elapsed)
            self._last = (now, stats.published, node_delivered)
        return {
            "connections": len(node.peers),
            "topics": topic_count(node, self._probe),
            "listens": listens_by_name(node),
            "published": stats.published,
            "delivered": node_delivered,
            "published_per_second": round(self._rates[0], 2),
            "delivered_per_second": round(self._rates[1], 2),
            "broker": {"kind": node.broker.kind, "ready": node.broker.ready},
            "topic_names": sorted(node.policy.rules),
            "pid": os.getpid(),
            "uptime_seconds": round(now - self._started, 1),
        }


STATS = web.AppKey("console_stats", ConsoleStats)


async def stats(request: web.Request) -> web.Response:
    """``GET /console/stats``: live counts of this instance.

    Raises:
        web.HTTPException: 401 (no/bad credentials), 403 (no ``realtime:admin`` scope).
    """
    require_scope(await authenticate(request), ADMIN_SCOPE)
    return json_response(request.app[STATS].snapshot(), headers={"Cache-Control": "no-store"})


def _asset_handler(body: bytes, content_type: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(
            body=body,
            content_type=content_type,
            charset="utf-8",
            headers={"Content-Security-Policy": CONSOLE_CSP, "Cache-Control": "no-cache"},
        )

    return handler


def _client_handler(body: bytes) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(
            body=body,
            content_type="text/javascript",
            charset="utf-8",
            headers={"Access-Control-Allow-Origin": "*", "Cache-Control": "no-cache"},
        )

    return handler


def setup_console(app: web.Application) -> None:
    """Add ``/console``, its assets, the JavaScript client and ``/console/stats`` to ``app``
    (after ``app[NODE]``)."""
    static = files("http_api").joinpath("static")
    for path, (name, content_type) in _ASSETS.items():
        app.router.add_get(path, _asset_handler(static.joinpath(name).read_bytes(), content_type))
    app.router.add_get(CLIENT_PATH, _client_handler(static.joinpath("realtime-client.js").read_bytes()))
    app[STATS] = ConsoleStats(app[NODE], app[METRICS].probe if METRICS in app else None)
    app.router.add_get("/console/stats", stats)
