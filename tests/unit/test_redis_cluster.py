"""Redis Cluster topology, sans I/O: key slots, slot maps from real replies, diffs, MOVED."""

from __future__ import annotations

from typing import Any

import pytest
from redis.crc import key_slot as redis_key_slot

from realtime.redis_cluster import (
    SLOTS,
    Address,
    ClusterReplyError,
    Redirect,
    SlotMap,
    SlotMove,
    SlotUncovered,
    crc16,
    diff,
    hash_tag,
    key_slot,
    parse_moved,
)

# `CLUSTER SHARDS` of a 3 x (1 + 1) cluster started by tests/redis_cluster.py (Redis 7.0.15),
# as redis-py 8.2 returns it to `execute_command("CLUSTER", "SHARDS")` (maps of bytes), after
# the master on 36145 was SIGKILLed and its replica 54929 took over: the dead master is a
# shard of its own with no slots, health "fail".
AFTER_FAILOVER: list[Any] = [
    {b"slots": [5461, 10922], b"nodes": [
        {b"id": b"ba1a292c8063d365745153d88f71e97705b6e708", b"port": 39535, b"ip": b"127.0.0.1",
         b"endpoint": b"127.0.0.1", b"role": b"master", b"replication-offset": 0, b"health": b"online"},
        {b"id": b"e99a6e61832404a27db6b6606726e7995deb1aaa", b"port": 44327, b"ip": b"127.0.0.1",
         b"endpoint": b"127.0.0.1", b"role": b"replica", b"replication-offset": 0, b"health": b"loading"}]},
    {b"slots": [0, 5460], b"nodes": [
        {b"id": b"f2b01715177d27b592288e624582c0afe832bd00", b"port": 45857, b"ip": b"127.0.0.1",
         b"endpoint": b"127.0.0.1", b"role": b"master", b"replication-offset": 0, b"health": b"online"},
        {b"id": b"7b96b9cc0146ba9573bc6720df193a7b7f319bbb", b"port": 38899, b"ip": b"127.0.0.1",
         b"endpoint": b"127.0.0.1", b"role": b"replica", b"replication-offset": 0, b"health": b"loading"}]},
    {b"slots": [], b"nodes": [
        {b"id": b"9f73aeaa7a6a5f04b20dab97e51553e4e849b8e7", b"port": 36145, b"ip": b"127.0.0.1",
         b"endpoint": b"127.0.0.1", b"role": b"master", b"replication-offset": 0, b"health": b"fail"}]},
    {b"slots": [10923, 16383], b"nodes": [
        {b"id": b"b180e4067489a024e546e7e84d874b9f0d3deb5f", b"port": 54929, b"ip": b"127.0.0.1",
         b"endpoint": b"127.0.0.1", b"role": b"master", b"replication-offset": 0, b"health": b"online"}]},
]  # fmt: skip

# `CLUSTER SLOTS` of a freshly formed cluster, as redis-py returns it.
SLOTS_REPLY: list[Any] = [
    [0, 5460, [b"127.0.0.1", 44347, b"f62d71260f0a06e4b9fd7d9495f410bf2038ab67", {}],
     [b"127.0.0.1", 53945, b"7efac61be84d59e9a1224887c15aa470de34a645", {}]],
    [5461, 10922, [b"127.0.0.1", 41191, b"c14b67446e6ca58bffe49a3c079c5acbf01834bb", {}]],
    [10923, 16383, [b"127.0.0.1", 47577, b"4b1876ae85f0a694205cd3504d8776805ea78028", {}]],
]  # fmt: skip


def a(port: int) -> Address:
    return Address("127.0.0.1", port)


def flat(value: Any) -> Any:
    """The RESP2 wire shape of a map: ``[key, value, key, value, ...]``."""
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in (k, flat(v))]
    if isinstance(value, list):
        return [flat(v) for v in value]
    return value


def decoded(value: Any) -> Any:
    """The reply of a client with ``decode_responses=True``."""
    if isinstance(value, dict):
        return {decoded(k): decoded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decoded(v) for v in value]
    return value.decode() if isinstance(value, bytes) else value


# -- key slots ----------------------------------------------------------------------------


def test_crc16_xmodem_check_value() -> None:
    assert crc16(b"123456789") == 0x31C3
    assert crc16(b"") == 0


@pytest.mark.parametrize(
    ("name", "slot"),
    [  # each checked with CLUSTER KEYSLOT on Redis 7.0.15 (and again in the harness test)
        ("foo", 12182),
        ("bar", 5061),
        ("hello", 866),
        ("123456789", 12739),
        ("{user1000}.following", 3443),
        ("realtime:{channel:update.a}", 2051),
        ("{}", 15257),
        ("{a}{b}", 15495),
        ("a{}{b}", 15033),
        ("{{a}}", 10276),
    ],
)
def test_key_slot_known_values(name: str, slot: int) -> None:
    assert key_slot(name) == slot
    assert key_slot(name.encode()) == slot


