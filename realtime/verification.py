"""What a LISTEN's token may cost: failed tokens remembered, and budgets of token checks.

Checking a WS token's ES256 signature is the costliest thing a client can ask for with one
frame. Without a bound, a flood of LISTENs with forged tokens (a real ``kid``, a bad
signature) from many connections starves everything else (figures: "Hostile clients" in
docs/benchmarks.md). So:

- :class:`BadTokens`: a token that failed is remembered by its hash for
  :data:`BAD_TOKEN_TTL` seconds (at most :data:`BAD_TOKEN_CACHE_SIZE` of them, oldest
  forgotten first); the same token again is refused without a check.
- :class:`TokenChecks`: every check is taken from two token buckets, one per client address
  and one per connection (``TOKEN_CHECK_RATE_PER_IP`` / ``..._PER_CONNECTION`` and their
  bursts). With either empty the LISTEN is answered ``ERR_RATELIMIT`` without a check
  (:class:`TooManyChecks`). A connection whose LISTENs fail ``MAX_BAD_TOKENS_PER_CONNECTION``
  times in a row (invalid, expired or revoked tokens) is closed with
  :attr:`realtime.disconnect.CloseCode.BAD_TOKENS`.

- :class:`VerifiedTokens`: tokens verified lately are remembered with their grant (at most
  :data:`VERIFIED_CACHE_SIZE`, until they expire), so a reconnect storm with valid tokens
  costs no check and no budget.

Pure logic, no I/O.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

from keys import Grant, InvalidToken
from realtime.limits import KeyedBuckets, TokenBucket

BAD_TOKEN_TTL = 600.0
"""Seconds a failed token is remembered (it can only fail again: a forged signature, an
expiry or a revocation do not heal; "not yet valid" is never remembered)."""
BAD_TOKEN_CACHE_SIZE = 16384
"""Failed tokens remembered at most (~100 bytes each: a 16-byte hash and the reason)."""
VERIFIED_CACHE_SIZE = 4096
"""Verified tokens remembered at most, with their grants."""


class TooManyChecks(InvalidToken):
    """A token that was not checked: the address or connection spent its budget of token
    checks. Answered with ``ERR_RATELIMIT``; the message is safe to show a client."""


class BadTokens:
    """Tokens that failed verification, by hash (BLAKE2b, 16 bytes), each for ``ttl`` seconds,
    at most ``size`` of them (the oldest forgotten first, in O(1))."""

    __slots__ = ("_clock", "_entries", "_size", "_ttl")

    def __init__(
        self,
        *,
        size: int = BAD_TOKEN_CACHE_SIZE,
        ttl: float = BAD_TOKEN_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Args:
        size: most tokens remembered.
        ttl: seconds each is remembered.
        clock: monotonic clock in seconds.
        """
        self._size = size
        self._ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[bytes, tuple[float, str]] = OrderedDict()  # hash -> (forget at, reason)

    def __len__(self) -> int:
        return len(self._entries)

    def reason(self, token: str) -> str | None:
        """Why ``token`` failed, if it failed within ``ttl`` seconds; else ``None``."""
        key = _digest(token)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[key]
            return None
        return entry[1]

    def add(self, token: str, reason: str) -> None:
        """Remember that ``token`` failed with ``reason`` (a message safe to show the client)."""
        entries = self._entries
        key = _digest(token)
        entries.pop(key, None)
        while len(entries) >= self._size:
            entries.popitem(last=False)
        entries[key] = (self._clock() + self._ttl, reason)


