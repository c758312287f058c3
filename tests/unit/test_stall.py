"""Unit tests of the registry of pending sockets (:mod:`realtime.stall`) on a fake clock, and of
its settings' ranges; no sockets. Against real sockets: tests/integration/test_stalled_sockets.py."""

from __future__ import annotations

import pytest

from realtime.errors import SettingsError
from realtime.settings import Settings
from realtime.stall import BODY, StallGuard


async def test_stall_guard_sweeps_in_order_and_sheds_the_oldest() -> None:
    """The registry alone (no sockets): deadlines, the per-address cap, the fd budget."""
    now = [100.0]

    class Key:
        aborted = False

        def abort(self) -> None:
            self.aborted = True

    guard = StallGuard(head_timeout=10, body_timeout=30, max_per_ip=2, clock=lambda: now[0])
    a, b, c, d = Key(), Key(), Key(), Key()
    guard.accepted(a, "1.1.1.1")
    now[0] += 1
    guard.accepted(b, "1.1.1.1")
    expired: list[str] = []
    guard.waiting(c, "2.2.2.2", BODY, lambda: expired.append("c"))
    e = Key()
    guard.accepted(e, "1.1.1.1")  # over the cap, but a and b are fresh (under PER_IP_GRACE)
    assert guard.pending_from("1.1.1.1") == 3 and not a.aborted
    guard.done(e)
    now[0] += 1
    guard.accepted(d, "1.1.1.1")  # over the cap of 2: the address's oldest (a) goes
    assert a.aborted and not b.aborted and guard.pending_from("1.1.1.1") == 2
    now[0] = 111.5  # b's deadline (111) passed, d's (112) not
    guard.sweep()
    assert b.aborted and not d.aborted and expired == []
    now[0] = 131.0
    guard.sweep()
    assert expired == ["c"] and not c.aborted and d.aborted and guard.pending() == 0
    assert guard.closed == {"per_ip": 1, "head_timeout": 2, "body_timeout": 1}

    guard = StallGuard(head_timeout=10, body_timeout=30, max_per_ip=0, clock=lambda: now[0])
    guard.limit_descriptors(100, 20)  # budget: 100 - 20 - 32 reserved = 48
    assert guard.budget == 48
    keys = [Key() for _ in range(49)]
    for key in keys:
        guard.accepted(key, "3.3.3.3")
        now[0] += 0.01
    assert [k.aborted for k in keys].count(True) == 1 and keys[0].aborted
    guard.stop()


async def test_the_per_address_cap_sheds_that_address_oldest_across_phases() -> None:
    """Older sockets of other addresses are never shed for one address's cap, and a socket
    that moved to another phase counts from its move (the address's own order)."""
    now = [0.0]

    class Key:
        aborted = False

        def abort(self) -> None:
            self.aborted = True

    guard = StallGuard(head_timeout=100, body_timeout=100, max_per_ip=2, clock=lambda: now[0])
    others = [Key() for _ in range(500)]
    for i, key in enumerate(others):
        guard.accepted(key, f"10.0.{i // 250}.{i % 250}")
    now[0] = 5.0
    first, second = Key(), Key()
    guard.accepted(first, "9.9.9.9")
    now[0] = 6.0
    guard.accepted(second, "9.9.9.9")
    now[0] = 8.0
    guard.waiting(first, "9.9.9.9", BODY)  # its head arrived: it waits for a body from now
    now[0] = 10.0
    guard.accepted(Key(), "9.9.9.9")  # at the cap: the address's oldest is second (6.0), not first (8.0)
    assert second.aborted and not first.aborted and not any(k.aborted for k in others)
    assert guard.pending_from("9.9.9.9") == 2 and guard.pending() == 502
    guard.stop()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HTTP_HEAD_TIMEOUT", "0"),
        ("HTTP_BODY_TIMEOUT", "-1"),
        ("HTTP_KEEPALIVE_TIMEOUT", "0"),
        ("MAX_PENDING_PER_IP", "-1"),
    ],
)
def test_settings_out_of_range_are_refused(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})
