"""WS tokens: short-lived ES256 JWTs (RFC 7519) carrying a user and scopes.

Claims: ``iss``, ``aud``, ``sub`` (user id as a string), ``scope`` (space-separated, as
in RFC 9068), ``iat`` (fractional: NumericDate may be), ``nbf``,
``exp``, ``jti``. The JOSE header carries ``kid``
(RFC 7638 thumbprint of the signing key) and ``alg: ES256``; no other algorithm is
accepted, so ``alg: none`` and HS256-with-the-public-key tokens are refused.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ec

from keys.errors import InvalidToken
from keys.store import KeyStore

ALGORITHM = "ES256"
_REQUIRED = ["iss", "aud", "sub", "scope", "iat", "nbf", "exp", "jti"]


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified token grants.

    Attributes:
        sub: the user id the token was issued to.
        scopes: the scopes it carries.
        exp: expiry, seconds since the epoch.
        jti: the token id (RFC 7519 section 4.1.7).
        kid: the id of the key that signed it.
        iat: issue time, seconds since the epoch.
    """

    sub: str
    scopes: frozenset[str]
    exp: float
    jti: str
    kid: str
    iat: float = 0.0


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A freshly signed token.

    Attributes:
        token: the compact JWS.
        expires_in: lifetime in seconds.
        scope: the granted scopes, space-separated and sorted.
        jti: the token id.
    """

    token: str
    expires_in: int
    scope: str
    jti: str


class TokenIssuer:
    """Signs WS tokens with the store's signing key."""

    def __init__(self, store: KeyStore, *, issuer: str, audience: str, ttl: int) -> None:
        """Args:
        store: the keys; its signing key signs.
        issuer: the ``iss`` claim.
        audience: the ``aud`` claim.
        ttl: token lifetime in seconds.
        """
        self._store = store
        self._issuer = issuer
        self._audience = audience
        self._ttl = ttl

    def issue(self, sub: str, scopes: Iterable[str], *, now: float | None = None) -> IssuedToken:
        """Sign a token for ``sub`` with ``scopes``.

        Args:
            sub: the user id.
            scopes: the scopes to carry (already checked by the caller).
            now: the issue time in seconds since the epoch (default: now).

        Returns:
            The token with its lifetime and scope string.
        """
        moment = time.time() if now is None else now
        issued_at = int(moment)
        scope = " ".join(sorted(set(scopes)))
        jti = secrets.token_urlsafe(16)
        claims = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": sub,
            "scope": scope,
            "iat": moment,  # full precision: a revocation "until now" must not catch the next token
            "nbf": issued_at,
            "exp": issued_at + self._ttl,
            "jti": jti,
        }
        key = self._store.signing_key
        token = jwt.encode(claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid})
        return IssuedToken(token, self._ttl, scope, jti)


class TokenVerifier:
    """Verifies WS tokens against every key in the store."""

    def __init__(self, store: KeyStore, *, issuer: str, audience: str, leeway: float = 5.0) -> None:
        """Args:
        store: the keys; a token's ``kid`` must name one of them.
        issuer: the required ``iss``.
        audience: the required ``aud``.
        leeway: clock skew allowed on ``nbf``, in seconds. ``exp`` gets none: a token
            is refused from the second it expires, the moment the server also ends
            the LISTENs it granted.
        """
        self._public: dict[str, ec.EllipticCurvePublicKey] = {
            key.kid: key.private_key.public_key() for key in store.keys
        }
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway

    def verify(self, token: object, *, now: float | None = None) -> Grant:
        """Verify a token and return what it grants.

        Args:
            token: the compact JWS (any type; only a string can succeed).
            now: the current time in seconds since the epoch, for tests.

        Returns:
            The grant.

        Raises:
            InvalidToken: malformed, unknown ``kid``, not ES256, bad signature, expired,
                not yet valid, wrong ``aud`` or ``iss``, or a missing claim.
        """
        if not isinstance(token, str) or not token or len(token) > 8192:
            raise InvalidToken("token must be a non-empty string")
        header = _peek_header(token)
        if header.get("alg") != ALGORITHM:
            raise InvalidToken(f"token algorithm must be {ALGORITHM}")
        kid = header.get("kid")
        if not isinstance(kid, str) or (public := self._public.get(kid)) is None:
            raise InvalidToken("token signed by an unknown key")
        options: dict[str, object] = {
            "require": _REQUIRED,
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
        }
        try:
            claims = jwt.decode(
                token,
                public,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                options=options,  # type: ignore[arg-type]
            )
        except jwt.InvalidAudienceError:
            raise InvalidToken("token audience is wrong") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("token issuer is wrong") from None
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"invalid token: {type(exc).__name__}") from None
        self._check_times(claims, time.time() if now is None else now)
        return self._grant(claims, kid)

    def _check_times(self, claims: dict[str, object], now: float) -> None:
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not isinstance(exp, int | float) or not isinstance(nbf, int | float):
            raise InvalidToken("invalid token: bad time claims")
        if exp <= now:
            raise InvalidToken("token expired")
        if nbf > now + self._leeway:
            raise InvalidToken("token not yet valid", lasting=False)

    @staticmethod
    def _grant(claims: dict[str, object], kid: str) -> Grant:
        sub, scope, jti, exp, iat = (claims.get(k) for k in ("sub", "scope", "jti", "exp", "iat"))
        if not isinstance(sub, str) or not isinstance(scope, str) or not isinstance(jti, str):
            raise InvalidToken("invalid token: sub, scope and jti must be strings")
        if not isinstance(exp, int | float) or not isinstance(iat, int | float):
            raise InvalidToken("invalid token: exp and iat must be numbers")
        return Grant(sub, frozenset(scope.split()), float(exp), jti, kid, float(iat))


def _peek_header(token: str) -> dict[str, object]:
    """The JOSE header of a compact JWS, unverified, to pick the key by ``kid``
    (RFC 7515 section 7.1). ``jwt.get_unverified_header`` would decode and parse the whole
    token a second time; the header alone is a few dozen bytes. PyJWT then verifies the
    complete token, header included, with the key chosen here.

    Raises:
        InvalidToken: not three dot-separated parts, or a header that is not a JSON object.
    """
    segment, dot, rest = token.partition(".")
    if not dot or rest.count(".") != 1 or len(segment) > 1024:
        raise InvalidToken("malformed token")
    try:
        header = orjson.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, binascii.Error):
        raise InvalidToken("malformed token") from None
    if not isinstance(header, dict):
        raise InvalidToken("malformed token")
    return header
