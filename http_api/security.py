"""Security headers on every HTTP response, and CORS for the origins in ``CORS_ORIGINS``.

Headers are added in ``on_response_prepare``, so they are on every response: handlers,
JSON errors, 404s and the WebSocket handshake alike. A browser request whose ``Origin``
is listed gets ``Access-Control-Allow-Origin: <origin>`` with credentials allowed;
other origins get no CORS headers (the browser then refuses to share the response).
Preflights (``OPTIONS`` with ``Access-Control-Request-Method``) are answered 204 here.
:func:`trusted_origin` decides which ``Origin`` may send a cookie-authenticated request.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler

from http_api.appkeys import SETTINGS

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}
ALLOW_METHODS = "GET, POST, PUT, DELETE, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type, X-Request-ID"
ORIGINS = web.AppKey("cors_origins", frozenset)


def setup_security(app: web.Application) -> None:
    """Install the preflight middleware and the header hook on ``app``."""
    app[ORIGINS] = frozenset(app[SETTINGS].server.cors_origins.replace(",", " ").split())
    app.middlewares.append(preflight_middleware)
    app.on_response_prepare.append(_add_headers)


@web.middleware
async def preflight_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer CORS preflights with 204 (the headers come from the response hook)."""
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        return web.Response(status=204)
    return await handler(request)


def own_origin(request: web.Request) -> str:
    """The origin (RFC 6454 serialization, lower case) of the pages this server serves.

    The host (and port) is the request's ``Host``. The scheme is ``https``, except in
    development (``ENVIRONMENT=development``) and on a loopback host (``localhost``,
    ``127.0.0.1``, ``[::1]``), where it is the scheme the request arrived with. Outside
    those the session cookie is ``Secure``, so a browser only sends it over HTTPS, even when
    a TLS-terminating proxy (Caddy, Fly) forwards the request to us over plain HTTP; a
    loopback address cannot be reached through anyone's network path, and browsers keep
    ``Secure`` cookies for ``http://localhost``.
    """
    host = request.host.lower()
    local = request.app[SETTINGS].server.environment == "development" or _loopback(host)
    return f"{request.scheme if local else 'https'}://{host}"


def _loopback(host: str) -> bool:
    name = urlsplit(f"//{host}").hostname or ""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def trusted_origin(request: web.Request, origin: str) -> bool:
    """Whether ``origin`` (an ``Origin`` header) is ours or listed in ``CORS_ORIGINS``.

    Scheme, host and port must all match (RFC 6454 same origin): ``http://<our host>``
    is another origin than ``https://<our host>``, and a page served over plain HTTP
    (which anyone on the network path can rewrite) must not act with the HTTPS site's
    cookie.
    """
    return origin.lower() == own_origin(request) or origin in request.app[ORIGINS]


async def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    if response.status == 101:
        return  # a WebSocket upgrade: browsers ignore these there, and each would live as long as the socket
    headers = response.headers
    for name, value in SECURITY_HEADERS.items():
        headers.setdefault(name, value)
    if request.app[SETTINGS].server.environment != "development":
        headers.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
    origin = request.headers.get("Origin")
    if origin is None:
        return
    headers.add("Vary", "Origin")
    if origin not in request.app[ORIGINS]:
        return
    headers["Access-Control-Allow-Origin"] = origin
    headers["Access-Control-Allow-Credentials"] = "true"
    if request.method == "OPTIONS":
        headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
        headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
        headers["Access-Control-Max-Age"] = "600"
    else:
        headers["Access-Control-Expose-Headers"] = "X-Request-ID, Retry-After"