class VerifiedTokens:
    """Grants of tokens that passed verification, by token, at most ``size`` of them (the
    oldest forgotten first): reconnect storms reuse tokens, and a signature check is costly.

    FIFO eviction: an ``OrderedDict`` pops its oldest in O(1), where a dict's first key is
    found by skipping every deleted slot before it.
    """

    __slots__ = ("_grants", "_size")

    def __init__(self, size: int | None = None) -> None:
        """Args:
        size: most tokens remembered (default :data:`VERIFIED_CACHE_SIZE`).
        """
        self._size = VERIFIED_CACHE_SIZE if size is None else size
        self._grants: OrderedDict[str, Grant] = OrderedDict()

    def __len__(self) -> int:
        return len(self._grants)

    def get(self, token: str, now: float) -> Grant | None:
        """The grant of ``token`` if it was verified and has not expired at ``now`` (seconds
        since the epoch); else ``None``."""
        grant = self._grants.get(token)
        if grant is None or grant.exp <= now:
            return None
        return grant

    def add(self, token: str, grant: Grant) -> None:
        """Remember that ``token`` verified as ``grant``."""
        grants = self._grants
        if len(grants) >= self._size:
            grants.popitem(last=False)
        grants[token] = grant


def _digest(token: str) -> bytes:
    return hashlib.blake2b(token.encode(), digest_size=16).digest()


class _ConnectionChecks:
    __slots__ = ("bucket", "failures")

    def __init__(self, bucket: TokenBucket | None) -> None:
        self.bucket = bucket
        self.failures = 0


class TokenChecks:
    """Budgets of token checks per client address and per connection, and the count of
    consecutive failed LISTENs per connection.

    A connection's state is created on its first check or failure (most connections LISTEN
    with a token that is already verified and never get one); call :meth:`forget` when it
    closes.
    """

    __slots__ = ("_by_address", "_clock", "_conn_burst", "_conn_rate", "_conns", "_max_failures")

    def __init__(
        self,
        *,
        rate_per_address: float = 0.0,
        burst_per_address: float = 1.0,
        rate_per_connection: float = 0.0,
        burst_per_connection: float = 1.0,
        max_failures: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Args:
        rate_per_address: checks per second per client address (0: no limit).
        burst_per_address: checks an address may make at once.
        rate_per_connection: checks per second per connection (0: no limit).
        burst_per_connection: checks a connection may make at once.
        max_failures: failed LISTENs in a row after which a connection is closed (0: never).
        clock: monotonic clock in seconds.
        """
        self._by_address = KeyedBuckets(rate_per_address, burst_per_address, clock) if rate_per_address > 0 else None
        self._conn_rate = rate_per_connection
        self._conn_burst = burst_per_connection
        self._max_failures = max_failures
        self._clock = clock
        self._conns: dict[Hashable, _ConnectionChecks] = {}

    def _of(self, key: Hashable) -> _ConnectionChecks:
        state = self._conns.get(key)
        if state is None:
            rate = self._conn_rate
            bucket = TokenBucket(rate, self._conn_burst, self._clock) if rate > 0 else None
            state = self._conns[key] = _ConnectionChecks(bucket)
        return state

    def admit(self, key: Hashable, address: str) -> bool:
        """Take one check from connection ``key``'s budget and from ``address``'s;
        ``False`` (nothing taken) when either is spent."""
        bucket = self._of(key).bucket
        if bucket is not None and not bucket.take():
            return False
        by_address = self._by_address
        if by_address is not None and not by_address.take(address):
            if bucket is not None:
                bucket.refund()
            return False
        return True

    def failed(self, key: Hashable) -> bool:
        """Count a LISTEN of ``key`` refused for its token; ``True`` (once) when the connection
        has now failed ``max_failures`` times in a row and must be closed."""
        state = self._of(key)
        state.failures += 1
        return state.failures == self._max_failures

    def succeeded(self, key: Hashable) -> None:
        """A token of ``key`` was accepted: its run of failures ends."""
        state = self._conns.get(key)
        if state is not None:
            state.failures = 0

    def forget(self, key: Hashable) -> None:
        """Drop connection ``key``'s state (it closed)."""
        self._conns.pop(key, None)

    def __len__(self) -> int:
        """Connections with state."""
        return len(self._conns)
