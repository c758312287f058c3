"""Unit tests: key store, RFC 7638 kid, JWKS, and WS token issue/verify (incl. attacks)."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from keys import Grant, InvalidToken, KeyStore, NoSigningKey, TokenIssuer, TokenVerifier, generate_key, jwk_thumbprint

ISS, AUD = "realtime", "realtime"


def issuer(store: KeyStore, ttl: int = 3600, iss: str = ISS, aud: str = AUD) -> TokenIssuer:
    return TokenIssuer(store, issuer=iss, audience=aud, ttl=ttl)


def verifier(store: KeyStore) -> TokenVerifier:
    return TokenVerifier(store, issuer=ISS, audience=AUD, leeway=0)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_issue_and_verify_round_trip(key_store: KeyStore) -> None:
    issued = issuer(key_store).issue("7", ["user:read:remote-control", "a:b"])
    assert issued.expires_in == 3600
    assert issued.scope == "a:b user:read:remote-control"
    grant = verifier(key_store).verify(issued.token)
    assert grant.sub == "7" and grant.scopes == {"a:b", "user:read:remote-control"}
    assert grant.jti == issued.jti and grant.kid == key_store.signing_key.kid
    header = jwt.get_unverified_header(issued.token)
    assert header["alg"] == "ES256" and header["kid"] == key_store.signing_key.kid
    claims = jwt.decode(issued.token, options={"verify_signature": False})
    assert set(claims) == {"iss", "aud", "sub", "scope", "iat", "nbf", "exp", "jti"}
    assert claims["exp"] - claims["nbf"] == 3600 and 0 <= claims["iat"] - claims["nbf"] < 1


def test_kid_is_rfc7638_thumbprint(key_store: KeyStore) -> None:
    jwk = key_store.jwks()["keys"][0]
    canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"))
    assert canonical.startswith('{"crv":"P-256","kty":"EC","x":')
    assert jwk["kid"] == b64(hashlib.sha256(canonical.encode()).digest())
    assert len(jwk["kid"]) == 43
    assert jwk["alg"] == "ES256" and jwk["use"] == "sig" and "d" not in jwk


def test_jwks_verifies_with_a_generic_jwt_library(key_store: KeyStore) -> None:
    token = issuer(key_store).issue("7", ["a:b"]).token
    jwk = jwt.PyJWK(key_store.jwks()["keys"][0])
    assert jwt.decode(token, jwk.key, algorithms=["ES256"], audience=AUD)["sub"] == "7"


def test_expired_and_not_yet_valid(key_store: KeyStore) -> None:
    v = verifier(key_store)
    old = issuer(key_store, ttl=10).issue("7", [], now=time.time() - 100).token
    with pytest.raises(InvalidToken, match="expired"):
        v.verify(old)
    future = issuer(key_store).issue("7", [], now=time.time() + 600).token
    with pytest.raises(InvalidToken, match="not yet valid"):
        v.verify(future)


def test_wrong_audience_and_issuer(key_store: KeyStore) -> None:
    v = verifier(key_store)
    with pytest.raises(InvalidToken, match="audience"):
        v.verify(issuer(key_store, aud="someone-else").issue("7", []).token)
    with pytest.raises(InvalidToken, match="issuer"):
        v.verify(issuer(key_store, iss="evil").issue("7", []).token)


def test_token_from_another_deployment_key(key_store: KeyStore, tmp_path: Path) -> None:
    other = KeyStore([generate_key(tmp_path / "other")])
    with pytest.raises(InvalidToken, match="unknown key"):
        verifier(key_store).verify(issuer(other).issue("7", []).token)


def test_other_key_with_our_kid_fails_signature(key_store: KeyStore) -> None:
    token = issuer(key_store).issue("7", []).token
    forged = jwt.encode(
        jwt.decode(token, options={"verify_signature": False}),
        ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256",
        headers={"kid": key_store.signing_key.kid},
    )
    with pytest.raises(InvalidToken):
        verifier(key_store).verify(forged)


def test_alg_none_is_refused(key_store: KeyStore) -> None:
    claims = jwt.decode(issuer(key_store).issue("7", ["a:b"]).token, options={"verify_signature": False})
    header = b64(json.dumps({"alg": "none", "kid": key_store.signing_key.kid}).encode())
    token = f"{header}.{b64(json.dumps(claims).encode())}."
    with pytest.raises(InvalidToken, match="ES256"):
        verifier(key_store).verify(token)


def test_hs256_signed_with_the_public_key_is_refused(key_store: KeyStore) -> None:
    claims = jwt.decode(issuer(key_store).issue("7", ["a:b"]).token, options={"verify_signature": False})
    public_pem = key_store.signing_key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key_store.signing_key.kid}).encode())
    body = b64(json.dumps(claims).encode())
    import hmac

    sig = b64(hmac.new(public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest())
    with pytest.raises(InvalidToken, match="ES256"):
        verifier(key_store).verify(f"{header}.{body}.{sig}")


def test_tampered_payload_is_refused(key_store: KeyStore) -> None:
    header, body, sig = issuer(key_store).issue("7", ["a:b"]).token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["sub"] = "8"
    claims["scope"] = "a:b admin:everything"
    with pytest.raises(InvalidToken):
        verifier(key_store).verify(f"{header}.{b64(json.dumps(claims).encode())}.{sig}")


@pytest.mark.parametrize("junk", ["", "abc", "a.b.c", 42, None, "x" * 9000, "eyJhbGciOiJFUzI1NiJ9.e30.AAAA"])
def test_garbage_tokens(key_store: KeyStore, junk: object) -> None:
    with pytest.raises(InvalidToken):
        verifier(key_store).verify(junk)


def test_missing_claims_are_refused(key_store: KeyStore) -> None:
    key = key_store.signing_key
    now = int(time.time())
    token = jwt.encode(
        {"iss": ISS, "aud": AUD, "sub": "7", "iat": now, "nbf": now, "exp": now + 60},  # no scope, no jti
        key.private_key,
        algorithm="ES256",
        headers={"kid": key.kid},
    )
    with pytest.raises(InvalidToken):
        verifier(key_store).verify(token)


def test_rotation_newest_signs_all_verify(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    old = generate_key(tmp_path, now=datetime.now(UTC) - timedelta(days=1))
    old_token = issuer(KeyStore([old])).issue("7", []).token
    new = generate_key(tmp_path)
    store = KeyStore.from_directory(tmp_path)
    assert store.signing_key.kid == new.kid
    assert [k.kid for k in store.keys] == [new.kid, old.kid]
    assert verifier(store).verify(old_token).sub == "7"
    assert jwt.get_unverified_header(issuer(store).issue("7", []).token)["kid"] == new.kid


def test_key_files_are_private(tmp_path: Path) -> None:
    key = generate_key(tmp_path / "k")
    assert Path(key.source).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o700


def test_keys_from_env_pems(tmp_path: Path) -> None:
    a, b = generate_key(tmp_path), generate_key(tmp_path)
    text = Path(a.source).read_text() + "\n" + Path(b.source).read_text()
    store = KeyStore.from_pems(text)
    assert [k.kid for k in store.keys] == [a.kid, b.kid]  # the first PEM signs
    escaped = Path(a.source).read_text().replace("\n", "\\n")  # one-line secret form
    assert KeyStore.from_pems(escaped).signing_key.kid == a.kid


def test_bad_keys(tmp_path: Path) -> None:
    with pytest.raises(NoSigningKey):
        KeyStore.from_pems("nothing here")
    with pytest.raises(NoSigningKey):
        KeyStore.from_directory(tmp_path / "empty")
    rsa_like = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(NoSigningKey, match="P-256"):
        KeyStore.from_pems(rsa_like.decode())


def test_thumbprint_is_stable_for_the_same_key() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    assert jwk_thumbprint(key.public_key()) == jwk_thumbprint(key.public_key())


def test_node_caches_verified_tokens_and_evicts_the_oldest(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reconnect with the same token skips the signature check; the cache is bounded and
    forgets the oldest grant first; a cached grant that has expired is checked again."""
    from realtime import node as node_module
    from realtime import verification
    from realtime.broker import MemoryBroker
    from topics import load_policy

    checked: list[str] = []
    now = time.time()

    def verify(token: str) -> Grant:
        checked.append(token)
        exp = now + 1 if token == "short" else now + 3600
        return Grant(sub="7", scopes=frozenset(), exp=exp, jti=token, kid="k")

    monkeypatch.setattr(verification, "VERIFIED_CACHE_SIZE", 3)
    node = node_module.Node(broker=MemoryBroker(), policy=load_policy(None), verify=verify)
    conn: Any = object()  # a connection the node does not know: no budgets apply
    for token in ("a", "b", "a", "c", "d", "b", "a"):
        assert node.verify(conn, token).jti == token
    # a, b, c checked once; d evicted a (the oldest), so b is still cached and a is checked again
    assert checked == ["a", "b", "c", "d", "a"]
    node.verify(conn, "short")
    checked.clear()
    monkeypatch.setattr(node_module.time, "time", lambda: now + 2)
    node.verify(conn, "short")  # its cached grant has expired: checked again
    assert checked == ["short"]
