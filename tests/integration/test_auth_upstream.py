"""Upstream Bearer JWTs against a real JWKS server on loopback, and forged tokens."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client.parser import text_string_to_metric_families

from http_api.upstream import UPSTREAM
from realtime.errors import SettingsError
from realtime.settings import Settings
from tests.conftest import AppFactory
from tests.pg import conn, database_url, migrated_url

ISSUER = "https://idp.example"
AUDIENCE = "realtime-api"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {**data, "kid": kid, "alg": "RS256", "use": "sig"}


@dataclass
class Idp:
    """A fake identity provider: a JWKS served over real HTTP."""

    url: str = ""
    keys: dict[str, rsa.RSAPrivateKey] = field(default_factory=dict)
    requests: int = 0
    up: bool = True

    def token(self, kid: str = "k1", key: rsa.RSAPrivateKey | None = None, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "idp-user-1", "iat": now, "exp": now + 300, **claims}
        return jwt.encode(body, key or self.keys[kid], algorithm="RS256", headers={"kid": kid})


@pytest.fixture
async def idp() -> AsyncIterator[Idp]:
    state = Idp(keys={"k1": new_key()})

    async def jwks(request: web.Request) -> web.Response:
        state.requests += 1
        if not state.up:
            return web.Response(status=500)
        return web.json_response({"keys": [jwk(k, kid) for kid, k in state.keys.items()]})

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", jwks)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    state.url = str(server.make_url("/.well-known/jwks.json"))
    yield state
    await server.close()


@pytest.fixture
async def client(make_client: AppFactory, database_url: str, idp: Idp) -> Any:
    return await make_client(
        database_url=database_url,
        auth_jwks_url=idp.url,
        auth_issuer=ISSUER,
        auth_audience=AUDIENCE,
        auth_cookie="idp_token",
        default_user_scopes="user:read:remote-control",
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def ws_claims(client: Any, headers: dict[str, str], **kwargs: Any) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/auth/ws", headers=headers, **kwargs)
    body = await resp.json()
    if resp.status != 200:
        return resp.status, body
    return 200, jwt.decode(body["token"], options={"verify_signature": False})


async def test_first_token_provisions_a_user(client: Any, idp: Idp, conn: Any) -> None:
    token = idp.token(email="ana@example.com", name="Ana")
    status, claims = await ws_claims(client, bearer(token))
    assert status == 200 and claims["scope"] == "user:read:remote-control"
    row = await conn.fetchrow("SELECT * FROM users")
    assert str(row["id"]) == claims["sub"] and row["role"] == "user-group"
    assert (row["issuer"], row["subject"], row["email"], row["name"]) == (
        ISSUER,
        "idp-user-1",
        "ana@example.com",
        "Ana",
    )
    assert (await ws_claims(client, bearer(idp.token())))[1]["sub"] == claims["sub"]
    assert await conn.fetchval("SELECT count(*) FROM users") == 1
    assert idp.requests == 1  # cached


async def test_cookie_carries_the_token(client: Any, idp: Idp) -> None:
    status, claims = await ws_claims(client, {"Cookie": f"idp_token={idp.token()}"})
    assert status == 200 and claims["sub"]


@pytest.mark.parametrize(
    "forge",
    [
        lambda idp: idp.token(key=new_key()),  # right kid, wrong key: a forged signature
        lambda idp: idp.token(iss="https://evil.example"),
        lambda idp: idp.token(aud="someone-else"),
        lambda idp: idp.token(exp=int(time.time()) - 60),
        lambda idp: idp.token(kid="unknown", key=new_key()),
        lambda idp: jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": 2**31}, "s" * 40, algorithm="HS256"),
        lambda idp: jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": 2**31}, None, algorithm="none"),
        lambda idp: idp.token()[:-4] + "AAAA",
        lambda idp: "not-a-jwt",
    ],
)
async def test_forged_and_invalid_tokens_are_401(client: Any, idp: Idp, conn: Any, forge: Any) -> None:
    status, body = await ws_claims(client, bearer(forge(idp)))
    assert status == 401 and body["error"] == "unauthorized"
    assert await conn.fetchval("SELECT count(*) FROM users") == 0


async def test_unknown_kid_refetches_at_most_once_a_minute(client: Any, idp: Idp) -> None:
    assert (await ws_claims(client, bearer(idp.token())))[0] == 200
    idp.keys["k2"] = new_key()
    assert (await ws_claims(client, bearer(idp.token(kid="k2"))))[0] == 401
    assert (await ws_claims(client, bearer(idp.token(kid="k2"))))[0] == 401
    assert idp.requests == 1  # the first fetch was under a minute ago: no refetch
    verifier = client.app[UPSTREAM]
    verifier._fetched_at -= 61
    assert (await ws_claims(client, bearer(idp.token(kid="k2"))))[0] == 200
    assert idp.requests == 2


async def test_jwks_unreachable_is_503(client: Any, idp: Idp) -> None:
    idp.up = False
    status, body = await ws_claims(client, bearer(idp.token()))
    assert status == 503 and body["error"] == "unavailable"


async def test_provisioned_user_on_the_rest_api(client: Any, idp: Idp) -> None:
    headers = bearer(idp.token())
    resp = await client.post("/api/v1/dream", json={"name": "x"}, headers=headers)
    assert resp.status == 403
    resp = await client.post("/api/v1/remote-control", json={"event": "next"}, headers=headers)
    assert resp.status == 202
    resp = await client.get("/api/v1/dream/my-dreams", headers=headers)
    assert resp.status == 200 and (await resp.json())["data"]["count"] == 0


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"database_url": "mysql://x"}, "DATABASE_URL"),
        ({"default_user_scopes": "NOT A SCOPE"}, "DEFAULT_USER_SCOPES"),
        ({"auth_algorithms": "RS256 HS256"}, "AUTH_ALGORITHMS"),
        ({"auth_algorithms": "none"}, "AUTH_ALGORITHMS"),
        ({"auth_jwks_url": "https://idp/jwks"}, "AUTH_ISSUER"),
        (
            {"auth_jwks_url": "https://i/j", "auth_issuer": "i", "auth_audience": "a", "database_url": "none"},
            "AUTH_JWKS_URL",
        ),
        ({"environment": "staging"}, "ENVIRONMENT"),
        ({"session_ttl": 0}, "SESSION_TTL"),
        ({"login_window": -1}, "LOGIN_WINDOW"),
    ],
)
def test_identity_settings_are_checked(values: dict[str, Any], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env({}, **values)


async def auth_failures(client: Any) -> dict[str, float]:
    resp = await client.get("/metrics")
    return {
        s.labels["reason"]: s.value
        for family in text_string_to_metric_families(await resp.text())
        for s in family.samples
        if s.name == "realtime_auth_failures_total"
    }


async def test_auth_failures_carry_the_reason_they_were_raised_with(client: Any, idp: Idp) -> None:
    """Labels come from the error, not its message: an expired token is ``expired``; a token
    missing its ``exp`` claim (PyJWT: 'Token is missing the "exp" claim') is an invalid
    credential, not missing credentials; a wrong password is an invalid credential."""
    no_exp = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "x"}, idp.keys["k1"], "RS256", headers={"kid": "k1"})
    for token in (idp.token(exp=int(time.time()) - 60), no_exp, idp.token(aud="someone-else")):
        assert (await ws_claims(client, bearer(token)))[0] == 401
    resp = await client.post("/auth/login", json={"email": "nobody@example.com", "password": "wrong password"})
    assert resp.status == 401
    assert await auth_failures(client) == {"expired": 1.0, "invalid_credentials": 3.0}
