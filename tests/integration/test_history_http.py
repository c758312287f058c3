"""``GET /history/{topic}`` in-process (real aiohttp server on loopback, memory broker)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from http_api.appkeys import NODE
from realtime.broker import MemoryBroker
from realtime.errors import BrokerUnavailable
from realtime.settings import parse_api_keys
from tests.conftest import API_KEYS_JSON, OTHER_KEY, PUBLISHER_KEY, USER_KEY, AppFactory, auth

HISTORY_KEY = "history-key-0123456789abcdef"
KEYS = parse_api_keys(
    orjson.dumps(
        [*orjson.loads(API_KEYS_JSON), {"userId": "ops", "apiKey": HISTORY_KEY, "scopes": ["realtime:history"]}]
    ).decode()
)


async def history_client(make_client: AppFactory) -> TestClient[Any, Any]:
    return await make_client(api_keys=KEYS)


async def publish(client: TestClient[Any, Any], topic: str, *messages: object) -> None:
    for message in messages:
        resp = await client.post("/publish", json={"topic": topic, "message": message}, headers=auth(PUBLISHER_KEY))
        assert resp.status == 202, await resp.text()


async def read(client: TestClient[Any, Any], topic: str, key: str = HISTORY_KEY, **query: object) -> Any:
    resp = await client.get(f"/history/{topic}", params={k: str(v) for k, v in query.items()}, headers=auth(key))
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_response_shape(make_client: AppFactory) -> None:
    client = await history_client(make_client)
    await publish(client, "dream:update.a", "processing", {"status": "processed"})
    resp = await client.get("/history/dream:update.a", headers=auth(USER_KEY))
    assert resp.status == 200 and resp.content_type == "application/json"
    assert resp.headers["Cache-Control"] == "no-store"
    body = await resp.json()
    assert set(body) == {"topic", "offset", "epoch", "first", "publications"}
    assert body["topic"] == "dream:update.a" and body["offset"] == 2 and body["first"] == 1
    assert isinstance(body["epoch"], str) and body["epoch"]
    assert body["publications"] == [
        {"offset": 1, "message": "processing"},
        {"offset": 2, "message": '{"status":"processed"}'},  # as clients got it: data.message
    ]


async def test_topic_never_published_has_an_empty_history(make_client: AppFactory) -> None:
    client = await history_client(make_client)
    first = await read(client, "dream:job:progress.j1")
    assert first["offset"] == 0 and first["epoch"] == "" and first["first"] == 1 and first["publications"] == []
    await publish(client, "dream:job:progress.j1", "10%")
    after = await read(client, "dream:job:progress.j1")
    assert after["epoch"] != ""  # the first publication starts an epoch (a read creates nothing)
    assert after["publications"] == [{"offset": 1, "message": "10%"}]


async def test_paging_with_since_and_limit(make_client: AppFactory) -> None:
    client = await history_client(make_client)
    await publish(client, "dream:update.p", *[f"m{i}" for i in range(1, 6)])
    pages, since, epochs = [], 0, set()
    while True:
        page = await read(client, "dream:update.p", since=since, limit=2)
        epochs.add(page["epoch"])
        assert page["offset"] == 5 and page["first"] == 1
        if not page["publications"]:
            break
        pages.append([p["offset"] for p in page["publications"]])
        since = page["publications"][-1]["offset"]
    assert pages == [[1, 2], [3, 4], [5]] and len(epochs) == 1
    position = await read(client, "dream:update.p", limit=0)
    assert position["publications"] == [] and position["offset"] == 5
    ahead = await read(client, "dream:update.p", since=99)
    assert ahead["publications"] == [] and ahead["offset"] == 5


async def test_history_size_caps_what_is_kept_and_the_page(make_client: AppFactory) -> None:
    client = await history_client(make_client)
    await publish(client, "dream:update.big", *[str(i) for i in range(1, 21)])  # dream:update keeps 16
    page = await read(client, "dream:update.big", limit=1000)
    assert page["first"] == 5 and page["offset"] == 20
    assert [p["offset"] for p in page["publications"]] == list(range(5, 21))
    lost = await read(client, "dream:update.big", since=2, limit=3)
    assert [p["offset"] for p in lost["publications"]] == [5, 6, 7]  # first > since + 1: 3 and 4 are lost


async def test_access_matrix(make_client: AppFactory) -> None:
    client = await history_client(make_client)
    await publish(client, "remote-control:command.7", "next")
    await publish(client, "remote-control:command.8", "pause")
    # realtime:history reads any topic, scoped and someone else's included
    assert (await read(client, "remote-control:command.7"))["publications"][0]["message"] == "next"
    assert (await read(client, "remote-control:command.8"))["publications"][0]["message"] == "pause"
    # the user reads their own self topic, and only that one
    assert (await read(client, "remote-control:command.7", USER_KEY))["offset"] == 1
    assert (await read(client, "remote-control:command.8", OTHER_KEY))["offset"] == 1
    resp = await client.get("/history/remote-control:command.8", headers=auth(USER_KEY))
    body = await resp.json()
    assert resp.status == 403 and body["error"] == "forbidden" and "not yours" in body["message"]
    assert "missing_scopes" not in body
    # the topic's scope is needed
    resp = await client.get("/history/remote-control:command.svc", headers=auth(PUBLISHER_KEY))
    body = await resp.json()
    assert resp.status == 403 and body["missing_scopes"] == ["user:read:remote-control"]
    assert "user:read:remote-control" in body["message"]
    # a public topic: any authenticated caller
    for key in (USER_KEY, OTHER_KEY, PUBLISHER_KEY):
        assert (await read(client, "dream:update.a", key))["topic"] == "dream:update.a"


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Api-Key wrong-key-0123456789abcdef"}, {"Authorization": "garbage"}]
)
async def test_unauthenticated_is_401(make_client: AppFactory, headers: dict[str, str]) -> None:
    client = await history_client(make_client)
    resp = await client.get("/history/dream:update.a", headers=headers)
    assert resp.status == 401 and (await resp.json())["error"] == "unauthorized"


async def test_refused_reads_create_no_history(make_client: AppFactory) -> None:
    client = await history_client(make_client)
    broker = client.app[NODE].broker
    assert isinstance(broker, MemoryBroker)
    for _ in range(3):
        resp = await client.get("/history/remote-control:command.9", headers=auth(USER_KEY))
        assert resp.status == 403
    assert (await client.get("/history/dream:update.x")).status == 401
    assert len(broker.history_store) == 0


@pytest.mark.parametrize("topic", ["channel:update.1", "system:notice", "channel:follow.1"])
async def test_topic_without_history_is_404(make_client: AppFactory, topic: str) -> None:
    client = await history_client(make_client)
    resp = await client.get(f"/history/{topic}", headers=auth(HISTORY_KEY))
    body = await resp.json()
    assert resp.status == 404 and body["error"] == "not_found" and "keeps no history" in body["message"]


@pytest.mark.parametrize("topic", ["nope", "dream:unknown.a", "dream:update", "system:notice.x", "Dream:update.a"])
async def test_bad_topic_is_400_naming_the_field(make_client: AppFactory, topic: str) -> None:
    client = await history_client(make_client)
    resp = await client.get(f"/history/{topic}", headers=auth(HISTORY_KEY))
    body = await resp.json()
    assert resp.status == 400 and body["error"] == "bad_request" and list(body["fields"]) == ["topic"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"since": "-1"}, "since"),
        ({"since": "x"}, "since"),
        ({"since": "1.5"}, "since"),
        ({"since": " 1"}, "since"),
        ({"since": "+1"}, "since"),
        ({"since": "1_0"}, "since"),
        ({"since": ""}, "since"),
        ({"since": str(2**53)}, "since"),
        ({"since": "9" * 40}, "since"),
        ({"limit": "-5"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"offset": "3"}, "offset"),
    ],
)
async def test_bad_query_is_400_naming_the_field(make_client: AppFactory, query: dict[str, str], field: str) -> None:
    client = await history_client(make_client)
    resp = await client.get("/history/dream:update.a", params=query, headers=auth(HISTORY_KEY))
    body = await resp.json()
    assert resp.status == 400 and body["error"] == "bad_request" and list(body["fields"]) == [field]


async def test_broker_unavailable_is_503(make_client: AppFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    client = await history_client(make_client)

    async def down(topic: str, **kwargs: object) -> None:
        raise BrokerUnavailable("redis unavailable: ConnectionError")

    monkeypatch.setattr(client.app[NODE].broker, "history", down)
    resp = await client.get("/history/dream:update.a", headers=auth(HISTORY_KEY))
    body = await resp.json()
    assert resp.status == 503 and body["error"] == "unavailable" and "redis unavailable" in body["message"]


async def test_post_is_405(make_client: AppFactory) -> None:
    client = await history_client(make_client)
    resp = await client.post("/history/dream:update.a", headers=auth(HISTORY_KEY))
    assert resp.status == 405 and (await resp.json())["error"] == "method_not_allowed"


async def test_openapi_describes_the_route(make_client: AppFactory) -> None:
    client = await history_client(make_client)
    spec = await (await client.get("/api/v1/openapi.json")).json()
    op = spec["paths"]["/history/{topic}"]["get"]
    params = {p["name"]: p for p in op["parameters"]}
    assert set(params) == {"topic", "since", "limit"} and params["topic"]["in"] == "path"
    assert params["limit"]["schema"]["maximum"] == 1000 and params["since"]["schema"]["minimum"] == 0
    assert op["responses"]["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/History"}
    assert {"200", "400", "401", "403", "404", "503"} <= set(op["responses"])
    history = spec["components"]["schemas"]["History"]["properties"]
    assert set(history) == {"topic", "offset", "epoch", "first", "publications"}
