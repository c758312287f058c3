"""Unit tests of the node's named parts: counters (:mod:`realtime.stats`), per-user slots
(:mod:`realtime.user_slots`), the grant-expiry heap (:mod:`realtime.grant_expiry`), the
verified-token cache and the shared backoff. No sockets; the expiry clock is injected."""

from __future__ import annotations

import asyncio

import pytest

from keys import Grant
from realtime.backoff import backoff_delay
from realtime.grant_expiry import GrantExpiry
from realtime.stats import BrokerStats, NodeStats
from realtime.user_slots import UserSlots
from realtime.verification import VerifiedTokens


def test_node_stats_count_through_their_owner_and_read_only_views() -> None:
    stats = NodeStats()
    stats.count_published()
    stats.count_delivered(50)
    stats.count_delivered(3)
    stats.count_refusal("ERR_BADAUTH")
    stats.count_refusal("ERR_BADAUTH")
    stats.count_handshake(101)
    stats.count_gap()
    stats.count_revocation()
    stats.count_slow_consumer()
    assert (stats.published, stats.delivered, stats.gaps, stats.revocations, stats.slow_consumers) == (1, 53, 1, 1, 1)
    assert stats.refusals == {"ERR_BADAUTH": 2} and stats.handshakes == {101: 1}
    with pytest.raises(TypeError):
        stats.refusals["ERR_BADAUTH"] = 0  # type: ignore[index]
    with pytest.raises(AttributeError):
        stats.published = 5  # type: ignore[misc]


def test_broker_stats() -> None:
    stats = BrokerStats()
    stats.count_reconnect()
    stats.count_stall()
    assert stats.count_invalid_envelope() == 1 and stats.count_invalid_envelope() == 2
    assert (stats.reconnects, stats.stalls, stats.invalid_envelopes) == (1, 1, 2)


def test_user_slots_bound_connections_per_user() -> None:
    slots: UserSlots[str] = UserSlots(2)
    assert slots.admit("c1", "u") and slots.admit("c2", "u")
    assert slots.admit("c1", "u")  # holds one already
    assert not slots.admit("c3", "u")
    assert slots.admit("c3", "other")
    assert sorted(slots.holders("u")) == ["c1", "c2"]
    slots.release("c1", "u")
    assert slots.admit("c3", "u")
    slots.release_all("c3")
    assert slots.holders("other") == [] and sorted(slots.holders("u")) == ["c2"]
    slots.release("c9", "nobody")  # nothing held: nothing happens


def test_user_slots_without_a_limit_still_track_holders() -> None:
    slots: UserSlots[int] = UserSlots()
    assert all(slots.admit(n, "u") for n in range(100))
    assert len(slots.holders("u")) == 100


async def _turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_grant_expiry_wakes_each_key_at_its_earliest_expiry() -> None:
    now = 1000.0
    due: list[tuple[str, float]] = []
    upcoming: dict[str, float | None] = {"a": 1010.0, "b": None}

    def on_due(key: str, at: float) -> float | None:
        due.append((key, at))
        return upcoming.pop(key, None)

    expiry: GrantExpiry[str] = GrantExpiry(on_due, clock=lambda: now)
    expiry.schedule("a", 1005.0)
    expiry.schedule("a", 1009.0)  # later than the one scheduled: ignored
    expiry.schedule("b", 1001.0)
    expiry.schedule("b", 1000.5)  # earlier: supersedes
    assert len(expiry) == 2
    await _turns()
    assert due == []
    now = 1006.0
    expiry._arm()  # as the timer would after the time passed
    await _turns()
    assert due == [("b", 1006.0), ("a", 1006.0)]
    assert len(expiry) == 1  # a's next expiry (1010) is scheduled, b has none
    expiry.close()


async def test_grant_expiry_forgets_keys_and_compacts_its_heap() -> None:
    due: list[int] = []
    expiry: GrantExpiry[int] = GrantExpiry(lambda key, at: due.append(key), clock=lambda: 0.0)
    for key in range(200):
        expiry.schedule(key, 100.0 + key)
    for key in range(190):
        expiry.forget(key)
    assert len(expiry) == 10 and expiry.entries <= 2 * len(expiry) + 64
    expiry.close()
    assert due == []


def test_verified_tokens_expire_and_forget_the_oldest() -> None:
    cache = VerifiedTokens(size=2)

    def grant(jti: str, exp: float) -> Grant:
        return Grant(sub="7", scopes=frozenset(), exp=exp, jti=jti, kid="k")

    cache.add("a", grant("a", 100.0))
    cache.add("b", grant("b", 200.0))
    assert cache.get("a", 50.0) is not None and cache.get("a", 100.0) is None  # expired at exp
    cache.add("c", grant("c", 300.0))
    assert cache.get("a", 0.0) is None and cache.get("b", 0.0) is not None and len(cache) == 2


def test_backoff_is_shared_capped_and_jittered() -> None:
    assert backoff_delay(0, 1.0, 120.0, lambda: 0.0) == 0.5
    assert backoff_delay(3, 1.0, 120.0, lambda: 1.0) == 8.0
    assert backoff_delay(50, 0.1, 1.0, lambda: 1.0) == 1.0
    assert 0.05 <= backoff_delay(0) <= 0.1  # the Redis supervisor's defaults
