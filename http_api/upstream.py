"""Upstream identity provider JWTs (Cognito, WorkOS, Auth0, any OIDC provider).

``Authorization: Bearer <jwt>`` (or the ``AUTH_COOKIE`` cookie) signed by a key of the
provider's JWKS (``AUTH_JWKS_URL``), with ``iss`` = ``AUTH_ISSUER``, ``aud`` =
``AUTH_AUDIENCE`` and an algorithm in ``AUTH_ALGORITHMS``. The JWKS is fetched with
aiohttp (never blocking the event loop), cached, and refetched when a token names an
unknown ``kid``, at most once a minute. The first valid token of an unseen (``iss``,
``sub``) provisions a ``user-group`` user with ``DEFAULT_USER_SCOPES``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import structlog
from aiohttp import web

from db import NotFound
from db.users import provision_external
from http_api.appkeys import DATABASE
from http_api.errors import json_error
from http_api.identity import user_principal
from http_api.principal import Principal
from topics import parse_scopes

log = structlog.get_logger("http_api.upstream")
#: Minimum seconds between two JWKS fetches caused by unknown ``kid``s.
REFETCH_INTERVAL = 60.0
LEEWAY = 5


class UpstreamVerifier:
    """Verifies upstream JWTs and maps them to database users.

    Args:
        jwks_url: the provider's JWKS URL.
        issuer: required ``iss``.
        audience: required ``aud``.
        algorithms: allowed ``alg`` values (asymmetric only).
        default_scopes: space-separated scopes for provisioned users.
    """

    def __init__(
        self, *, jwks_url: str, issuer: str, audience: str, algorithms: list[str], default_scopes: str
    ) -> None:
        self.jwks_url = jwks_url
        self.issuer = issuer
        self.audience = audience
        self.algorithms = algorithms
        self.default_scopes = parse_scopes(default_scopes)
        self.fetches = 0
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()
        self._http: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        """Close the HTTP client."""
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _fetch(self) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self._fetched_at = time.monotonic()
        self.fetches += 1
        try:
            async with self._http.get(self.jwks_url) as resp:
                resp.raise_for_status()
                data = await resp.json(content_type=None)
            keys = jwt.PyJWKSet.from_dict(data).keys
        except (aiohttp.ClientError, TimeoutError, ValueError, jwt.PyJWKSetError) as exc:
            log.warning("upstream_jwks_fetch_failed", error=str(exc))
            if not self._keys:
                raise json_error(503, "the identity provider's keys are unavailable; try again") from None
            return
        self._keys = {k.key_id or "": k for k in keys}
        log.info("upstream_jwks_fetched", keys=len(self._keys))

    async def signing_key(self, kid: str) -> jwt.PyJWK | None:
        """The key ``kid`` (``""``: the only key), refetching the JWKS at most once a minute."""
        async with self._lock:
            stale = self._fetched_at is None or time.monotonic() - self._fetched_at >= REFETCH_INTERVAL
            if self._lookup(kid) is None and stale:
                await self._fetch()
            return self._lookup(kid)

    def _lookup(self, kid: str) -> jwt.PyJWK | None:
        if not kid and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid) if kid else None

    async def verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid token.

        Raises:
            web.HTTPException: 401 (invalid, expired, wrong issuer/audience/algorithm,
                unknown key); 503 (the JWKS cannot be fetched and none is cached).
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise json_error(401, "invalid bearer token") from None
        if header.get("alg") not in self.algorithms:
            raise json_error(401, "invalid bearer token: algorithm not allowed")
        key = await self.signing_key(str(header.get("kid") or ""))
        if key is None:
            raise json_error(401, "invalid bearer token: unknown signing key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise json_error(401, f"invalid bearer token: {exc}") from None
        return claims

    async def principal(self, app: web.Application, token: str) -> Principal:
        """The database user of a valid token, provisioned on first sight.

        Raises:
            web.HTTPException: 401 (see :meth:`verify`, or the user was deleted).
        """
        claims = await self.verify(token)
        sub = str(claims["sub"])
        email = claims.get("email") if claims.get("email_verified", True) is not False else None
        name = str(claims.get("name") or claims.get("email") or sub)
        async with app[DATABASE].acquire() as conn:
            try:
                user = await provision_external(
                    conn,
                    issuer=self.issuer,
                    subject=sub,
                    name=name,
                    email=email if isinstance(email, str) else None,
                    scopes=self.default_scopes,
                )
            except NotFound:
                raise json_error(401, "this account is disabled") from None
        return user_principal(user, "jwt")


UPSTREAM = web.AppKey("upstream_verifier", UpstreamVerifier)


async def upstream_context(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context closing the verifier's HTTP client."""
    yield
    await app[UPSTREAM].close()
