"""Unit tests of the revocation table (:mod:`realtime.revocations`): no I/O, explicit times."""

from __future__ import annotations

from keys import Grant
from realtime.errors import RevocationRefused
from realtime.revocations import RevocationTable

T0 = 1_000_000.0


def grant(jti: str = "j", sub: str = "7", iat: float = T0 - 10) -> Grant:
    return Grant(sub=sub, scopes=frozenset(), exp=iat + 3600, jti=jti, kid="k", iat=iat)


def test_by_jti_by_owned_jti_and_by_sub() -> None:
    table = RevocationTable(lifetime=3660)
    assert table.add(jti="admin", sub=None, at=T0, now=T0)
    assert table.add(jti="mine", sub="7", at=T0, now=T0)
    assert table.add(jti=None, sub="9", at=T0, now=T0)
    assert table.covers(grant("admin", "8"))
    assert table.covers(grant("mine", "7")) and not table.covers(grant("mine", "8"))
    assert table.covers(grant("x", "9", iat=T0)) and not table.covers(grant("x", "9", iat=T0 + 0.001))
    assert not table.covers(grant("other", "7"))


def test_entries_live_exactly_the_lifetime_counted_from_the_revocation() -> None:
    table = RevocationTable(lifetime=100)
    table.add(jti="a", sub=None, at=T0, now=T0 + 5)  # applied 5 s after it was made
    table.add(jti=None, sub="7", at=T0 + 50, now=T0 + 50)
    assert table.expire(T0 + 99.9) == 0 and len(table) == 2
    assert table.expire(T0 + 100) == 1 and not table.covers(grant("a", "8"))
    assert table.covers(grant("b", "7", iat=T0 + 40))
    assert table.expire(T0 + 150) == 1 and len(table) == 0
    table.add(jti="future", sub=None, at=T0 + 10_000, now=T0 + 200)  # a skewed clock cannot prolong it
    assert table.expire(T0 + 300) == 1


def test_a_newer_revocation_by_sub_moves_its_cutoff_and_expiry() -> None:
    table = RevocationTable(lifetime=100)
    table.add(jti=None, sub="7", at=T0, now=T0)
    table.add(jti=None, sub="7", at=T0 + 60, now=T0 + 60)
    assert len(table) == 1
    assert table.covers(grant("a", "7", iat=T0 + 30))
    assert table.expire(T0 + 100) == 0  # the first entry's time is up, the newer one holds
    assert table.expire(T0 + 160) == 1


def test_a_full_table_refuses_and_never_evicts() -> None:
    table = RevocationTable(lifetime=100, capacity=3, reserve=1, per_user=10)
    assert table.add(jti="admin", sub=None, at=T0, now=T0)
    assert table.refusal(jti="u1", sub="8", limited=True, now=T0) is None
    table.add(jti="u1", sub="8", at=T0, now=T0)
    refusal = table.refusal(jti="u2", sub="8", limited=True, now=T0)  # the last entry is reserved
    assert isinstance(refusal, RevocationRefused) and refusal.full and "full" in str(refusal)
    assert table.refusal(jti="admin2", sub=None, limited=False, now=T0) is None
    assert table.add(jti="admin2", sub=None, at=T0, now=T0)
    assert table.refusal(jti="admin3", sub=None, limited=False, now=T0) is not None
    assert not table.add(jti="admin3", sub=None, at=T0, now=T0)  # not remembered, nothing evicted
    assert table.covers(grant("admin")) and table.covers(grant("admin2")) and len(table) == 3
    assert table.refusal(jti="admin", sub=None, limited=False, now=T0) is None  # already there
    assert table.refusal(jti=None, sub="8", limited=True, now=T0 + 100) is None  # room again once expired


def test_a_user_has_a_bound_on_own_revocations_but_not_on_by_sub() -> None:
    table = RevocationTable(lifetime=100, capacity=1000, per_user=2)
    for jti in ("a", "b"):
        assert table.refusal(jti=jti, sub="8", limited=True, now=T0) is None
        table.add(jti=jti, sub="8", at=T0, now=T0)
    refusal = table.refusal(jti="c", sub="8", limited=True, now=T0)
    assert refusal is not None and not refusal.full
    assert table.refusal(jti="c", sub="9", limited=True, now=T0) is None  # another user
    assert table.refusal(jti=None, sub="8", limited=True, now=T0) is None
    assert table.refusal(jti="c", sub="8", limited=False, now=T0) is None  # an administrator
    table.expire(T0 + 100)
    assert table.refusal(jti="c", sub="8", limited=True, now=T0 + 100) is None  # counts drop with expiry


def test_stale_heap_entries_stay_bounded() -> None:
    table = RevocationTable(lifetime=100)
    for i in range(10_000):
        table.add(jti=None, sub="7", at=T0 + i * 0.01, now=T0 + i * 0.01)
    assert len(table) == 1
    assert len(table._heap) <= 2 * len(table) + 65
