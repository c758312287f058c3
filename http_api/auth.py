"""Caller authentication and ``/auth/ws``.

Four credentials are accepted, checked in this order:

1. ``Authorization: Api-Key <key>``: ``API_KEYS`` first (constant time), then the
   database's ``api_keys`` (refused when expired or revoked).
2. ``Authorization: Bearer <jwt>`` from the upstream identity provider (``AUTH_JWKS_URL``).
3. Without an ``Authorization`` header: the built-in login's session cookie
   (``SESSION_COOKIE``), then the upstream JWT in ``AUTH_COOKIE`` if configured.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from aiohttp import web
from marshmallow import Schema, fields

from http_api.api_error import ApiError, AuthError, AuthReason
from http_api.appkeys import ISSUER, SETTINGS
from http_api.body import load_json
from http_api.errors import json_response
from http_api.identity import api_key_principal, session_principal
from http_api.principal import Principal
from http_api.security import trusted_origin
from http_api.upstream import UPSTREAM
from realtime import presence as realtime_presence
from realtime.settings import ApiKeyEntry
from topics import BadScope, parse_scopes

PUBLISH_SCOPE = "realtime:publish"
HISTORY_SCOPE = "realtime:history"
"""Reads any topic's history (``GET /history/{topic}``); without it, only topics the caller may LISTEN to."""
PRESENCE_SCOPE = realtime_presence.PRESENCE_SCOPE
"""Reads any topic's presence (``GET /presence/{topic}``, in-band PRESENCE); without it, only
topics the caller may LISTEN to."""


class ApiKeyAuthenticator:
    """Checks API keys from ``API_KEYS`` in constant time.

    Every configured key is compared (``hmac.compare_digest`` of SHA-256 digests), so
    the time taken does not reveal which key, or which prefix, matched.
    """

    def __init__(self, entries: Iterable[ApiKeyEntry]) -> None:
        self._entries = [(hashlib.sha256(e.api_key.encode()).digest(), e) for e in entries]

    def authenticate(self, key: str) -> Principal | None:
        """The principal of ``key``, or ``None`` if no configured key matches."""
        digest = hashlib.sha256(key.encode()).digest()
        found = None
        for expected, entry in self._entries:
            if hmac.compare_digest(digest, expected) and found is None:
                found = entry
        return None if found is None else Principal(found.user_id, found.scopes)


API_KEYS = web.AppKey("api_key_authenticator", ApiKeyAuthenticator)


async def authenticate(request: web.Request) -> Principal:
    """Authenticate the caller of ``request`` (see the module docstring for the order).

    Raises:
        AuthError: 401 when credentials are missing, malformed, wrong, expired or revoked
            (``reason`` says which); 403 for a cookie sent cross-site.
        ApiError: 503 when the upstream identity provider's keys cannot be fetched.
    """
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    credentials = credentials.strip()
    if not header:
        principal = await _cookie_principal(request)
        if principal is None:
            raise AuthError(AuthReason.MISSING_CREDENTIALS, "missing credentials: send Authorization: Api-Key <key>")
        return principal
    if scheme.lower() == "bearer" and credentials and UPSTREAM in request.app:
        return await request.app[UPSTREAM].principal(request.app, credentials)
    if scheme.lower() != "api-key" or not credentials:
        raise AuthError(AuthReason.BAD_SCHEME, "unsupported Authorization scheme: use Api-Key <key>")
    principal = request.app[API_KEYS].authenticate(credentials) or await api_key_principal(request.app, credentials)
    if principal is None:
        raise AuthError(AuthReason.INVALID_CREDENTIALS, "invalid API key")
    return principal


async def _cookie_principal(request: web.Request) -> Principal | None:
    auth = request.app[SETTINGS].auth
    _refuse_cross_site(request)
    principal = await session_principal(request.app, request.cookies.get(auth.session_cookie, ""))
    token = request.cookies.get(auth.cookie, "") if auth.cookie else ""
    if principal is None and token and UPSTREAM in request.app:
        principal = await request.app[UPSTREAM].principal(request.app, token)
    return principal


def _refuse_cross_site(request: web.Request) -> None:
    """Cookies ride along on requests other sites make: refuse a state-changing request
    carrying a cookie from an ``Origin`` that is neither ours (scheme, host and port) nor in
    ``CORS_ORIGINS``; see :func:`http_api.security.trusted_origin`."""
    origin = request.headers.get("Origin")
    if request.method in ("GET", "HEAD", "OPTIONS") or origin is None or not request.cookies:
        return
    if not trusted_origin(request, origin):
        raise AuthError(AuthReason.FORBIDDEN, f"cross-site request refused: origin {origin} is not in CORS_ORIGINS")


def require_scope(principal: Principal, scope: str) -> None:
    """Raises a 403 :class:`AuthError` naming ``scope`` (``missing_scopes``) unless the principal has it."""
    if scope not in principal.scopes:
        raise AuthError(AuthReason.FORBIDDEN, f"this API key lacks the scope {scope}", missing_scopes=[scope])


class WsTokenRequest(Schema):
    """Body of ``POST /auth/ws``: ``{"scope": "a:b c:d"}`` (optional)."""

    scope = fields.String(load_default=None, allow_none=True)


_WS_TOKEN_REQUEST = WsTokenRequest()  # reused: building a schema deep-copies its fields


async def issue_ws_token(request: web.Request) -> web.Response:
    """``GET|POST /auth/ws``: issue a WS token to the authenticated caller.

    Optional ``scope`` (query string or JSON body), space-separated, narrows the token
    to a subset of the caller's scopes.

    Returns:
        200 ``{"token": str, "expires_in": seconds, "scope": str}``.

    Raises:
        AuthError: 401 (no/bad credentials), 403 (a requested scope the caller lacks,
            named in ``missing_scopes``).
        ApiError: 400 (malformed scope or body).
    """
    principal = await authenticate(request)
    requested = request.query.get("scope")
    if request.method == "POST" and requested is None:
        requested = (await load_json(request, _WS_TOKEN_REQUEST, optional=True)).get("scope")
    try:
        wanted = principal.scopes if requested is None else parse_scopes(requested)
    except BadScope as exc:
        raise ApiError(400, str(exc), fields={"scope": [str(exc)]}) from None
    missing = sorted(wanted - principal.scopes)
    if missing:
        message = f"scope not granted to this caller: {' '.join(missing)}"
        raise AuthError(AuthReason.FORBIDDEN, message, missing_scopes=missing)
    issued = request.app[ISSUER].issue(principal.user_id, wanted)
    ttl = request.app[SETTINGS].auth.ws_token_ttl
    return json_response(
        {"token": issued.token, "expires_in": ttl, "scope": issued.scope},
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )
