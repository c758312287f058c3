"""In-process app tests (real aiohttp server on loopback, memory broker): HTTP routes."""

from __future__ import annotations

import re

import jwt
import pytest

from tests.conftest import OTHER_KEY, PUBLISHER_KEY, USER_KEY, AppFactory, auth


async def test_health_ready_jwks(make_client: AppFactory) -> None:
    client = await make_client()
    resp = await client.get("/health")
    assert resp.status == 200 and await resp.json() == {"status": "ok"}
    resp = await client.get("/ready")
    assert resp.status == 200
    assert await resp.json() == {
        "status": "ready",
        "dependencies": {"broker": {"kind": "memory", "state": "connected"}},
    }
    resp = await client.get("/.well-known/jwks.json")
    keys = (await resp.json())["keys"]
    assert len(keys) == 1 and keys[0]["kty"] == "EC" and "d" not in keys[0]


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_auth_ws_issues_a_verifiable_token(make_client: AppFactory, method: str) -> None:
    client = await make_client()
    resp = await client.request(method, "/auth/ws", headers=auth(USER_KEY))
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    body = await resp.json()
    assert body["expires_in"] == 3600
    assert body["scope"] == "channel:read:predictions user:read:remote-control"
    jwks = await (await client.get("/.well-known/jwks.json")).json()
    claims = jwt.decode(body["token"], jwt.PyJWK(jwks["keys"][0]).key, algorithms=["ES256"], audience="realtime")
    assert claims["sub"] == "7" and claims["iss"] == "realtime" and claims["scope"] == body["scope"]


async def test_auth_ws_narrows_scope(make_client: AppFactory) -> None:
    client = await make_client(ws_token_ttl=60)
    resp = await client.get("/auth/ws", params={"scope": "user:read:remote-control"}, headers=auth(USER_KEY))
    body = await resp.json()
    assert body["scope"] == "user:read:remote-control" and body["expires_in"] == 60
    resp = await client.post("/auth/ws", json={"scope": "channel:read:predictions"}, headers=auth(USER_KEY))
    assert (await resp.json())["scope"] == "channel:read:predictions"


async def test_auth_ws_refuses_scope_the_caller_lacks(make_client: AppFactory) -> None:
    client = await make_client()
    resp = await client.get("/auth/ws", params={"scope": "user:read:remote-control admin:all"}, headers=auth(OTHER_KEY))
    assert resp.status == 403
    body = await resp.json()
    assert body["error"] == "forbidden" and body["missing_scopes"] == ["admin:all"]
    assert "admin:all" in body["message"]


async def test_auth_ws_malformed_scope(make_client: AppFactory) -> None:
    client = await make_client()
    resp = await client.get("/auth/ws", params={"scope": "NOT A SCOPE"}, headers=auth(USER_KEY))
    assert resp.status == 400 and "scope" in (await resp.json())["fields"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Api-Key wrong-key-0123456789abcdef"},
        {"Authorization": f"Bearer {USER_KEY}"},
        {"Authorization": "Api-Key "},
        {"Authorization": "garbage"},
        {"Authorization": f"Api-Key {USER_KEY[:-1]}"},
    ],
)
async def test_auth_ws_unauthorized(make_client: AppFactory, headers: dict[str, str]) -> None:
    client = await make_client()
    resp = await client.post("/auth/ws", headers=headers)
    assert resp.status == 401
    body = await resp.json()
    assert body["error"] == "unauthorized" and body["message"]
    assert "Traceback" not in await resp.text()


async def test_publish_requires_publish_scope(make_client: AppFactory) -> None:
    client = await make_client()
    body = {"topic": "dream:update.a", "message": "x"}
    assert (await client.post("/publish", json=body)).status == 401
    resp = await client.post("/publish", json=body, headers=auth(USER_KEY))
    assert resp.status == 403 and (await resp.json())["missing_scopes"] == ["realtime:publish"]
    resp = await client.post("/publish", json=body, headers=auth(PUBLISHER_KEY))
    assert resp.status == 202 and await resp.json() == {"status": "accepted", "topic": "dream:update.a"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"topic": "nope", "message": "x"}, "topic"),
        ({"topic": "dream:unknown.a", "message": "x"}, "topic"),
        ({"topic": "dream:update", "message": "x"}, "topic"),
        ({"topic": 5, "message": "x"}, "topic"),
        ({"message": "x"}, "topic"),
        ({"topic": "dream:update.a"}, "message"),
        ({"topic": "dream:update.a", "message": "x", "extra": 1}, "extra"),
    ],
)
async def test_publish_bad_bodies_name_the_field(make_client: AppFactory, body: dict[str, object], field: str) -> None:
    client = await make_client()
    resp = await client.post("/publish", json=body, headers=auth(PUBLISHER_KEY))
    assert resp.status == 400
    data = await resp.json()
    assert data["error"] == "bad_request" and field in data["fields"]


async def test_publish_wrong_content_type_and_bad_json(make_client: AppFactory) -> None:
    client = await make_client()
    headers = auth(PUBLISHER_KEY)
    resp = await client.post("/publish", data="topic=x", headers={**headers, "Content-Type": "text/plain"})
    assert resp.status == 415 and (await resp.json())["error"] == "unsupported_media_type"
    resp = await client.post("/publish", data="{nope", headers={**headers, "Content-Type": "application/json"})
    assert resp.status == 400 and "body" in (await resp.json())["fields"]
    resp = await client.post("/publish", data="[1]", headers={**headers, "Content-Type": "application/json"})
    assert resp.status == 400
    resp = await client.post("/publish", headers=headers)
    assert resp.status == 400


async def test_oversized_body_is_413_json(make_client: AppFactory) -> None:
    client = await make_client(max_body_bytes=1024)
    resp = await client.post(
        "/publish", json={"topic": "dream:update.a", "message": "x" * 5000}, headers=auth(PUBLISHER_KEY)
    )
    assert resp.status == 413 and (await resp.json())["error"] == "payload_too_large"


async def test_unknown_route_and_method_are_json(make_client: AppFactory) -> None:
    client = await make_client()
    resp = await client.get("/nope")
    assert resp.status == 404 and (await resp.json())["error"] == "not_found"
    resp = await client.delete("/publish")
    assert resp.status == 405 and (await resp.json())["error"] == "method_not_allowed"
    assert resp.headers.get("X-Request-ID") is None or resp.headers["X-Request-ID"]


async def test_request_ids_are_fresh_32_hex_digits_unless_the_caller_sent_one(make_client: AppFactory) -> None:
    client = await make_client()
    ids = set()
    for _ in range(20):
        resp = await client.post(
            "/publish", json={"topic": "dream:update.a", "message": "m"}, headers=auth(PUBLISHER_KEY)
        )
        assert resp.status == 202
        ids.add(resp.headers["X-Request-ID"])
    assert len(ids) == 20 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    resp = await client.post(
        "/publish",
        json={"topic": "dream:update.a", "message": "m"},
        headers={**auth(PUBLISHER_KEY), "X-Request-ID": "caller-chosen"},
    )
    assert resp.headers["X-Request-ID"] == "caller-chosen"
    resp = await client.get("/health", headers={"X-Request-ID": "a b<script>" + "x" * 100})
    assert resp.headers["X-Request-ID"] == "abscript" + "x" * 53  # cut to 64, then unsafe characters dropped
    resp = await client.get("/health", headers={"X-Request-ID": "<>"})
    assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["X-Request-ID"])
