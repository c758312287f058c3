"""The client SDK's token handling: fetching a WS token, and reading its times without
verifying it (the refresh is scheduled by them)."""

from __future__ import annotations

import base64
import time

import aiohttp
import orjson

from realtime.client_events import TokenRefused


def _claims(token: str) -> dict[str, object]:
    """A JWT's claims, read without verification (for scheduling only); ``{}`` if unreadable."""
    try:
        payload = token.split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim (epoch seconds) of a JWT, read without verification (for scheduling
    the refresh only), or ``None`` if there is none."""
    return _number(_claims(token).get("exp"))


def refresh_deadline(token: str, expires_in: object, now: float) -> float | None:
    """When a token from ``/auth/ws`` received at ``now`` expires, on this client's clock:
    ``now`` plus the shorter of ``expires_in`` and the token's own lifetime (``exp - iat``).
    ``expires_in`` alone can be up to a second long (``exp`` is whole seconds, RFC 7519
    NumericDate, counted from the issue second), enough to lose a short-lived token's topics
    before its refresh; the claims are compared only with each other, so a client clock that
    is off does not move the refresh. Falls back to the ``exp`` claim; ``None`` when nothing
    is known."""
    claims = _claims(token)
    exp, iat = _number(claims.get("exp")), _number(claims.get("iat"))
    lifetimes = [_number(expires_in)]
    if exp is not None and iat is not None:
        lifetimes.append(exp - iat)
    known = [x for x in lifetimes if x is not None]
    return now + min(known) if known else exp


async def fetch_token(
    http: aiohttp.ClientSession, url: str, api_key: str | None, scope: str | None
) -> tuple[str, float | None]:
    """A WS token from ``POST {url}/auth/ws`` with ``Authorization: Api-Key``.

    Args:
        http: the client's session.
        url: the server's base URL.
        api_key: the API key.
        scope: narrow the token to these scopes (space-separated), or ``None``.

    Returns:
        The token and when to consider it expired (:func:`refresh_deadline`, epoch seconds).

    Raises:
        TokenRefused: 401 or 403 (retrying will not help).
        aiohttp.ClientResponseError: any other status but 200.
    """
    params = {"scope": scope} if scope else {}
    headers = {"Authorization": f"Api-Key {api_key}"}
    async with http.post(url + "/auth/ws", headers=headers, params=params) as resp:
        if resp.status in (401, 403):
            raise TokenRefused(f"/auth/ws answered {resp.status}: {(await resp.text())[:300]}")
        if resp.status != 200:
            raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status, message="/auth/ws failed")
        body = await resp.json()
    token = str(body["token"])
    return token, refresh_deadline(token, body.get("expires_in"), time.time())