def test_key_slot_agrees_with_redis_py() -> None:
    names = [f"realtime:{{user:remote-control.{i}}}:history" for i in range(500)]
    names += ["", "{", "}", "{}", "}{", "{a", "a}", "{a}", "{{}}", "x{y}z{w}", "ü{ß}", "\x00{\xff}"]
    for name in names:
        assert key_slot(name) == redis_key_slot(name.encode()), name


def test_hash_tag_rules() -> None:
    assert hash_tag(b"plain") == b"plain"
    assert hash_tag(b"{}") == b"{}"  # empty tag: the whole name
    assert hash_tag(b"{a}{b}") == b"a"  # the first tag only
    assert hash_tag(b"a{}{b}") == b"a{}{b}"  # the first `{` has an empty tag: no tag at all
    assert hash_tag(b"a{b") == b"a{b"  # unclosed
    assert hash_tag(b"a}b{c}") == b"c"  # a `}` before the first `{` does not count
    assert hash_tag(b"{{a}}") == b"{a"  # up to the first `}` after the first `{`


def test_a_topics_keys_and_channel_share_its_slot() -> None:
    topic = "user:remote-control.42"
    slots = {key_slot(f"realtime:{{{topic}}}{suffix}") for suffix in ("", ":history", ":meta")}
    assert slots == {key_slot(topic)}
    assert key_slot("é") == key_slot("é".encode())  # str is hashed as UTF-8


# -- slot maps ----------------------------------------------------------------------------


def test_slot_map_from_a_shards_reply_after_failover() -> None:
    view = SlotMap.from_shards(AFTER_FAILOVER)
    assert view.covered()
    assert view.masters() == {a(45857), a(39535), a(54929)}  # not the dead 36145
    assert view.master_for(0) == view.master_for(5460) == a(45857)
    assert view.master_for(5461) == a(39535)
    assert view.master_for(16383) == a(54929)
    assert view.master_for_key("realtime:{channel:update.a}") == a(45857)  # slot 2051
    assert view.replicas(a(45857)) == (a(38899),)
    assert view.replicas(a(54929)) == ()
    assert view.slots_of(a(39535)) == [(5461, 10922)]
    assert list(view.ranges()) == [(0, 5460, a(45857)), (5461, 10922, a(39535)), (10923, 16383, a(54929))]


@pytest.mark.parametrize("shape", [flat, decoded], ids=["resp2-flat", "decoded"])
def test_slot_map_from_other_reply_shapes(shape: Any) -> None:
    assert SlotMap.from_shards(shape(AFTER_FAILOVER)) == SlotMap.from_shards(AFTER_FAILOVER)


def test_slot_map_from_a_slots_reply() -> None:
    view = SlotMap.from_slots(SLOTS_REPLY)
    assert view.masters() == {a(44347), a(41191), a(47577)}
    assert view.replicas(a(44347)) == (a(53945),)
    assert view.master_for(5461) == a(41191)
    assert str(view.master_for(16000)) == "127.0.0.1:47577"


def test_uncovered_slots_and_bounds() -> None:
    view = SlotMap([(0, 99, a(1))], {})
    assert not view.covered()
    assert view.master_for(99) == a(1)
    with pytest.raises(SlotUncovered):
        view.master_for(100)
    with pytest.raises(IndexError):
        view.master_for(SLOTS)
    with pytest.raises(IndexError):
        view.master_for(-1)
    assert list(view.ranges()) == [(0, 99, a(1)), (100, SLOTS - 1, None)]


def test_a_shard_without_a_master_leaves_its_slots_uncovered() -> None:
    reply = [{"slots": [0, 16383], "nodes": [{"ip": "127.0.0.1", "endpoint": "?", "port": 7001, "role": "replica"}]}]
    view = SlotMap.from_shards(reply)
    assert view.masters() == frozenset()
    assert not view.covered()


def test_endpoint_and_tls_port() -> None:
    reply = [
        {"slots": [0, 16383], "nodes": [{"ip": "10.0.0.1", "endpoint": "redis-a", "tls-port": 6380, "role": "master"}]}
    ]
    assert SlotMap.from_shards(reply).masters() == {Address("redis-a", 6380)}
    reply[0]["nodes"][0]["endpoint"] = "?"  # unknown endpoint: the ip
    assert SlotMap.from_shards(reply).masters() == {Address("10.0.0.1", 6380)}


