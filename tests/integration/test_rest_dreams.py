"""``/api/v1/dream`` against the real PostgreSQL: envelope, role rules, votes, realtime side effects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from db.apikeys import create_api_key
from db.users import create_user
from tests.conftest import PUBLISHER_KEY, USER_KEY, AppFactory, assert_silent, auth, listen, recv
from tests.pg import conn, database_url, migrated_url

STATUS_SCOPE = "dream:write:status"


@dataclass
class World:
    client: TestClient[Any, Any]
    keys: dict[str, str]
    ids: dict[str, str]

    async def call(self, method: str, path: str, who: str | None = None, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        headers = auth(self.keys[who]) if who else {}
        resp = await self.client.request(method, f"/api/v1{path}", headers=headers, **kwargs)
        return resp.status, await resp.json()

    async def create(self, who: str = "creator", **body: Any) -> dict[str, Any]:
        status, env = await self.call("POST", "/dream", who, json={"name": "a dream", **body})
        assert status == 201, env
        dream: dict[str, Any] = env["data"]["dream"]
        return dream


@pytest.fixture
async def world(make_client: AppFactory, database_url: str, conn: Any) -> World:
    keys, ids = {}, {}
    for name, role, scopes in (
        ("admin", "admin-group", []),
        ("creator", "creator-group", ["user:read:remote-control"]),
        ("user", "user-group", ["user:read:remote-control"]),
        ("worker", "user-group", [STATUS_SCOPE]),
    ):
        user = await create_user(conn, name=name, role=role, scopes=scopes)
        ids[name] = user.id
        keys[name] = (await create_api_key(conn, user_id=user.id))[1]
    keys["env"] = USER_KEY
    return World(await make_client(database_url=database_url), keys, ids)


def assert_envelope(env: dict[str, Any], success: bool) -> None:
    assert set(env) >= {"success", "data", "message"} and env["success"] is success
    assert ("errorCode" in env) is not success


async def test_unauthenticated_is_401_envelope(world: World) -> None:
    for method, path in (("GET", "/dream"), ("POST", "/dream"), ("GET", "/dream/my-dreams")):
        status, env = await world.call(method, path)
        assert status == 401
        assert env == {"success": False, "data": None, "message": "Unauthorized.", "errorCode": "UNAUTHORIZED"}


async def test_create_needs_creator_or_admin(world: World) -> None:
    for who in ("user", "env", "worker"):
        status, env = await world.call("POST", "/dream", who, json={"name": "x"})
        assert status == 403 and env["message"].startswith("Action not allowed") and env["errorCode"] == "FORBIDDEN"
    dream = await world.create(description="d", prompt={"seed": 1}, mediaType="image", nsfw=True)
    assert dream["name"] == "a dream" and dream["status"] == "none" and dream["mediaType"] == "image"
    assert dream["prompt"] == {"seed": 1} and dream["nsfw"] is True and dream["upvotes"] == 0
    assert dream["user"] == {"uuid": world.ids["creator"], "name": "creator"}
    assert "featureRank" not in dream
    admin_dream = await world.create("admin")
    assert admin_dream["featureRank"] == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x", "mediaType": "gif"}, "mediaType"),
        ({"name": "x", "sourceUrl": "not a url"}, "sourceUrl"),
        ({"name": "x", "nope": 1}, "nope"),
        ({"name": "x", "featureRank": 3}, "featureRank"),
    ],
)
async def test_validation_is_400_with_field_list(world: World, body: dict[str, Any], field: str) -> None:
    status, env = await world.call("POST", "/dream", "creator", json=body)
    assert status == 400 and env["errorCode"] == "BAD_REQUEST" and env["success"] is False
    assert field in [e["field"] for e in env["data"]] and all(e["message"] for e in env["data"])


async def test_bad_bodies(world: World) -> None:
    resp = await world.client.post(
        "/api/v1/dream", data="{", headers={**auth(world.keys["creator"]), "Content-Type": "application/json"}
    )
    assert resp.status == 400 and (await resp.json())["data"] == [{"field": "body", "message": "invalid JSON"}]
    resp = await world.client.post(
        "/api/v1/dream", data="x", headers={**auth(world.keys["creator"]), "Content-Type": "text/plain"}
    )
    assert resp.status == 415 and (await resp.json())["errorCode"] == "UNSUPPORTED_MEDIA_TYPE"


async def test_get_hidden_and_feature_rank(world: World) -> None:
    dream = await world.create(hidden=True)
    path = f"/dream/{dream['uuid']}"
    assert (await world.call("GET", path, "user"))[0] == 404
    status, env = await world.call("GET", path, "creator")
    assert status == 200 and env["data"]["dream"]["hidden"] is True and "featureRank" not in env["data"]["dream"]
    status, env = await world.call("GET", path, "admin")
    assert status == 200 and env["data"]["dream"]["featureRank"] == 0
    status, env = await world.call("GET", "/dream/00000000-0000-0000-0000-000000000000", "user")
    assert status == 404 and env["message"] == "Not found." and env["errorCode"] == "NOT_FOUND"


async def test_list_paging_filters_and_my_dreams(world: World) -> None:
    made = [await world.create(name=f"d{i}") for i in range(3)]
    await world.create("admin", name="admin's")
    await world.create(name="secret", hidden=True)
    status, env = await world.call("GET", "/dream", "user", params={"take": "2"})
    assert status == 200 and env["data"]["count"] == 4
    assert [d["name"] for d in env["data"]["dreams"]] == ["admin's", "d2"]
    status, env = await world.call("GET", "/dream", "user", params={"take": "2", "skip": "2"})
    assert [d["name"] for d in env["data"]["dreams"]] == ["d1", "d0"]
    status, env = await world.call("GET", "/dream", "admin", params={"userUUID": world.ids["creator"]})
    assert env["data"]["count"] == 4 and {d["name"] for d in env["data"]["dreams"]} == {"d0", "d1", "d2", "secret"}
    status, env = await world.call("GET", "/dream", "user", params={"status": "processed"})
    assert env["data"] == {"dreams": [], "count": 0}
    status, env = await world.call("GET", "/dream/my-dreams", "creator")
    assert env["data"]["count"] == 4 and made[0]["uuid"] in [d["uuid"] for d in env["data"]["dreams"]]
    assert (await world.call("GET", "/dream/my-dreams", "env"))[0] == 403
    for params in ({"take": "501"}, {"take": "0"}, {"skip": "-1"}, {"status": "weird"}, {"userUUID": "x"}):
        status, env = await world.call("GET", "/dream", "user", params=params)
        assert status == 400 and env["errorCode"] == "BAD_REQUEST", params


async def test_update_rules(world: World) -> None:
    dream = await world.create()
    path = f"/dream/{dream['uuid']}"
    status, env = await world.call("PUT", path, "creator", json={"name": "renamed", "activityLevel": 3})
    assert status == 200 and env["data"]["dream"]["name"] == "renamed" and env["data"]["dream"]["activityLevel"] == 3
    assert (await world.call("PUT", path, "user", json={"name": "mine now"}))[0] == 403
    assert (await world.call("PUT", path, "creator", json={"featureRank": 5}))[0] == 403
    status, env = await world.call("PUT", path, "admin", json={"featureRank": 5})
    assert status == 200 and env["data"]["dream"]["featureRank"] == 5
    assert (await world.call("PUT", path, "creator", json={"name": ""}))[0] == 400


async def test_soft_delete(world: World, conn: Any) -> None:
    dream = await world.create()
    path = f"/dream/{dream['uuid']}"
    assert (await world.call("DELETE", path, "user"))[0] == 403
    status, env = await world.call("DELETE", path, "creator")
    assert status == 200 and env["data"]["dream"]["deleted_at"] is not None
    assert (await world.call("GET", path, "creator"))[0] == 404
    assert (await world.call("DELETE", path, "admin"))[0] == 404
    assert await conn.fetchval("SELECT count(*) FROM dreams WHERE deleted_at IS NOT NULL") == 1


async def test_status_changes(world: World) -> None:
    dream = await world.create()
    base = f"/dream/{dream['uuid']}/status"
    assert (await world.call("POST", f"{base}/processing", "creator"))[0] == 403
    status, env = await world.call("POST", f"{base}/processing", "worker")
    assert status == 200 and env["data"]["dream"]["status"] == "processing"
    processed = {"video": "https://cdn.example/v.mp4", "processedVideoSize": 1000, "processedVideoFrames": 240,
                 "processedVideoFPS": 24.0, "processedMediaWidth": 1920, "processedMediaHeight": 1080,
                 "render_duration": 12.5, "md5": "abc"}  # fmt: skip
    status, env = await world.call("POST", f"{base}/processed", "admin", json=processed)
    got = env["data"]["dream"]
    assert status == 200 and got["status"] == "processed" and got["processed_at"] is not None
    assert {k: got[k] for k in processed} == processed
    status, env = await world.call("POST", f"{base}/failed", "worker", json={})
    assert status == 400 and env["data"][0]["field"] == "error"
    status, env = await world.call("POST", f"{base}/failed", "worker", json={"error": "out of memory"})
    assert status == 200 and env["data"]["dream"]["error"] == "out of memory"
    assert (await world.call("POST", f"{base}/finished", "admin"))[0] == 404


async def test_votes_one_per_user(world: World) -> None:
    dream = await world.create()
    path = f"/dream/{dream['uuid']}"
    assert (await world.call("PUT", f"{path}/upvote", "env"))[0] == 403
    for who in ("user", "admin"):
        _, env = await world.call("PUT", f"{path}/upvote", who)
    assert (env["data"]["dream"]["upvotes"], env["data"]["dream"]["downvotes"]) == (2, 0)
    await world.call("PUT", f"{path}/upvote", "user")
    _, env = await world.call("PUT", f"{path}/downvote", "user")
    assert (env["data"]["dream"]["upvotes"], env["data"]["dream"]["downvotes"]) == (1, 1)
    _, env = await world.call("PUT", f"{path}/unvote", "user")
    assert (env["data"]["dream"]["upvotes"], env["data"]["dream"]["downvotes"]) == (1, 0)
    assert (await world.call("PUT", "/dream/00000000-0000-0000-0000-000000000000/upvote", "user"))[0] == 404


async def test_changes_are_published_live(world: World) -> None:
    dream = await world.create()
    uid = dream["uuid"]
    async with world.client.ws_connect("/ws") as ws, world.client.ws_connect("/ws") as other:
        assert (await listen(ws, [f"dream:update.{uid}", f"dream:job:progress.{uid}"]))["error"] == ""
        assert (await listen(other, ["dream:update.00000000-0000-0000-0000-000000000000"]))["error"] == ""
        await world.call("PUT", f"/dream/{uid}", "creator", json={"name": "live"})
        msg = await recv(ws)
        assert msg["type"] == "MESSAGE" and msg["data"]["topic"] == f"dream:update.{uid}"
        assert '"name":"live"' in msg["data"]["message"] and "featureRank" not in msg["data"]["message"]
        await world.call("POST", f"/dream/{uid}/status/processing", "admin")
        topics = {(await recv(ws))["data"]["topic"], (await recv(ws))["data"]["topic"]}
        assert topics == {f"dream:update.{uid}", f"dream:job:progress.{uid}"}
        await world.call("PUT", f"/dream/{uid}/upvote", "user")
        assert '"upvotes":1' in (await recv(ws))["data"]["message"]
        await world.call("DELETE", f"/dream/{uid}", "creator")
        assert '"deleted_at":"' in (await recv(ws))["data"]["message"]
        await assert_silent(other)


async def test_hidden_dreams_announce_no_content(world: World) -> None:
    dream = await world.create(name="secret plans", description="do not leak", hidden=True)
    uid = dream["uuid"]
    async with world.client.ws_connect("/ws") as ws:
        assert (await listen(ws, [f"dream:update.{uid}"]))["error"] == ""
        _, env = await world.call("PUT", f"/dream/{uid}", "creator", json={"name": "still secret"})
        assert env["data"]["dream"]["name"] == "still secret"  # the owner sees it all
        message = orjson.loads((await recv(ws))["data"]["message"])
        assert set(message) == {"uuid", "hidden", "updated_at", "deleted_at"} and message["hidden"] is True
        assert "secret" not in orjson.dumps(message).decode()


async def test_broker_down_is_503_and_nothing_changes(make_client: AppFactory, database_url: str, conn: Any) -> None:
    user = await create_user(conn, name="c", role="creator-group", scopes=[])
    _, key = await create_api_key(conn, user_id=user.id)
    client = await make_client(database_url=database_url, redis_url="redis://127.0.0.1:1/0", redis_channel="x")
    resp = await client.post("/api/v1/dream", json={"name": "x"}, headers=auth(key))
    env = await resp.json()
    assert resp.status == 503 and env["errorCode"] == "SERVICE_UNAVAILABLE" and "nothing was changed" in env["message"]
    assert await conn.fetchval("SELECT count(*) FROM dreams") == 0


async def test_no_dream_routes_without_a_database(make_client: AppFactory) -> None:
    client = await make_client()
    resp = await client.get("/api/v1/dream", headers=auth(PUBLISHER_KEY))
    assert resp.status == 404


SQL_STRINGS = [
    "'; DROP TABLE dreams; --",
    "' OR '1'='1",
    "\\x00\\",
    "$1",
    "%' AND 1=1 --",
    "../../etc/passwd",
    "\u202e\u0000",
]


@pytest.mark.parametrize("value", SQL_STRINGS)
async def test_sql_meaningful_strings_are_stored_verbatim(world: World, conn: Any, value: str) -> None:
    text = value.replace("\u0000", "")  # PostgreSQL text cannot hold NUL: that one must be a 400, not a 500
    status, env = await world.call(
        "POST", "/dream", "creator", json={"name": value, "description": value, "prompt": value}
    )
    if "\u0000" in value:
        assert status == 400 and env["errorCode"] == "BAD_REQUEST", env
        status, env = await world.call(
            "POST", "/dream", "creator", json={"name": text, "description": text, "prompt": text}
        )
    assert status == 201, env
    dream = env["data"]["dream"]
    assert dream["name"] == text and dream["description"] == text
    status, env = await world.call("GET", f"/dream/{dream['uuid']}", "creator")
    assert status == 200 and env["data"]["dream"]["name"] == text
    status, env = await world.call("GET", "/dream", "creator", params={"status": value, "userUUID": value})
    assert status in (200, 400), env
    assert await conn.fetchval("SELECT count(*) FROM dreams") >= 1  # the table is still there


@pytest.mark.parametrize(
    "ident", ["../../etc/passwd", "1 OR 1=1", "%2e%2e%2f", "00000000-0000-0000-0000-00000000000'", "x" * 500]
)
async def test_hostile_ids_are_404_or_400_never_500(world: World, ident: str) -> None:
    for method, suffix in (("GET", ""), ("PUT", ""), ("DELETE", ""), ("PUT", "/upvote"), ("POST", "/status/processed")):
        status, env = await world.call(method, f"/dream/{ident}{suffix}", "admin", json={})
        assert status in (400, 404, 405), (method, suffix, status, env)


async def test_out_of_range_numbers_are_400(world: World) -> None:
    dream = await world.create()
    status, env = await world.call(
        "POST", f"/dream/{dream['uuid']}/status/processed", "admin", json={"processedVideoFrames": 3_000_000_000}
    )
    assert status == 400 and env["errorCode"] == "BAD_REQUEST", env
    status, env = await world.call("PUT", f"/dream/{dream['uuid']}", "admin", json={"featureRank": 2**31})
    assert status == 400 and env["errorCode"] == "BAD_REQUEST", env
    nested: object = "x"
    for _ in range(300):
        nested = {"a": nested}
    status, env = await world.call("POST", "/dream", "creator", json={"name": "deep", "prompt": nested})
    assert status == 400 and env["errorCode"] == "BAD_REQUEST", env
