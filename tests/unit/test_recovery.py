"""Unit tests of recovery (realtime/recovery.py): a scripted broker over real ring buffers,
fake connections that record what they were sent; no sockets."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import orjson
import pytest

from realtime.errors import BrokerUnavailable
from realtime.history import HistoryPage, MemoryHistory, Position, Publication
from realtime.recent import RecentPages
from realtime.recovery import MAX_ATTEMPTS, Recovery
from realtime.send_queue import SendQueue
from realtime.topic_index import TopicIndex
from topics import Topic, TopicRule

RULE = TopicRule("dream:update", None, "any", history_size=5, history_ttl=60)
PLAIN = TopicRule("channel:update", None, "any")
T = Topic("dream:update.a")


def payload_of(frame: bytes) -> dict[str, Any]:
    """The JSON payload of one unmasked server text frame (RFC 6455 5.2)."""
    length = frame[1] & 0x7F
    start = 2 if length < 126 else 4 if length == 126 else 10
    decoded: dict[str, Any] = orjson.loads(frame[start:])
    return decoded


class Conn:
    """Records the payloads queued to it (stands in for a SendQueue)."""

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []

    def send(self, frame: bytes) -> None:
        self.got.append(payload_of(frame))

    def send_payload(self, payload: bytes) -> None:
        self.got.append(orjson.loads(payload))

    def offsets(self) -> list[int]:
        return [m["data"]["offset"] for m in self.got if m["type"] == "MESSAGE"]

    def kinds(self) -> list[str]:
        return [m["type"] if m["type"] != "GAP" else f"GAP {m['data']['reason']}" for m in self.got]


class ScriptedBroker:
    """History from real ring buffers; a read answers what history held when it was made,
    after the test opens ``gate`` (so publications can arrive while it is out)."""

    kind = "memory"

    def __init__(self) -> None:
        self.store = MemoryHistory()
        self.gate: asyncio.Event | None = None
        self.failures = 0
        self.ready = True
        self.reads: list[tuple[int, int]] = []

    def append(self, message: str = "m") -> Position:
        return self.store.append(T, message, size=RULE.history_size, ttl=RULE.history_ttl)

    async def history(self, topic: str, *, since: int, limit: int, rule: TopicRule) -> HistoryPage:
        self.reads.append((since, limit))
        if self.failures:
            self.failures -= 1
            raise BrokerUnavailable("down")
        page = self.store.read(topic, since=since, limit=limit, size=rule.history_size, ttl=rule.history_ttl)
        if self.gate is not None:
            await self.gate.wait()
        return page


@pytest.fixture
def broker() -> ScriptedBroker:
    return ScriptedBroker()


@pytest.fixture
def recovery(broker: ScriptedBroker) -> Recovery:
    return Recovery(cast(Any, broker), TopicIndex(), retry_delay=0.001)


def conn() -> Any:
    return cast(SendQueue, Conn())


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def live(recovery: Recovery, position: Position, message: str = "m") -> int:
    return recovery.on_publication(T, message, position.offset, position.epoch)


async def test_live_publications_in_order_and_duplicates_dropped(recovery: Recovery, broker: ScriptedBroker) -> None:
    c = conn()
    recovery.listen(c, T, RULE, None)
    await settle()  # the read that learns the position (offset 0)
    p1, p2 = broker.append(), broker.append()
    assert live(recovery, p1) == 1 and live(recovery, p2) == 1
    assert live(recovery, p1) == 0  # delivered already
    assert c.offsets() == [1, 2]
    assert recovery.stats.duplicates == 1


async def test_since_at_the_current_position_joins_at_once(recovery: Recovery, broker: ScriptedBroker) -> None:
    first = conn()
    recovery.listen(first, T, RULE, None)
    await settle()
    p1 = broker.append()
    live(recovery, p1)
    reads = len(broker.reads)
    second = conn()
    recovery.listen(second, T, RULE, p1)
    assert len(broker.reads) == reads  # no read: nothing to recover
    p2 = broker.append()
    live(recovery, p2)
    assert second.offsets() == [2]


async def test_since_behind_gets_the_missed_then_live_without_duplicates(
    recovery: Recovery, broker: ScriptedBroker
) -> None:
    positions = [broker.append(f"m{i}") for i in range(1, 6)]  # offsets 1..5, before anyone listened
    broker.gate = asyncio.Event()
    c = conn()
    recovery.listen(c, T, RULE, positions[1])  # saw 2
    await settle()  # the read is out, answered with 3..5 once the gate opens
    assert c.got == []
    p6 = broker.append("m6")
    live(recovery, positions[4], "m5")  # 5 arrives live during the read (also in the read's answer)
    live(recovery, p6, "m6")  # 6 arrives live during the read
    broker.gate.set()
    await settle()
    live(recovery, broker.append("m7"), "m7")
    assert c.offsets() == [3, 4, 5, 6, 7]
    assert [m["data"]["message"] for m in c.got] == ["m3", "m4", "m5", "m6", "m7"]
    assert recovery.stats.recovered == 4


async def test_connections_joining_one_read_share_it(recovery: Recovery, broker: ScriptedBroker) -> None:
    positions = [broker.append() for _ in range(4)]
    broker.gate = asyncio.Event()
    conns = [conn() for _ in range(10)]
    for c in conns:
        recovery.listen(c, T, RULE, positions[0])
    await settle()
    broker.gate.set()
    await settle()
    assert len(broker.reads) == 1
    assert all(c.offsets() == [2, 3, 4] for c in conns)


@pytest.mark.parametrize(
    ("since", "why"),
    [
        (Position(2, "another-epoch"), "another epoch"),
        (Position(99, ""), "ahead of the stream"),
        (Position(1, ""), "fallen out of history (size 5, 8 published)"),
    ],
)
async def test_since_that_history_cannot_cover_gets_gap_then_live(
    recovery: Recovery, broker: ScriptedBroker, since: Position, why: str
) -> None:
    positions = [broker.append() for _ in range(8)]
    epoch = positions[0].epoch
    since = since if since.epoch else Position(since.offset, epoch)
    c = conn()
    recovery.listen(c, T, RULE, since)
    await settle()
    live(recovery, broker.append())
    assert c.kinds() == ["GAP history_lost", "MESSAGE"], why
    assert c.offsets() == [9]


async def test_since_on_a_topic_without_history_gets_gap_after_the_response(recovery: Recovery) -> None:
    c = conn()
    plain = Topic("channel:update.1")
    recovery.listen(c, plain, PLAIN, Position(3, "x"))
    assert c.got == []  # the RESPONSE goes first
    await settle()
    assert c.got == [{"type": "GAP", "data": {"topics": [plain], "reason": "history_lost"}}]


async def test_a_hole_in_the_live_stream_is_filled_from_history(recovery: Recovery, broker: ScriptedBroker) -> None:
    c = conn()
    recovery.listen(c, T, RULE, None)
    await settle()
    p1, p2, p3 = broker.append(), broker.append(), broker.append()
    live(recovery, p1)
    broker.gate = asyncio.Event()
    assert live(recovery, p3) == 0  # 2 was missed: 3 waits for the read
    p4 = broker.append()
    live(recovery, p4)
    broker.gate.set()
    await settle()
    assert c.offsets() == [1, 2, 3, 4]
    assert p2.offset == 2


async def test_after_a_broker_gap_the_missed_publications_are_recovered(
    recovery: Recovery, broker: ScriptedBroker
) -> None:
    c = conn()
    recovery.listen(c, T, RULE, None)
    await settle()
    live(recovery, broker.append())
    broker.append(), broker.append()  # 2, 3 published while this instance was not subscribed
    broker.gate = asyncio.Event()
    recovery.on_gap()
    live(recovery, broker.append())  # 4 arrives after resubscribing, before the read is back
    broker.gate.set()
    await settle()
    assert c.offsets() == [1, 2, 3, 4]
    assert "GAP history_lost" not in c.kinds()


async def test_a_new_epoch_starting_at_one_is_not_a_loss(recovery: Recovery, broker: ScriptedBroker) -> None:
    c = conn()
    recovery.listen(c, T, RULE, None)
    await settle()
    live(recovery, broker.append())
    assert recovery.on_publication(T, "fresh", 1, "new-epoch") == 1
    assert c.kinds() == ["MESSAGE", "MESSAGE"]


async def test_reads_that_keep_failing_end_in_gap(recovery: Recovery, broker: ScriptedBroker) -> None:
    positions = [broker.append() for _ in range(3)]
    broker.failures = MAX_ATTEMPTS
    c = conn()
    recovery.listen(c, T, RULE, positions[0])
    for _ in range(50):
        await asyncio.sleep(0.01)
        if c.got:
            break
    assert c.kinds() == ["GAP history_lost"]
    live(recovery, broker.append())
    assert c.offsets() == [4]


async def test_a_read_that_fails_once_is_retried(recovery: Recovery, broker: ScriptedBroker) -> None:
    positions = [broker.append() for _ in range(3)]
    broker.failures = 1
    c = conn()
    recovery.listen(c, T, RULE, positions[0])
    for _ in range(20):
        await asyncio.sleep(0.01)
        if c.got:
            break
    assert c.offsets() == [2, 3]


async def test_unlisten_while_waiting_sends_nothing_and_forgets_the_topic(
    recovery: Recovery, broker: ScriptedBroker
) -> None:
    positions = [broker.append() for _ in range(3)]
    broker.gate = asyncio.Event()
    c = conn()
    recovery.listen(c, T, RULE, positions[0])
    await settle()
    recovery.unlisten(c, T)
    assert T not in recovery
    broker.gate.set()
    await settle()
    assert c.got == []


def test_memory_history_keeps_the_last_size_and_expires() -> None:
    now = [0.0]
    store = MemoryHistory(clock=lambda: now[0])
    for i in range(1, 8):
        assert store.append("t.a", f"m{i}", size=3, ttl=10).offset == i
    page = store.read("t.a", since=0, limit=10, size=3, ttl=10)
    assert [p.offset for p in page.publications] == [5, 6, 7]
    assert (page.offset, page.first) == (7, 5)
    assert [p.offset for p in store.read("t.a", since=5, limit=1, size=3, ttl=10).publications] == [6]
    epoch = page.epoch
    now[0] = 10.5
    page = store.read("t.a", since=0, limit=10, size=3, ttl=10)
    assert (page.offset, page.epoch, page.first, page.publications) == (0, "", 1, [])  # no history
    assert len(store) == 0  # a read creates nothing
    fresh = store.append("t.a", "x", size=3, ttl=10)
    assert fresh.offset == 1 and fresh.epoch not in ("", epoch)
    now[0] = 30
    store.append("t.b", "x", size=3, ttl=10)
    assert len(store) == 1  # t.a expired, dropped when t.b was published


def test_history_page_covers() -> None:
    page = HistoryPage([], offset=10, epoch="e", first=6)
    assert page.covers(Position(5, "e")) and page.covers(Position(10, "e"))
    assert not page.covers(Position(4, "e"))
    assert not page.covers(Position(11, "e"))
    assert not page.covers(Position(7, "f"))
    assert not page.covers(Position(0, "e"))  # offset 0: from the first publication, which is gone
    assert HistoryPage([], offset=10, epoch="e", first=1).covers(Position(0, "another"))


async def test_resumers_after_a_read_are_served_from_the_recent_page(
    recovery: Recovery, broker: ScriptedBroker
) -> None:
    positions = [broker.append(f"m{i}") for i in range(1, 5)]
    first = conn()
    recovery.listen(first, T, RULE, positions[0])
    await settle()
    assert first.offsets() == [2, 3, 4] and len(broker.reads) == 1
    p5 = broker.append("m5")
    live(recovery, p5, "m5")  # extends the recent page
    late = [conn() for _ in range(5)]
    for c in late:
        recovery.listen(c, T, RULE, positions[1])  # saw 2
    assert all(c.got == [] for c in late)  # after the RESPONSE
    live(recovery, broker.append("m6"), "m6")  # arrives before the page is served: merged
    await settle()
    assert len(broker.reads) == 1  # no read of their own
    assert all(c.offsets() == [3, 4, 5, 6] for c in late)
    assert [m["data"]["message"] for m in late[0].got] == ["m3", "m4", "m5", "m6"]


async def test_a_broker_gap_forgets_recent_pages(recovery: Recovery, broker: ScriptedBroker) -> None:
    positions = [broker.append() for _ in range(3)]
    recovery.listen(conn(), T, RULE, positions[0])
    await settle()
    recovery.on_gap()
    await settle()
    reads = len(broker.reads)
    recovery.listen(conn(), T, RULE, positions[0])
    await settle()
    assert len(broker.reads) == reads + 1


def test_recent_pages_are_bounded_in_time_and_count() -> None:
    now = [0.0]
    pages = RecentPages(seconds=10, max_publications=5, clock=lambda: now[0])
    items = [Publication(i, f"m{i}") for i in range(1, 4)]
    pages.put("a", "e", items, size=3)
    assert pages.page("a", Position(1, "e")) == HistoryPage(items[1:], 3, "e", 1)
    assert pages.page("a", Position(0, "e")) == HistoryPage(items, 3, "e", 1)
    assert pages.page("a", Position(1, "x")) is None  # another epoch
    assert pages.page("a", Position(4, "e")) is None  # ahead
    pages.extend("a", 4, "m4")  # size 3: 2..4
    assert pages.page("a", Position(0, "e")) is None and len(pages) == 3
    pages.extend("a", 6, "m6")  # not the next offset: the page is dropped
    assert pages.page("a", Position(3, "e")) is None and len(pages) == 0
    pages.put("a", "e", items, size=3)
    now[0] = 5
    pages.put("b", "e", items, size=3)  # 6 > 5: the oldest page goes
    assert pages.page("a", Position(1, "e")) is None and len(pages) == 3
    now[0] = 16
    assert pages.page("b", Position(1, "e")) is None  # expired


async def test_a_broker_gap_during_a_read_that_learns_the_position_is_announced(
    recovery: Recovery, broker: ScriptedBroker
) -> None:
    broker.append()
    broker.failures = 1  # the read that learns the position fails once: out when the gap comes
    c = conn()
    recovery.listen(c, T, RULE, None)
    await settle()
    recovery.on_gap()  # this instance may have missed publications for c, and knows no offset
    for _ in range(20):
        await asyncio.sleep(0.01)
        if c.got:
            break
    assert c.kinds() == ["GAP broker_reconnected"]


async def test_connections_left_for_the_next_read_are_served_when_a_read_gives_up(
    recovery: Recovery, broker: ScriptedBroker
) -> None:
    positions = [broker.append() for _ in range(4)]
    broker.gate = asyncio.Event()
    first, second = conn(), conn()
    recovery.listen(first, T, RULE, positions[2])  # saw 3: the read is after 3
    recovery.listen(second, T, RULE, positions[0])  # saw 1: not covered, left for the next read
    await settle()
    broker.failures = MAX_ATTEMPTS  # the gap makes it read again, and every retry fails
    recovery.on_gap()
    broker.gate.set()
    for _ in range(100):
        await asyncio.sleep(0.01)
        if second.got:
            break
    assert first.kinds() == ["GAP history_lost"]
    assert second.offsets() == [2, 3, 4]  # not left waiting for a read that nobody starts
    live(recovery, broker.append())
    assert first.offsets() == [5] and second.offsets() == [2, 3, 4, 5]


async def test_a_full_buffer_loses_no_live_publication_for_listeners(
    recovery: Recovery, broker: ScriptedBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("realtime.recovery.MAX_BUFFER", 3)
    old = broker.append()
    listener = conn()
    recovery.listen(listener, T, RULE, None)
    await settle()
    broker.gate = asyncio.Event()
    waiting = conn()
    recovery.listen(waiting, T, RULE, Position(0, old.epoch))  # a read out while 2..5 arrive live
    await settle()
    for _ in range(4):
        live(recovery, broker.append())  # 5 overflows the buffer: the read gives up
    live(recovery, broker.append())
    assert listener.offsets() == [2, 3, 4, 5, 6]
    assert "GAP history_lost" not in listener.kinds()
    assert waiting.kinds() == ["GAP history_lost", "MESSAGE", "MESSAGE"]
    assert waiting.offsets() == [5, 6]  # the live stream after the GAP has no hole


async def test_a_read_that_finds_publications_never_delivered_live_catches_listeners_up(
    recovery: Recovery, broker: ScriptedBroker
) -> None:
    listener = conn()
    recovery.listen(listener, T, RULE, None)
    await settle()
    p1 = broker.append()
    live(recovery, p1)
    broker.append()  # 2 is in history but never reached this instance live (e.g. an envelope it could not decode)
    waiting = conn()
    recovery.listen(waiting, T, RULE, Position(0, p1.epoch))  # a read that sees 2
    await settle()
    live(recovery, broker.append())
    assert waiting.offsets() == [1, 2, 3]
    assert listener.offsets() == [1, 2, 3]  # 2 is not skipped for those already listening


async def test_a_read_that_fails_unexpectedly_leaves_nobody_waiting(
    recovery: Recovery, broker: ScriptedBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    positions = [broker.append() for _ in range(3)]
    read = broker.history

    async def broken(topic: str, *, since: int, limit: int, rule: TopicRule) -> HistoryPage:
        monkeypatch.setattr(broker, "history", read)
        raise ValueError("an answer this version cannot parse")

    monkeypatch.setattr(broker, "history", broken)
    c = conn()
    recovery.listen(c, T, RULE, positions[0])
    await settle()
    assert c.kinds() == ["GAP history_lost"]  # not left outside the index for ever
    live(recovery, broker.append())
    assert c.offsets() == [4]


async def test_a_raw_publication_with_an_offset_on_a_topic_without_history_is_delivered() -> None:
    from realtime.broker import MemoryBroker
    from realtime.node import Node
    from realtime.protocol import Listen
    from topics import load_policy

    node = Node(broker=MemoryBroker(), policy=load_policy(None), verify=lambda token: cast(Any, None))
    c = conn()
    plain = Topic("channel:update.1")
    assert node.listen(c, [Listen(plain, PLAIN, None)], b"")
    # a service forwarding a MESSAGE's data with a raw PUBLISH: the envelope is valid
    node.on_publication(plain, "hello", 7, "some-epoch")
    assert c.got == [{"type": "MESSAGE", "data": {"topic": plain, "message": "hello"}}]


async def test_a_topic_without_history_yet_is_learned_as_empty_and_caught_up_from_one(
    recovery: Recovery, broker: ScriptedBroker
) -> None:
    """Reads create nothing: a never-published topic reads as offset 0, epoch "". Its first
    publication arriving during that read is no reset, and after a broker gap the listeners
    get everything from offset 1."""
    broker.gate = asyncio.Event()
    c = conn()
    recovery.listen(c, T, RULE, None)
    await settle()  # the learning read is out and saw no history
    p1 = broker.append("m1")
    live(recovery, p1, "m1")
    broker.gate.set()
    await settle()
    assert c.kinds() == ["MESSAGE"]
    broker.gate = None
    broker.append("m2"), broker.append("m3")  # missed while unsubscribed
    recovery.on_gap()
    await settle()
    assert c.offsets() == [1, 2, 3] and "GAP history_lost" not in c.kinds()
    resumer = conn()
    recovery.listen(resumer, T, RULE, Position(0, ""))  # "from the first publication"
    await settle()
    assert resumer.offsets() == [1, 2, 3]


async def test_learning_reads_are_budgeted_and_past_it_the_first_publication_teaches(
    broker: ScriptedBroker,
) -> None:
    """A client LISTENing to ever new topics cannot turn its LISTENs into Redis calls past the
    instance's learning budget; such a topic learns its position from its first publication."""
    recovery = Recovery(cast(Any, broker), TopicIndex(), retry_delay=0.001, learn_rate=2)
    conns = [conn() for _ in range(10)]
    for i, c in enumerate(conns):
        recovery.listen(c, Topic(f"dream:update.n{i}"), RULE, None)
    await settle()
    assert len(broker.reads) == 4  # the burst: twice the rate
    assert recovery.stats.unlearned == 6
    assert recovery.on_publication("dream:update.n9", "first", 3, "e") == 1  # no read: taken as is
    assert recovery.on_publication("dream:update.n9", "next", 4, "e") == 1
    assert conns[9].offsets() == [3, 4]
