"""Built-in login: ``POST /auth/login`` and ``POST /auth/logout`` with server-side sessions.

For deployments without an identity provider. A successful login sets the session
cookie (``SESSION_COOKIE``: HttpOnly, SameSite=Lax, Secure unless ``ENVIRONMENT`` is
``development``, ``Domain`` from ``SESSION_DOMAIN``); the browser then calls ``/auth/ws``
and ``/api/v1`` with it. Wrong email and wrong password get the same 401. Attempts are
rate limited per account and per client IP (token buckets of ``LOGIN_ATTEMPTS_PER_*``
failed attempts refilled over ``LOGIN_WINDOW`` seconds, kept in each instance's memory;
a successful login does not count).
"""

from __future__ import annotations

import math
from datetime import timedelta

from aiohttp import web
from marshmallow import Schema, fields, validate

from db.errors import UNAVAILABLE
from db.sessions import check_password, create_session, end_session
from db.users import normalize_email
from http_api.api_error import ApiError, AuthError, AuthReason
from http_api.appkeys import DATABASE, SETTINGS
from http_api.body import load_json
from http_api.errors import json_response
from realtime.limits import KeyedBuckets, client_ip
from realtime.settings import Settings


class LoginRequest(Schema):
    """``{"email": str, "password": str}``."""

    email = fields.String(required=True, validate=validate.Length(min=1, max=320))
    password = fields.String(required=True, validate=validate.Length(min=1, max=1024))


class LoginLimits:
    """Failed login attempts per account (:func:`~db.users.normalize_email`, the same form
    the lookup compares) and per client IP.

    An attempt refused by its IP's limit is not counted against the account: otherwise one
    address over its limit could keep spending (and so lock) any account it names.

    Args:
        attempts_per_account: failed logins per account per ``window`` (``LOGIN_ATTEMPTS_PER_ACCOUNT``).
        attempts_per_ip: failed logins per client IP per ``window`` (``LOGIN_ATTEMPTS_PER_IP``).
        window: the window, seconds (``LOGIN_WINDOW``).
    """

    def __init__(self, *, attempts_per_account: int, attempts_per_ip: int, window: float) -> None:
        self.retry_after = window / attempts_per_account
        self._account = KeyedBuckets(attempts_per_account / window, attempts_per_account)
        self._ip = KeyedBuckets(attempts_per_ip / window, attempts_per_ip)

    def admit(self, email: str, ip: str) -> bool:
        """Reserve one attempt; ``False`` when the IP or the account is over its limit.

        The IP is checked first and an attempt it refuses takes nothing from the account;
        one the account refuses still counts for the IP. Reserving before the password
        check keeps concurrent guesses within the budget; :meth:`succeeded` gives the
        reservation back, so only failures count.
        """
        return self._ip.take(ip) and self._account.take(normalize_email(email))

    def succeeded(self, email: str, ip: str) -> None:
        """Return the reservation of a successful login."""
        self._account.refund(normalize_email(email))
        self._ip.refund(ip)


LOGIN_LIMITS = web.AppKey("login_limits", LoginLimits)


def _set_cookie(response: web.Response, settings: Settings, session_id: str) -> None:
    auth = settings.auth
    response.set_cookie(
        auth.session_cookie,
        session_id,
        max_age=auth.session_ttl,
        path="/",
        domain=auth.session_domain or None,
        httponly=True,
        secure=settings.server.environment != "development",
        samesite="Lax",
    )


async def login(request: web.Request) -> web.Response:
    """``POST /auth/login``: start a session.

    Returns:
        200 ``{"user": {"uuid", "name", "email", "role"}, "expires_in": seconds}`` with the
        session cookie.

    Raises:
        ApiError: 400 (body), 429 (too many attempts, with ``Retry-After``).
        AuthError: 401 (wrong email or password: one message for both).
    """
    settings = request.app[SETTINGS]
    body = await load_json(request, LoginRequest())
    ip = client_ip(request.remote, request.headers, settings.server.client_ip_header)
    if not request.app[LOGIN_LIMITS].admit(body["email"], ip):
        retry_after = str(math.ceil(request.app[LOGIN_LIMITS].retry_after))
        raise ApiError(429, "too many login attempts; try again later", headers={"Retry-After": retry_after})
    try:
        async with request.app[DATABASE].acquire() as conn:
            user = await check_password(conn, body["email"], body["password"])
            if user is None:
                raise AuthError(AuthReason.INVALID_CREDENTIALS, "wrong email or password")
            session_id = await create_session(conn, user.id, timedelta(seconds=settings.auth.session_ttl))
    except UNAVAILABLE:  # not an attempt: the password was never judged (answered 503)
        request.app[LOGIN_LIMITS].succeeded(body["email"], ip)
        raise
    request.app[LOGIN_LIMITS].succeeded(body["email"], ip)
    response = json_response(
        {
            "user": {"uuid": user.id, "name": user.name, "email": user.email, "role": user.role},
            "expires_in": settings.auth.session_ttl,
        },
        headers={"Cache-Control": "no-store"},
    )
    _set_cookie(response, settings, session_id)
    return response


async def logout(request: web.Request) -> web.Response:
    """``POST /auth/logout``: end the session of the cookie (if any) and clear the cookie.

    Returns:
        200 ``{"status": "logged_out"}`` (also when there was no session).
    """
    auth = request.app[SETTINGS].auth
    session_id = request.cookies.get(auth.session_cookie, "")
    if session_id:
        async with request.app[DATABASE].acquire() as conn:
            await end_session(conn, session_id)
    response = json_response({"status": "logged_out"}, headers={"Cache-Control": "no-store"})
    response.del_cookie(auth.session_cookie, path="/", domain=auth.session_domain or None)
    return response
