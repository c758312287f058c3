"""The Redis Function library's names, keys and generated code; the link's barrier
(a fake transport: no socket)."""

from __future__ import annotations

import asyncio
import re

import pytest

from realtime.redis_functions import function_names, history_key, library_code, meta_key
from realtime.redis_link import SubscriberLink, encode_command
from topics import DEFAULT_POLICY, TopicPolicy, TopicRule

PING = encode_command("PING")
PONG = b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"


def test_names_are_sanitized_from_the_channel() -> None:
    assert function_names("realtime") == (
        "realtime",
        "realtime_publish",
        "realtime_history",
        "realtime_presence",
        "realtime_presence_get",
    )
    names = function_names("realtime-test-ab.c:d{e} é")
    assert names.library == "realtime_test_ab_c_d_e___"
    assert (names.publish, names.history) == (names.library + "_publish", names.library + "_history")
    assert all(re.fullmatch(r"[A-Za-z0-9_]+", name) for name in names)


def test_keys_share_the_topic_hash_tag() -> None:
    assert history_key("realtime", "dream:update.abc") == "realtime:{dream:update.abc}:history"
    assert meta_key("realtime", "dream:update.abc") == "realtime:{dream:update.abc}:meta"


def test_the_library_bakes_the_history_rules_in() -> None:
    code = library_code("realtime", DEFAULT_POLICY)
    assert code.startswith("#!lua name=realtime\n")
    assert "redis.register_function('realtime_publish', publish)" in code
    assert "redis.register_function{function_name='realtime_history', callback=history, flags={'no-writes'}}" in code
    assert 'local CHANNEL = "realtime"' in code
    rows = re.findall(r'^  \["([^"]+)"\] = \{(\d+), (\d+)\},$', code, re.MULTILINE)
    assert rows == [
        ("dream:job:progress", "300", "600"),
        ("dream:update", "16", "3600"),
        ("remote-control:command", "32", "300"),
    ]
    assert "channel:update" not in code  # no history: not in the table
    assert "@" not in code.replace("@user_function", "")  # every placeholder filled


def test_a_policy_without_history_refuses_every_topic() -> None:
    policy = TopicPolicy({"a:b": TopicRule("a:b", None, "any")})
    code = library_code("c", policy)
    assert "local POLICY = {}\n" in code


def test_an_odd_channel_is_a_safe_lua_string() -> None:
    code = library_code('x"]]\n\\é', DEFAULT_POLICY)
    assert r'local CHANNEL = "x\034\093\093\010\092\195\169"' in code
    assert code.splitlines()[0] == "#!lua name=x______"


class FakeTransport:
    """Records writes; ``is_closing`` after ``abort``."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.closing = True


def _link() -> tuple[SubscriberLink, FakeTransport]:
    link = SubscriberLink(b"c:control", lambda data: None, lambda data: None)
    transport = FakeTransport()
    link.connection_made(transport)  # type: ignore[arg-type]
    return link, transport


async def test_barriers_share_one_ping_and_pongs_match_in_order() -> None:
    link, transport = _link()
    link.ping()  # a health check, before the barriers
    first, second = link.barrier(), link.barrier()
    assert transport.written == [PING]  # the barriers' PING waits for the end of the pass
    await asyncio.sleep(0)
    assert transport.written == [PING, PING]
    third = link.barrier()
    await asyncio.sleep(0)
    assert transport.written == [PING, PING, PING]
    link.data_received(PONG)  # the health check's
    assert not first.done() and not second.done()
    link.data_received(PONG + b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$2\r\n{}\r\n")
    assert first.done() and second.done() and not third.done()
    link.data_received(PONG)
    assert third.done()


async def test_barriers_fail_when_the_link_is_lost() -> None:
    link, _ = _link()
    written = link.barrier()
    await asyncio.sleep(0)
    pending = link.barrier()
    link.connection_lost(None)
    await asyncio.sleep(0)
    for fut in (written, pending):
        with pytest.raises(ConnectionError):
            fut.result()
    with pytest.raises(ConnectionError):
        await link.barrier()
