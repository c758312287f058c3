"""Unit tests of the per-topic channel bookkeeping (realtime/topic_subscriptions.py)."""

from __future__ import annotations

from realtime.redis_functions import topic_channel
from realtime.topic_subscriptions import TopicSubscriptions


def test_channel_names_match_the_key_layout() -> None:
    subs = TopicSubscriptions("rt")
    assert subs.channel_of("dream:update.a") == topic_channel("rt", "dream:update.a").encode() == b"rt:{dream:update.a}"
    assert subs.topic_of(b"rt:{dream:update.a}") == "dream:update.a"
    assert subs.topic_of(b"rt") is None and subs.topic_of(b"rt:control") is None and subs.topic_of(b"x:{a}") is None


def test_a_link_subscribes_what_is_wanted_and_diffs_per_pass() -> None:
    subs = TopicSubscriptions("rt")
    subs.want("a")
    assert subs.begin_link() == [b"rt:{a}"]
    assert not subs.receiving("a")
    subs.link_opened()
    assert subs.receiving("a")
    subs.want("b")
    subs.want("c")
    subs.unwant("a")
    added, removed = subs.changes()
    assert sorted(added) == [b"rt:{b}", b"rt:{c}"] and removed == [b"rt:{a}"]
    assert not subs.receiving("a") and not subs.receiving("b")
    assert subs.changes() == ([], [])  # counted as written
    assert subs.confirm(b"rt:{b}") == "b" and subs.receiving("b")
    assert subs.confirm(b"rt:{a}") is None  # unsubscribed meanwhile
    assert subs.confirm(b"rt") is None


def test_unwant_then_want_in_one_pass_keeps_the_subscription() -> None:
    subs = TopicSubscriptions("rt")
    subs.want("a")
    subs.begin_link()
    subs.link_opened()
    subs.unwant("a")
    subs.want("a")
    assert subs.changes() == ([], []) and subs.receiving("a")


def test_a_lost_link_names_the_topics_still_waiting() -> None:
    subs = TopicSubscriptions("rt")
    subs.want("a")
    subs.begin_link()
    subs.link_opened()
    subs.want("b")
    subs.changes()
    assert subs.link_lost() == ["b"]
    assert not subs.receiving("a")
    assert sorted(subs.begin_link()) == [b"rt:{a}", b"rt:{b}"]
