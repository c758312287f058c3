"""The client SDK's presence (issue 18) against the real app in process: ``client_info`` on
every LISTEN (also after a reconnect), :meth:`RealtimeClient.presence`, JOIN/LEAVE events,
and ``realtime listen`` printing them."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import orjson
import pytest

from realtime.client import ClientError, Event, PresenceRefused, RealtimeClient
from realtime.client_cli import listen_command
from service.cli import main
from tests.conftest import OTHER_KEY, USER_KEY, AppFactory, wait_for

FAST = {"backoff_initial": 0.05, "backoff_max": 0.4, "response_timeout": 3.0}
ROOM = "chat:room:message.lobby"
SELF7 = "remote-control:command.7"


def base_url(server: Any) -> str:
    return str(server.make_url("")).rstrip("/")


async def next_of(client: RealtimeClient, kind: str, timeout: float = 5.0) -> Event:
    """The next event of type ``kind`` (others' JOIN/LEAVE may come in between)."""
    async with asyncio.timeout(timeout):
        async for event in client:
            if event.type == kind:
                return event
    raise AssertionError(f"the client stopped before a {kind}")


async def test_client_info_presence_and_join_leave(make_client: AppFactory, chat_policy: str) -> None:
    url = base_url(await make_client(topics_file=chat_policy))
    async with RealtimeClient(url, [ROOM], client_info={"nick": "ann"}, **FAST) as ann:
        own = await next_of(ann, "JOIN")  # its own JOIN: it listens by then
        assert (own.topic, own.user, own.info) == (ROOM, None, {"nick": "ann"})
        async with RealtimeClient(url, [ROOM], api_key=USER_KEY, client_info={"nick": "bob"}, **FAST) as bob:
            joined = await next_of(ann, "JOIN")
            assert (joined.topic, joined.user, joined.info) == (ROOM, "7", {"nick": "bob"})
            assert joined.client not in ("", own.client)
            for asker in (ann, bob):
                data = await asker.presence(ROOM)
                assert (data["connections"], data["users"]) == (2, 1)
                clients = {c["client"]: (c["user"], c["info"]) for c in data["clients"]}
                assert clients == {own.client: (None, {"nick": "ann"}), joined.client: ("7", {"nick": "bob"})}
        left = await next_of(ann, "LEAVE")  # bob closed
        assert left == Event("LEAVE", topic=ROOM, user="7", client=joined.client, info={"nick": "bob"})
        assert left.to_dict() == {"type": "LEAVE", "topic": ROOM, "user": "7", "client": joined.client,
                                  "info": {"nick": "bob"}}  # fmt: skip
        assert (await ann.presence(ROOM))["connections"] == 1


async def test_client_info_is_sent_again_after_a_reconnect(make_client: AppFactory, chat_policy: str) -> None:
    """The server closes an idle connection (4002); the client reconnects and its new
    connection's entry carries the same ``client_info``."""
    url = base_url(await make_client(topics_file=chat_policy, idle_timeout=0.6))
    async with RealtimeClient(url, [ROOM], ping_interval=0.15, ping_jitter=0.0, **FAST) as watcher:
        await next_of(watcher, "JOIN")
        async with RealtimeClient(url, [ROOM], client_info={"device": "tv"}, **FAST) as tv:  # never PINGs
            first = await next_of(watcher, "JOIN")
            assert first.info == {"device": "tv"}
            assert await next_of(tv, "RECONNECTED") == Event("RECONNECTED", topics=(ROOM,))
            assert tv.reconnects == 1
            events = [await next_of(watcher, "LEAVE"), await next_of(watcher, "JOIN")]
            assert [(e.type, e.info) for e in events] == [("LEAVE", {"device": "tv"}), ("JOIN", {"device": "tv"})]
            assert events[0].client == first.client != events[1].client
            data = await watcher.presence(ROOM)
            infos = [c["info"] for c in data["clients"]]
            assert len(infos) == 2 and {} in infos and {"device": "tv"} in infos


async def test_presence_refused_raises_and_the_client_goes_on(make_client: AppFactory) -> None:
    url = base_url(await make_client())  # the default policy: presence on remote-control:command
    client = RealtimeClient(url, [SELF7], api_key=USER_KEY, client_info={"device": "tv"}, **FAST)
    with pytest.raises(ClientError, match="not connected"):
        await client.presence(SELF7)
    async with client:
        data = await client.presence(SELF7)
        assert data == {"connections": 1, "users": 1, "clients": [{"user": "7", "client": data["clients"][0]["client"],
                                                                   "info": {"device": "tv"}}]}  # fmt: skip
        with pytest.raises(PresenceRefused) as refused:
            await client.presence("remote-control:command.8")  # another user's self topic
        assert refused.value.code == "ERR_BADAUTH" and refused.value.topic == "remote-control:command.8"
        with pytest.raises(PresenceRefused) as refused:
            await client.presence("channel:update.a")
        assert refused.value.code == "ERR_BADTOPIC" and "keeps no presence" in str(refused.value)
        async with RealtimeClient(url, [], api_key=OTHER_KEY, **FAST) as other:
            with pytest.raises(PresenceRefused, match="ERR_BADAUTH"):  # user 8 may not read user 7's devices
                await other.presence(SELF7)
        assert (await client.presence(SELF7))["connections"] == 1
        assert client.reconnects == 0


def test_client_info_is_checked_before_anything_is_sent() -> None:
    with pytest.raises(ValueError, match="longer than 512 bytes"):
        RealtimeClient("http://127.0.0.1:1", [ROOM], client_info={"name": "x" * 600})
    with pytest.raises(ValueError, match="nested deeper"):
        RealtimeClient("http://127.0.0.1:1", [ROOM], client_info={"a": {"b": {"c": {}}}})


async def test_realtime_listen_prints_join_and_leave(make_client: AppFactory, chat_policy: str) -> None:
    url = base_url(await make_client(topics_file=chat_policy))
    out = io.StringIO()
    command = asyncio.create_task(listen_command(url, [ROOM], client_info={"host": "cli"}, out=out))
    await wait_for(lambda: out.getvalue().count("\n") == 1)  # its own JOIN
    async with RealtimeClient(url, [ROOM], client_info={"nick": "ann"}, **FAST):
        await wait_for(lambda: out.getvalue().count("\n") == 2)
    await wait_for(lambda: out.getvalue().count("\n") == 3)
    command.cancel()  # as SIGINT does
    assert await command == 0
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [(line["type"], line["info"]) for line in lines] == [
        ("JOIN", {"host": "cli"}),
        ("JOIN", {"nick": "ann"}),
        ("LEAVE", {"nick": "ann"}),
    ]
    assert set(lines[0]) == {"type", "topic", "user", "client", "info"} and lines[0]["user"] is None


def test_realtime_listen_refuses_a_bad_client_info(capsys: pytest.CaptureFixture[str]) -> None:
    for bad, why in (("{", "not JSON"), ("[1]", "must be a JSON object")):
        with pytest.raises(SystemExit) as exited:
            main(["listen", ROOM, "--client-info", bad])
        assert exited.value.code == 2
        assert why in capsys.readouterr().err
