"""History and recovery over a real socket: offsets in MESSAGE, LISTEN with ``since``,
GAP ``history_lost``; in-process app on loopback with the memory broker."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import PUBLISHER_KEY, AppFactory, assert_silent, auth, listen, recv, send


async def publish(client: Any, topic: str, message: object) -> None:
    resp = await client.post("/publish", json={"topic": topic, "message": message}, headers=auth(PUBLISHER_KEY))
    assert resp.status == 202, await resp.text()


async def listen_since(ws: Any, topics: list[str], since: dict[str, Any], nonce: str = "s1") -> dict[str, Any]:
    await send(ws, type="LISTEN", nonce=nonce, data={"topics": topics, "since": since})
    return await recv(ws)


async def test_messages_on_topics_with_history_carry_offset_and_epoch(make_client: AppFactory) -> None:
    client = await make_client()
    async with client.ws_connect("/ws") as ws:
        await listen(ws, ["dream:update.a", "channel:update.a"])
        for i in range(3):
            await publish(client, "dream:update.a", f"m{i}")
        await publish(client, "channel:update.a", "no history")
        got = [(await recv(ws))["data"] for _ in range(4)]
    epoch = got[0]["epoch"]
    assert isinstance(epoch, str) and epoch
    assert got[:3] == [
        {"topic": "dream:update.a", "message": f"m{i}", "offset": i + 1, "epoch": epoch} for i in range(3)
    ]
    assert got[3] == {"topic": "channel:update.a", "message": "no history"}  # the Twitch shape, unchanged


async def test_listen_since_gets_what_was_missed_after_the_response_then_live(make_client: AppFactory) -> None:
    client = await make_client()
    async with client.ws_connect("/ws") as first:
        await listen(first, ["dream:update.a"])
        await publish(client, "dream:update.a", "m1")
        seen = (await recv(first))["data"]
    for i in range(2, 5):
        await publish(client, "dream:update.a", f"m{i}")  # missed while disconnected
    await publish(client, "dream:update.b", "another topic")
    async with client.ws_connect("/ws") as ws:
        since = {"dream:update.a": {"offset": seen["offset"], "epoch": seen["epoch"]}}
        reply = await listen_since(ws, ["dream:update.a", "dream:update.b"], since)
        assert reply == {"type": "RESPONSE", "nonce": "s1", "error": ""}
        recovered = [(await recv(ws))["data"] for _ in range(3)]
        assert [(m["offset"], m["message"]) for m in recovered] == [(2, "m2"), (3, "m3"), (4, "m4")]
        assert {m["topic"] for m in recovered} == {"dream:update.a"}
        await publish(client, "dream:update.a", "m5")
        assert (await recv(ws))["data"]["offset"] == 5
        await assert_silent(ws)


async def test_since_the_server_cannot_cover_gets_gap_history_lost(make_client: AppFactory) -> None:
    client = await make_client()
    await publish(client, "dream:update.a", "m1")
    async with client.ws_connect("/ws") as ws:
        since = {
            "dream:update.a": {"offset": 1, "epoch": "not-the-epoch"},
            "channel:update.a": {"offset": 3, "epoch": "x"},  # a topic without history
        }
        reply = await listen_since(ws, ["dream:update.a", "channel:update.a"], since)
        assert reply["error"] == ""
        gaps = [await recv(ws) for _ in range(2)]
        assert sorted(g["data"]["topics"][0] for g in gaps) == ["channel:update.a", "dream:update.a"]
        assert {g["type"] for g in gaps} == {"GAP"} and {g["data"]["reason"] for g in gaps} == {"history_lost"}
        await assert_silent(ws)  # nothing replayed after a GAP: the live stream only
        await publish(client, "dream:update.a", "m2")
        assert (await recv(ws))["data"]["offset"] == 2


@pytest.mark.parametrize(
    "since",
    [
        {"dream:update.a": {"offset": -1, "epoch": "e"}},
        {"dream:update.a": {"offset": 10**30, "epoch": "e"}},
        {"dream:update.a": {"offset": "1", "epoch": "e"}},
        {"dream:update.a": {"offset": 1, "epoch": "e" * 10_240}},
        {"dream:update.b": {"offset": 0, "epoch": "e"}},
        {f"dream:update.t{i}": {"offset": 0, "epoch": "e"} for i in range(50)},
        [1, 2],
    ],
)
async def test_hostile_since_is_refused_and_the_connection_keeps_working(
    make_client: AppFactory, since: object
) -> None:
    client = await make_client()
    await publish(client, "dream:update.b", "on another topic")
    async with client.ws_connect("/ws") as ws:
        frame = {"type": "LISTEN", "nonce": "h", "data": {"topics": ["dream:update.a"], "since": since}}
        await ws.send_str(json.dumps(frame))  # json: orjson refuses integers past 64 bits
        reply = await recv(ws)
        assert reply["error"] == "ERR_BADMESSAGE", reply
        await assert_silent(ws)  # never a replay of another topic
        assert (await listen(ws, ["dream:update.a"]))["error"] == ""
        await publish(client, "dream:update.a", "ok")
        assert (await recv(ws))["data"]["message"] == "ok"
