"""Unit tests of held LISTENs (realtime/held_listens.py)."""

from __future__ import annotations

from realtime.held_listens import HeldListens
from realtime.protocol import Listen
from topics import DEFAULT_POLICY, Topic

RULE = DEFAULT_POLICY.rules["channel:update"]


def items(*names: str) -> list[Listen]:
    return [Listen(Topic(n), RULE, None) for n in names]


def test_a_listen_is_answered_once_all_its_topics_are_received() -> None:
    held: HeldListens[str] = HeldListens()
    held.hold("c1", b"r1", items("channel:update.a", "channel:update.b"), {"channel:update.a", "channel:update.b"})
    held.hold("c2", b"r2", items("channel:update.a"), {"channel:update.a"})
    assert held.ready(["channel:update.b"]) == []
    done = held.ready(["channel:update.a"])
    assert [(h.conn, h.reply) for h in done] == [("c1", b"r1"), ("c2", b"r2")]
    assert list(done[0].topics) == ["channel:update.a", "channel:update.b"]
    assert len(held) == 0


def test_unlisten_of_the_last_waited_topic_answers_and_close_forgets() -> None:
    held: HeldListens[str] = HeldListens()
    held.hold("c1", b"r1", items("channel:update.a", "channel:update.b"), {"channel:update.b"})
    was_held, complete = held.drop("c1", Topic("channel:update.b"))
    assert was_held and complete is not None and list(complete.topics) == ["channel:update.a"]
    assert held.drop("c1", Topic("channel:update.a")) == (False, None)  # answered: recovery has it
    held.hold("c2", b"r2", items("channel:update.c"), {"channel:update.c"})
    held.forget("c2")
    held.forget_topic("channel:update.c")
    assert held.ready(["channel:update.c"]) == [] and len(held) == 0
