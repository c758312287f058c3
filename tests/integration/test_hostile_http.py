"""Hostile HTTP: every route needs auth unless listed public; secrets never reach the logs."""

from __future__ import annotations

import re

import pytest

from tests.conftest import PUBLISHER_KEY, USER_KEY, AppFactory, auth, listen, ws_token
from tests.pg import database_url, migrated_url  # noqa: F401  (fixtures)

# (method, path) pairs that answer without credentials, each with its reason.
PUBLIC_ROUTES = {
    ("GET", "/health"): "liveness probe",
    ("GET", "/ready"): "readiness probe",
    ("GET", "/.well-known/jwks.json"): "public keys, meant to be fetched by anyone",
    ("GET", "/ws"): "the WebSocket: auth happens per LISTEN with a WS token",
    ("GET", "/metrics"): "Prometheus scrapes without credentials; keep it private or on METRICS_PORT",
    ("GET", "/console"): "the console's static page: its data comes from /console/stats (admin key)",
    ("GET", "/console/console.js"): "static script of the console page",
    ("GET", "/console/console.css"): "static stylesheet of the console page",
    ("GET", "/static/realtime-client.js"): "the JavaScript client (clients/js), a static script for any page",
    ("GET", "/api/v1/openapi.json"): "the API description: public, like any published API reference",
    ("GET", "/api/v1/api-docs"): "the page that renders /api/v1/openapi.json",
    ("GET", "/api/v1/api-docs/api-docs.js"): "static script that starts Swagger UI on the docs page",
    ("GET", "/api/v1/api-docs/swagger-ui-bundle.js"): "Swagger UI's script, from the swagger-ui-py package",
    ("GET", "/api/v1/api-docs/swagger-ui.css"): "Swagger UI's stylesheet, from the swagger-ui-py package",
    ("GET", "/"): "static index page: links to the console, the API docs and the health checks",
    ("POST", "/auth/login"): "built-in login: takes email and password (rate limited), only with a database",
    ("POST", "/auth/logout"): "ends the session of the cookie sent, if any; only with a database",
}
PLACEHOLDER = "00000000-0000-0000-0000-000000000000"


async def test_every_route_needs_credentials(make_client: AppFactory) -> None:
    client = await make_client()
    checked = 0
    for route in client.app.router.routes():
        method = route.method
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or re.sub(r"\{[^}]+\}", PLACEHOLDER, info.get("formatter", ""))
        if method in ("HEAD", "OPTIONS", "*") or not path or (method, info.get("formatter", path)) in PUBLIC_ROUTES:
            continue
        if (method, path) in PUBLIC_ROUTES:
            continue
        resp = await client.request(method, path, json={})
        assert resp.status == 401, (
            f"{method} {path} answered {resp.status} without credentials: require auth, "
            "or add it to PUBLIC_ROUTES with a reason"
        )
        body = await resp.json()
        # our JSON error, or the e-dream envelope under /api/v1
        assert body.get("error") == "unauthorized" or body.get("success") is False, body
        checked += 1
    assert checked >= 3


@pytest.mark.parametrize("value", ["' OR 1=1 --", "../../etc/passwd", "%00", "dream:update.a;DROP TABLE x", "\u202e"])
async def test_sql_and_traversal_strings_are_plain_data(make_client: AppFactory, value: str) -> None:
    client = await make_client()
    resp = await client.post("/publish", json={"topic": value, "message": value}, headers=auth(PUBLISHER_KEY))
    assert resp.status == 400 and "topic" in (await resp.json())["fields"]
    resp = await client.post(
        "/publish", json={"topic": "dream:update.a", "message": value}, headers=auth(PUBLISHER_KEY)
    )
    assert resp.status == 202
    resp = await client.get(f"/auth/ws/{value}", headers=auth(USER_KEY))
    assert resp.status in (404, 405)


async def test_secrets_never_reach_the_logs(make_client: AppFactory, capfd: pytest.CaptureFixture[str]) -> None:
    client = await make_client()
    token = await ws_token(client)
    await client.post("/auth/ws", headers={"Authorization": "Api-Key wrong-but-secret-0123456789"})
    await client.post("/auth/ws", headers={"Authorization": f"Bearer {token}"})
    async with client.ws_connect("/ws") as ws:
        await listen(ws, ["remote-control:command.7"], token)
        await listen(ws, ["remote-control:command.7"], token[:-4] + "AAAA")
    await client.post("/publish", json={"topic": "x", "message": 1}, headers=auth(PUBLISHER_KEY))
    out = "".join(capfd.readouterr())
    assert out  # something was logged
    for secret in (USER_KEY, PUBLISHER_KEY, "wrong-but-secret-0123456789", token, token.split(".")[2]):
        assert secret not in out


async def test_nul_characters(make_client: AppFactory) -> None:
    client = await make_client()
    resp = await client.post(
        "/publish", json={"topic": "dream:update.a", "message": "a\u0000b"}, headers=auth(PUBLISHER_KEY)
    )
    assert resp.status == 202  # a message is any JSON value and never reaches PostgreSQL
    resp = await client.post("/auth/ws/revoke", json={"sub": "7\u0000"}, headers=auth(USER_KEY))
    assert resp.status == 400 and (await resp.json())["fields"] == {"sub": ["contains NUL"]}


DEEP = "[" * 1000 + "]" * 1000  # parses (orjson stops past 1024 levels) but recursion would not survive it


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/auth/login", '{"email": "a@b.c", "password": ' + DEEP + "}"),
        ("/auth/ws", DEEP),
        ("/auth/ws", '{"scope": ' + DEEP + "}"),
        ("/auth/ws/revoke", '{"jti": ' + DEEP + "}"),
        ("/publish", '{"topic": "dream:update.a", "message": ' + DEEP + "}"),
        ("/api/v1/remote-control", '{"event": ' + DEEP + "}"),
        (f"/api/v1/dream/{PLACEHOLDER}", '{"name": "x", "prompt": ' + DEEP + "}"),
    ],
)
async def test_deep_bodies_are_400_naming_the_problem(
    make_client: AppFactory,
    database_url: str,  # noqa: F811  (the fixture)
    capfd: pytest.CaptureFixture[str],
    path: str,
    body: str,
) -> None:
    client = await make_client(database_url=database_url)
    key = PUBLISHER_KEY if path == "/publish" else USER_KEY
    method = "PUT" if path.startswith("/api/v1/dream/") else "POST"
    resp = await client.request(method, path, data=body, headers={**auth(key), "Content-Type": "application/json"})
    assert resp.status == 400, await resp.text()
    reply = await resp.json()
    field = "body" if body.startswith("[") else body.split('"')[-2 if body.count('"') > 4 else 1]
    if path.startswith("/api/v1/"):  # the e-dream envelope
        assert reply["errorCode"] == "BAD_REQUEST" and reply["data"] == [{"field": field, "message": "too deep"}]
    else:
        assert reply["error"] == "bad_request" and reply["fields"] == {field: ["too deep"]}, reply
        assert "nested deeper than 64 levels" in reply["message"]
    assert "Traceback" not in "".join(capfd.readouterr())
