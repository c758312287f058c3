"""What an instance keeps per present connection (issue 18): its entry, not a 4 KB buffer.

orjson returns ``bytes`` in an over-allocated buffer (about 4 KB, whatever the length; orjson
3.13): an entry kept as returned cost ~4.1 KB of RSS per present connection in
``python -m bench.presence`` (7.2 KB per listener with presence on against 3.0 KB off).
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import Callable

from realtime.presence import Presence, PresenceSnapshot, TopicChanges, encode_entry
from topics import TopicRule
from topics.policy import policy_from_mapping

RULE = policy_from_mapping({"topics": {"crowd:room": {"target": "any", "presence": True}}}).rules["crowd:room"]


class Store:
    """A store that takes every batch and keeps nothing."""

    async def apply(self, changes: list[TopicChanges], ttl: float) -> None:
        return None

    async def read(self, topic: str, rule: TopicRule, limit: int) -> PresenceSnapshot:
        return PresenceSnapshot(0, 0, [])


def traced_bytes_per_item(make: Callable[[int], object], count: int = 1000) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [make(i) for i in range(count)]
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(kept) == count
    return used / count


def test_an_encoded_entry_takes_its_length() -> None:
    entry = encode_entry("7", "abcd1234.ab12-1", {"device": "tv"})
    assert entry == b'{"user":"7","client":"abcd1234.ab12-1","info":{"device":"tv"}}'
    per_entry = traced_bytes_per_item(lambda i: encode_entry(None, f"abcd1234.ab12-{i}", None))
    assert per_entry < 200, per_entry


async def test_a_present_connection_costs_well_under_a_kilobyte() -> None:
    presence = Presence(Store(), ttl=300)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(2000):
            presence.join("crowd:room.all", RULE, presence.client_id(f"ab12-{i}"), None, {"device": "tv"})
        for _ in range(5):  # the batch is written: what stays is the local entries
            await asyncio.sleep(0)
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        await presence.close()
    assert used / 2000 < 600, used / 2000
