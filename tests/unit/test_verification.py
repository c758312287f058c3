"""Unit tests of what a token check may cost (:mod:`realtime.verification`): no I/O, a fake clock."""

from __future__ import annotations

from realtime.verification import BadTokens, TokenChecks


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bad_tokens_are_remembered_by_hash_for_a_while() -> None:
    clock = Clock()
    bad = BadTokens(size=10, ttl=60, clock=clock)
    assert bad.reason("a.b.c") is None
    bad.add("a.b.c", "invalid token: InvalidSignatureError")
    assert bad.reason("a.b.c") == "invalid token: InvalidSignatureError"
    assert bad.reason("a.b.d") is None
    assert "a.b.c" not in str(bad._entries)  # only a digest is kept, not the token
    clock.now += 60
    assert bad.reason("a.b.c") is None  # forgotten after ttl seconds
    assert len(bad) == 0


def test_bad_tokens_are_bounded_oldest_first() -> None:
    bad = BadTokens(size=3, ttl=60, clock=Clock())
    for token in ("t1", "t2", "t3", "t4"):
        bad.add(token, token)
    assert len(bad) == 3
    assert [bad.reason(t) for t in ("t1", "t2", "t3", "t4")] == [None, "t2", "t3", "t4"]
    bad.add("t2", "again")  # re-adding moves it to the newest end
    bad.add("t5", "t5")
    assert bad.reason("t3") is None and bad.reason("t2") == "again"


def test_connection_budget_then_refill() -> None:
    clock = Clock()
    checks = TokenChecks(rate_per_connection=1.0, burst_per_connection=2, clock=clock)
    assert [checks.admit("c1", "1.2.3.4") for _ in range(3)] == [True, True, False]
    assert checks.admit("c2", "1.2.3.4")  # another connection has its own budget
    clock.now += 1.0
    assert checks.admit("c1", "1.2.3.4")


def test_address_budget_is_shared_and_refunds_the_connection() -> None:
    clock = Clock()
    checks = TokenChecks(
        rate_per_address=1.0, burst_per_address=3, rate_per_connection=1.0, burst_per_connection=2, clock=clock
    )
    assert [checks.admit(c, "ip") for c in ("c1", "c2", "c3", "c4")] == [True, True, True, False]
    assert checks.admit("c5", "other-ip")
    clock.now += 1.0
    assert checks.admit("c4", "ip")  # c4's refused attempt did not cost its own budget...
    assert not checks.admit("c4", "ip")  # ...but the address is spent again


def test_unlimited_by_default_and_never_closes() -> None:
    checks = TokenChecks()
    assert all(checks.admit("c", "ip") for _ in range(1000))
    assert not any(checks.failed("c") for _ in range(1000))


def test_failures_in_a_row_close_once_and_success_resets() -> None:
    checks = TokenChecks(max_failures=3)
    assert [checks.failed("c") for _ in range(2)] == [False, False]
    checks.succeeded("c")
    assert [checks.failed("c") for _ in range(4)] == [False, False, True, False]  # True exactly once
    checks.forget("c")
    assert len(checks) == 0
    checks.succeeded("unknown")  # no state is created for a connection that never failed
    assert len(checks) == 0
