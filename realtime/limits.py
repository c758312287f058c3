"""Rate limits and client addresses: pure logic, no I/O."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping


class TokenBucket:
    """A token bucket: ``rate`` tokens per second, at most ``burst`` saved up.

    Used for LISTEN/UNLISTEN per connection and connection attempts per IP.
    """

    __slots__ = ("_burst", "_clock", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        """Args:
        rate: tokens added per second.
        burst: bucket size (and initial fill).
        clock: monotonic clock in seconds.
        """
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._tokens = burst
        self._stamp = clock()

    def take(self) -> bool:
        """Take one token; ``False`` when the bucket is empty (the caller is over the rate)."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def refund(self) -> None:
        """Give one token back (an attempt that should not count, e.g. a successful login)."""
        self._tokens = min(self._burst, self._tokens + 1.0)

    def full(self) -> bool:
        """``True`` when the bucket would be full now (an idle key that can be forgotten)."""
        return self._tokens + (self._clock() - self._stamp) * self._rate >= self._burst


class KeyedBuckets:
    """One :class:`TokenBucket` per key (e.g. per client IP), forgetting idle keys."""

    __slots__ = ("_buckets", "_burst", "_clock", "_rate")

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate, self._burst, self._clock = rate, burst, clock
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, key: str) -> bool:
        """Take one token from ``key``'s bucket."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) > 10_000:
                self._buckets = {k: b for k, b in self._buckets.items() if not b.full()}
            bucket = self._buckets[key] = TokenBucket(self._rate, self._burst, self._clock)
        return bucket.take()

    def refund(self, key: str) -> None:
        """Give one token back to ``key``'s bucket."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.refund()


class ConnectionLimiter:
    """Open connections per client IP, and connection attempts per IP per second."""

    __slots__ = ("_attempts", "_max_per_ip", "_open")

    def __init__(
        self,
        *,
        max_per_ip: int,
        attempts_per_second: float,
        burst: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Args:
        max_per_ip: open connections allowed per IP (0: no limit).
        attempts_per_second: new connections per IP per second (0: no limit).
        burst: attempts allowed at once before the rate applies.
        clock: monotonic clock in seconds.
        """
        self._max_per_ip = max_per_ip
        self._attempts = KeyedBuckets(attempts_per_second, burst, clock) if attempts_per_second > 0 else None
        self._open: dict[str, int] = {}

    def admit(self, ip: str) -> str | None:
        """Count a new connection from ``ip``; returns why it is refused, or ``None``.

        Call :meth:`release` once for every admitted connection when it closes.
        """
        if self._attempts is not None and not self._attempts.take(ip):
            return "too many connection attempts from this address; slow down"
        count = self._open.get(ip, 0)
        if self._max_per_ip and count >= self._max_per_ip:
            return f"too many connections from this address (at most {self._max_per_ip})"
        self._open[ip] = count + 1
        return None

    def release(self, ip: str) -> None:
        """Forget one closed connection from ``ip``."""
        count = self._open.get(ip, 0) - 1
        if count > 0:
            self._open[ip] = count
        else:
            self._open.pop(ip, None)

    def open_count(self, ip: str) -> int:
        """Open connections from ``ip``."""
        return self._open.get(ip, 0)


def client_ip(peer: str | None, headers: Mapping[str, str], trusted_header: str) -> str:
    """The client's IP address.

    Args:
        peer: the socket peer address.
        headers: the request headers.
        trusted_header: ``""`` (use the peer address), ``"Fly-Client-IP"`` (use its value)
            or ``"X-Forwarded-For"`` (use its last entry: the address our proxy saw).
            Only set it when a proxy you control always sets that header.

    Returns:
        The address, or ``"unknown"``.
    """
    if trusted_header:
        value = headers.get(trusted_header, "")
        if value:
            candidate = value.rsplit(",", 1)[-1].strip()
            if candidate:
                return candidate[:64]
    return peer or "unknown"
