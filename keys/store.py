"""ES256 signing keys on disk or in the environment, their kids and the JWKS.

Key directory layout (``KEYS_DIR``, default ``./keys.d``): one PKCS#8 PEM file per key,
mode 0600, named ``<created UTC, %Y%m%dT%H%M%S%fZ>_<kid>.pem`` so that a directory listing
sorts by age. The newest key signs; every key verifies (rotation: generate a new key,
restart, and remove the old one once the tokens it signed have expired).

``WS_SIGNING_KEYS`` may instead hold one or more concatenated PEMs (Fly.io secrets); the
*first* PEM signs and all verify. When it is set, the directory is not read.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NewType

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from keys.errors import NoSigningKey

KeyId = NewType("KeyId", str)
"""A key id: the RFC 7638 SHA-256 JWK thumbprint, base64url without padding."""

_PEM_RE = re.compile(rb"-----BEGIN (?:EC )?PRIVATE KEY-----.+?-----END (?:EC )?PRIVATE KEY-----", re.DOTALL)
_STAMP = "%Y%m%dT%H%M%S%fZ"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def public_jwk(public_key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The RFC 7517 JWK members of a P-256 public key: ``kty``, ``crv``, ``x``, ``y``."""
    numbers = public_key.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64url(numbers.x.to_bytes(32, "big")),
        "y": _b64url(numbers.y.to_bytes(32, "big")),
    }


def jwk_thumbprint(public_key: ec.EllipticCurvePublicKey) -> KeyId:
    """RFC 7638 thumbprint: SHA-256 over the required members in lexicographic order.

    For EC keys the members are ``crv``, ``kty``, ``x``, ``y``, serialised without
    whitespace; the digest is base64url-encoded without padding (43 characters).
    """
    jwk = public_jwk(public_key)
    canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True)
    return KeyId(_b64url(hashlib.sha256(canonical.encode("ascii")).digest()))


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One P-256 private key with its kid.

    Attributes:
        kid: RFC 7638 thumbprint of the public key.
        private_key: the key.
        created: when it was generated (UTC), or ``None`` when unknown (environment).
        source: the file path, or ``"env"``.
    """

    kid: KeyId
    private_key: ec.EllipticCurvePrivateKey
    created: datetime | None
    source: str

    @classmethod
    def from_pem(cls, pem: bytes, *, created: datetime | None, source: str) -> SigningKey:
        """Load a PEM private key.

        Raises:
            NoSigningKey: if the PEM does not hold a P-256 private key.
        """
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise NoSigningKey(f"cannot load signing key from {source}: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise NoSigningKey(f"signing key from {source} is not an EC P-256 key (ES256)")
        return cls(jwk_thumbprint(key.public_key()), key, created, source)

    def public_jwk(self) -> dict[str, str]:
        """The public JWK with ``kid``, ``use`` and ``alg`` (RFC 7517 section 4)."""
        return {**public_jwk(self.private_key.public_key()), "kid": self.kid, "use": "sig", "alg": "ES256"}


def generate_key(directory: str | Path, *, now: datetime | None = None) -> SigningKey:
    """Create a new P-256 key and save it as a 0600 PEM in ``directory`` (created 0700).

    Returns:
        The new key.
    """
    created = now or datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    kid = jwk_thumbprint(key.public_key())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = Path(directory)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = path / f"{created.strftime(_STAMP)}_{kid}.pem"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return SigningKey(kid, key, created, str(target))


def _created_from_name(path: Path) -> datetime | None:
    stamp = path.stem.partition("_")[0]
    try:
        return datetime.strptime(stamp, _STAMP).replace(tzinfo=UTC)
    except ValueError:
        return None


class KeyStore:
    """The loaded keys: one signs, all verify.

    Attributes:
        keys: every key, the signing key first.
    """

    __slots__ = ("_by_kid", "keys")

    def __init__(self, keys: list[SigningKey]) -> None:
        """Build a store; ``keys[0]`` signs.

        Raises:
            NoSigningKey: if ``keys`` is empty.
        """
        if not keys:
            raise NoSigningKey("no signing key configured")
        self.keys = tuple(keys)
        self._by_kid = {key.kid: key for key in keys}

    @property
    def signing_key(self) -> SigningKey:
        """The key that signs new tokens."""
        return self.keys[0]

    def get(self, kid: str) -> SigningKey | None:
        """The key with this kid, or ``None``."""
        return self._by_kid.get(KeyId(kid))

    def jwks(self) -> dict[str, Any]:
        """The RFC 7517 JWK Set of every public key: ``{"keys": [...]}``."""
        return {"keys": [key.public_jwk() for key in self.keys]}

    @classmethod
    def from_directory(cls, directory: str | Path) -> KeyStore:
        """Load every ``*.pem`` in ``directory``; the newest (by name, then mtime) signs.

        Raises:
            NoSigningKey: if the directory has no key or a key does not load.
        """
        path = Path(directory)
        files = sorted(path.glob("*.pem")) if path.is_dir() else []
        loaded = [
            SigningKey.from_pem(
                file.read_bytes(),
                created=_created_from_name(file) or datetime.fromtimestamp(file.stat().st_mtime, UTC),
                source=str(file),
            )
            for file in files
        ]
        loaded.sort(key=lambda k: k.created or datetime.min.replace(tzinfo=UTC), reverse=True)
        if not loaded:
            raise NoSigningKey(f"no signing key in {path}")
        return cls(loaded)

    @classmethod
    def from_pems(cls, text: str) -> KeyStore:
        """Load one or more concatenated PEMs (``WS_SIGNING_KEYS``); the first signs.

        Raises:
            NoSigningKey: if no PEM is found or one does not load.
        """
        pems = _PEM_RE.findall(text.replace("\\n", "\n").encode())
        if not pems:
            raise NoSigningKey("WS_SIGNING_KEYS holds no PEM private key")
        return cls([SigningKey.from_pem(pem, created=None, source="env") for pem in pems])
