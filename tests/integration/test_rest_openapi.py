"""``/api/v1/openapi.json`` and ``/api/v1/api-docs``."""

from __future__ import annotations

from typing import Any

from tests.conftest import AppFactory
from tests.pg import database_url, migrated_url


def route_paths(app: Any) -> set[str]:
    paths = set()
    for route in app.router.routes():
        info = route.resource.get_info()
        paths.add(info.get("path") or info.get("formatter"))
    return paths


async def test_openapi_describes_every_route(make_client: AppFactory, database_url: str) -> None:
    client = await make_client(database_url=database_url)
    resp = await client.get("/api/v1/openapi.json")
    assert resp.status == 200 and resp.content_type == "application/json"
    spec = await resp.json()
    assert spec["openapi"].startswith("3.") and spec["info"]["title"] == "realtime"
    paths = spec["paths"]
    for path in route_paths(client.app):
        if "{status}" in path or "{vote}" in path:
            continue  # listed once per concrete value
        assert path in paths, path
    dream = spec["components"]["schemas"]["Dream"]["properties"]
    assert {"uuid", "mediaType", "processedVideoFPS", "featureRank", "ccbyLicense", "user"} <= set(dream)
    create = paths["/api/v1/dream"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/DreamCreate"
    }
    assert "201" in create["responses"]
    take = next(p for p in paths["/api/v1/dream"]["get"]["parameters"] if p["name"] == "take")
    assert take["schema"]["maximum"] == 500
    assert {"processing", "processed", "failed"} == {p.rsplit("/", 1)[1] for p in paths if "/status/" in p}
    rc = spec["components"]["schemas"]["RemoteControl"]["properties"]["event"]
    assert "set_speed_9" in rc["enum"] and "play_dream" in rc["enum"]
    assert set(spec["components"]["securitySchemes"]) == {"apiKey", "bearer", "session"}


async def test_docs_page_and_no_database(make_client: AppFactory) -> None:
    client = await make_client()
    resp = await client.get("/api/v1/api-docs")
    assert resp.status == 200 and resp.content_type == "text/html"
    assert "openapi.json" in await resp.text()
    spec = await (await client.get("/api/v1/openapi.json")).json()
    assert "/api/v1/remote-control" in spec["paths"] and "/api/v1/dream" not in spec["paths"]


async def test_router_errors_under_api_v1_are_envelopes(make_client: AppFactory, database_url: str) -> None:
    client = await make_client(database_url=database_url)
    resp = await client.get("/api/v1/nope")
    assert resp.status == 404 and await resp.json() == {
        "success": False, "data": None, "message": "Not found.", "errorCode": "NOT_FOUND"
    }  # fmt: skip
    resp = await client.patch("/api/v1/dream")
    assert resp.status == 405 and (await resp.json())["errorCode"] == "METHOD_NOT_ALLOWED"
    resp = await client.get("/api/v1/dream/not-a-uuid")
    assert resp.status == 404 and (await resp.json())["success"] is False
    resp = await client.get("/nope")
    assert resp.status == 404 and (await resp.json())["error"] == "not_found"  # outside /api/v1: unchanged