@pytest.mark.parametrize(
    "reply",
    [
        [{"slots": [0], "nodes": []}],  # odd range list
        [{"slots": [0, 16384], "nodes": [{"ip": "h", "port": 1, "role": "master"}]}],  # out of bounds
        [{"slots": [0, 1], "nodes": [{"ip": "", "port": 1, "role": "master"}]}],  # no host
        [{"slots": [0, 1], "nodes": [{"ip": "h", "role": "master"}]}],  # no port
        [["slots", [0, 1], "nodes"]],  # odd key/value list
        [{"slots": [0, 1], "nodes": [{1: "h"}]}],  # a key that is not a string
        [{"slots": [0, None], "nodes": []}],  # a slot that is not an integer
        [
            {"slots": [0, 10], "nodes": [{"ip": "h", "port": 1, "role": "master"}]},
            {"slots": [10, 20], "nodes": [{"ip": "h", "port": 2, "role": "master"}]},
        ],  # slot 10 twice
    ],
)
def test_malformed_shards_replies(reply: Any) -> None:
    with pytest.raises(ClusterReplyError):
        SlotMap.from_shards(reply)


@pytest.mark.parametrize(
    "reply",
    [
        [[0, 16383]],  # no master
        [[0, 16383, ["h"]]],  # a node without a port
        [[0, 16383, ["h", "6379"]]],  # a port that is not an integer
        [["0", 16383, ["h", 6379]]],  # a slot that is not an integer
        [[0, 16383, None]],
    ],
)
def test_malformed_slots_replies(reply: Any) -> None:
    with pytest.raises(ClusterReplyError):
        SlotMap.from_slots(reply)


def test_a_range_out_of_bounds() -> None:
    with pytest.raises(ClusterReplyError):
        SlotMap([(5, 4, a(1))], {})


# -- diffs --------------------------------------------------------------------------------


def three(*, last: int = 3) -> SlotMap:
    return SlotMap([(0, 5460, a(1)), (5461, 10922, a(2)), (10923, 16383, a(last))], {})


def test_no_change() -> None:
    change = diff(three(), three())
    assert not change
    assert change.moves == ()


def test_one_slot_moved() -> None:
    moved = three().with_redirect(Redirect(2051, "127.0.0.1", 3))
    assert moved.master_for(2051) == a(3)
    assert moved.master_for(2050) == moved.master_for(2052) == a(1)
    change = diff(three(), moved)
    assert change.moves == (SlotMove(2051, 2051, a(1), a(3)),)
    assert change.added == change.removed == frozenset()
    assert bool(change)


def test_failover_replaces_a_master() -> None:
    change = diff(three(), three(last=4))
    assert change.moves == (SlotMove(10923, 16383, a(3), a(4)),)
    assert change.added == {a(4)}
    assert change.removed == {a(3)}


def test_adjacent_moves_to_different_owners_stay_apart() -> None:
    new = SlotMap([(0, 99, a(2)), (100, 199, a(3)), (200, 5460, a(1)), (5461, 16383, a(2))], {})
    old = SlotMap([(0, 5460, a(1)), (5461, 16383, a(2))], {})
    change = diff(old, new)
    assert change.moves == (SlotMove(0, 99, a(1), a(2)), SlotMove(100, 199, a(1), a(3)))
    assert change.added == {a(3)}
    uncovered = diff(old, SlotMap([(0, 5460, a(1))], {}))
    assert uncovered.moves == (SlotMove(5461, 16383, a(2), None),)
    assert uncovered.removed == {a(2)}


def test_redirect_with_an_empty_host_takes_the_answering_nodes() -> None:
    moved = three().with_redirect(Redirect(0, "", 7001), default_host="10.0.0.9")
    assert moved.master_for(0) == Address("10.0.0.9", 7001)
    with pytest.raises(IndexError):
        three().with_redirect(Redirect(SLOTS, "h", 1))


def test_maps_compare_by_content() -> None:
    assert three() == three()
    assert three() != three(last=4)
    assert hash(three()) == hash(three())
    assert three() != "a map"
    assert "0-5460: 127.0.0.1:1" in repr(three())


# -- MOVED --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("MOVED 1234 127.0.0.1:7001", Redirect(1234, "127.0.0.1", 7001)),
        (b"MOVED 1234 127.0.0.1:7001", Redirect(1234, "127.0.0.1", 7001)),
        ("1234 127.0.0.1:7001", Redirect(1234, "127.0.0.1", 7001)),  # redis-py's MovedError text
        ("ASK 0 redis-b:6379", Redirect(0, "redis-b", 6379)),
        ("MOVED 16383 :7001", Redirect(16383, "", 7001)),  # unknown endpoint
        ("MOVED 5 ::1:7001", Redirect(5, "::1", 7001)),  # IPv6
    ],
)
def test_parse_moved(text: str | bytes, expected: Redirect) -> None:
    assert parse_moved(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "MOVED",
        "MOVED 1234",
        "MOVED x 127.0.0.1:7001",
        "MOVED 1234 127.0.0.1",
        "MOVED 16384 h:1",
        "MOVED 1 h:0",
        "MOVED 1 7001",
        "ERR wrong",
    ],
)
def test_parse_moved_refuses_other_errors(text: str) -> None:
    with pytest.raises(ClusterReplyError):
        parse_moved(text)
