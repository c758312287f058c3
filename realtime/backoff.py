"""Capped exponential backoff with jitter, for every reconnect loop (the Redis subscriber's
supervisor and the client SDK). Pure logic, no I/O."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_delay(
    attempt: int, initial: float = 0.1, cap: float = 1.0, rand: Callable[[], float] = random.random
) -> float:
    """Delay before reconnect attempt ``attempt`` (0-based): ``initial * 2**attempt``, capped
    at ``cap``, times a random factor in [0.5, 1.0) (jitter spreads reconnect storms).

    Args:
        attempt: failed attempts so far (0 for the first retry).
        initial: the first delay before jitter, seconds.
        cap: the longest delay before jitter, seconds.
        rand: a source of floats in [0, 1) (injected by tests).

    Returns:
        Seconds, in ``[0.5 * d, d)`` where ``d = min(cap, initial * 2**attempt)``.
    """
    base = min(cap, initial * 2.0 ** min(attempt, 30))
    return base * (0.5 + rand() / 2)
