"""Unit tests of the limits (:mod:`realtime.limits`): token buckets, the connection limiter and
``client_ip``; no I/O, a fake clock. On a real app: tests/integration/test_limits.py."""

from __future__ import annotations

import pytest

from realtime.limits import ConnectionLimiter, KeyedBuckets, TokenBucket, client_ip


def test_token_bucket() -> None:
    now = [0.0]
    bucket = TokenBucket(2.0, 3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] = 0.5
    assert bucket.take() and not bucket.take()
    now[0] = 100.0
    assert bucket.full()


def test_keyed_buckets_are_independent() -> None:
    buckets = KeyedBuckets(1.0, 1, clock=lambda: 0.0)
    assert buckets.take("a") and not buckets.take("a") and buckets.take("b")


def test_connection_limiter() -> None:
    limiter = ConnectionLimiter(max_per_ip=2, attempts_per_second=0, burst=1)
    assert limiter.admit("1.1.1.1") is None and limiter.admit("1.1.1.1") is None
    refused = limiter.admit("1.1.1.1")
    assert refused is not None and "at most 2" in refused
    assert limiter.admit("2.2.2.2") is None
    limiter.release("1.1.1.1")
    assert limiter.admit("1.1.1.1") is None
    assert limiter.open_count("1.1.1.1") == 2


def test_connection_attempts_refill_at_their_rate() -> None:
    """What the app test cannot show without waiting: refused attempts come back at the rate,
    a refused attempt holds no slot, and each address has its own budget."""
    now = [0.0]
    limiter = ConnectionLimiter(max_per_ip=0, attempts_per_second=0.1, burst=2, clock=lambda: now[0])
    assert limiter.admit("1.1.1.1") is None and limiter.admit("1.1.1.1") is None
    refused = limiter.admit("1.1.1.1")
    assert refused is not None and "slow down" in refused
    assert limiter.open_count("1.1.1.1") == 2 and limiter.admit("2.2.2.2") is None
    now[0] = 9.9
    assert limiter.admit("1.1.1.1") is not None  # 0.99 of an attempt earned: still refused
    now[0] = 10.0
    assert limiter.admit("1.1.1.1") is None  # one attempt every 10 s
    assert limiter.admit("1.1.1.1") is not None


@pytest.mark.parametrize(
    ("header", "headers", "expected"),
    [
        ("", {"X-Forwarded-For": "6.6.6.6", "Fly-Client-IP": "7.7.7.7"}, "10.0.0.1"),
        ("Fly-Client-IP", {"Fly-Client-IP": "7.7.7.7"}, "7.7.7.7"),
        ("X-Forwarded-For", {"X-Forwarded-For": "6.6.6.6, 8.8.8.8"}, "8.8.8.8"),
        ("X-Forwarded-For", {}, "10.0.0.1"),
    ],
)
def test_client_ip_honours_headers_only_when_configured(header: str, headers: dict[str, str], expected: str) -> None:
    assert client_ip("10.0.0.1", headers, header) == expected
