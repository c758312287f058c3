"""``POST /auth/ws/revoke``: revoke WS tokens on every instance."""

from __future__ import annotations

from aiohttp import web
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from http_api.api_error import ApiError, AuthError, AuthReason
from http_api.appkeys import NODE
from http_api.auth import authenticate
from http_api.body import load_json
from http_api.errors import json_response
from realtime.envelope import MAX_JTI_LENGTH, MAX_SUB_LENGTH
from realtime.errors import BrokerUnavailable, RevocationRefused
from realtime.limits import KeyedBuckets

REVOKE_SCOPE = "realtime:revoke"
REVOKE_RATE = 1.0
"""Revocations per second per caller (burst :data:`REVOKE_BURST`): each one is kept by
every instance for the token lifetime, so they are not free."""
REVOKE_BURST = 10
REVOKE_BUCKETS = web.AppKey("revoke_buckets", KeyedBuckets)


class RevokeRequest(Schema):
    """``{"jti": str}`` (one token) or ``{"sub": str}`` (every token of a user, issued until now)."""

    jti = fields.String(load_default=None, validate=validate.Length(min=1, max=MAX_JTI_LENGTH))
    sub = fields.String(load_default=None, validate=validate.Length(min=1, max=MAX_SUB_LENGTH))

    @validates_schema
    def one_of(self, data: dict[str, object], **kwargs: object) -> None:
        """Exactly one of ``jti`` and ``sub``."""
        if (data.get("jti") is None) == (data.get("sub") is None):
            raise ValidationError("give exactly one of jti or sub", field_name="jti")


async def revoke_ws_tokens(request: web.Request) -> web.Response:
    """Revoke WS tokens; within a second every instance drops the topics they granted and
    sends ``AUTH_REVOKED``, and refuses them on later LISTENs.

    A caller may revoke its own tokens (``sub`` equal to its user id, or a ``jti`` of its
    own); revoking anyone's needs the ``realtime:revoke`` scope. A revocation is never
    undone by later ones: when it cannot be remembered it is refused instead (see
    :mod:`realtime.revocations`).

    Returns:
        202 ``{"status": "accepted"}``.

    Raises:
        AuthError: 401, 403 (someone else's tokens without the scope).
        ApiError: 400 (body), 429 (the caller already has ``MAX_REVOCATIONS_PER_USER`` live revocations of its
            own tokens by ``jti``), 503 (the revocation table is full, or the broker did not
            take the revocation: either way it did not happen).
    """
    principal = await authenticate(request)
    if not request.app[REVOKE_BUCKETS].take(principal.user_id):
        raise ApiError(429, f"at most {REVOKE_RATE:g} revocation per second; slow down")
    body = await load_json(request, RevokeRequest())
    privileged = REVOKE_SCOPE in principal.scopes
    jti, sub = body["jti"], body["sub"]
    if sub is not None and sub != principal.user_id and not privileged:
        message = f"revoking another user's tokens needs the scope {REVOKE_SCOPE}"
        raise AuthError(AuthReason.FORBIDDEN, message, missing_scopes=[REVOKE_SCOPE])
    if jti is not None and not privileged:
        sub = principal.user_id  # only the caller's own token with that jti
    try:
        await request.app[NODE].revoke(jti=jti, sub=sub, limited=not privileged)
    except ValueError as exc:  # e.g. an API_KEYS userId too long to name in a revocation
        raise ApiError(400, str(exc)) from None
    except RevocationRefused as exc:
        raise ApiError(503 if exc.full else 429, f"revocation refused: {exc}") from None
    except BrokerUnavailable as exc:
        raise ApiError(503, f"revocation not sent: {exc}") from None
    return json_response({"status": "accepted"}, status=202)
