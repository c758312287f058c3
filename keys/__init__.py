"""Signing keys, the JWKS document, and WS token issue and verification.

Tokens are JWTs (RFC 7519) signed ES256 (P-256, RFC 7518 section 3.4); each key's
``kid`` is its RFC 7638 JWK thumbprint; the public keys are served as a JWKS
(RFC 7517). Several keys may be loaded for rotation: the newest signs, all verify.

Exception tree::

    KeysError                   base of this package
    ├── NoSigningKey            no key is configured or could be loaded
    └── InvalidToken            a token that must be refused, with a reason
"""

from __future__ import annotations

from keys.errors import InvalidToken, KeysError, NoSigningKey
from keys.store import KeyId, KeyStore, SigningKey, generate_key, jwk_thumbprint
from keys.tokens import Grant, TokenIssuer, TokenVerifier

__all__ = [
    "Grant",
    "InvalidToken",
    "KeyId",
    "KeyStore",
    "KeysError",
    "NoSigningKey",
    "SigningKey",
    "TokenIssuer",
    "TokenVerifier",
    "generate_key",
    "jwk_thumbprint",
]
