"""Closing the Redis broker ends its supervisor even when a cancellation is swallowed.

No I/O: the broker's connect step is replaced by one that behaves like Python 3.11's
``asyncio.wait_for`` when a cancellation arrives as the connect fails (it raises the connect's
error and the cancellation is lost), which kept a real server reconnecting after SIGTERM.
"""

from __future__ import annotations

import asyncio

import pytest

from realtime import BrokerUnavailable
from realtime.redis_broker import RedisBroker


class Handler:
    def on_publication(self, topic: str, message: str, offset: int = 0, epoch: str = "") -> None: ...
    def on_control(self, message: dict[str, object]) -> None: ...
    def on_gap(self, topics: list[str] | None = None) -> None: ...
    def on_batch_end(self) -> bool:
        return False


async def test_close_ends_a_supervisor_whose_connect_swallowed_the_cancellation() -> None:
    broker = RedisBroker("redis://127.0.0.1:1/0", connect_timeout=0.05, backoff_cap=0.05)
    attempts = 0

    async def swallowing_open() -> None:
        nonlocal attempts
        attempts += 1
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise OSError("connect failed as the cancellation arrived") from None

    broker._open = swallowing_open  # type: ignore[method-assign,assignment]
    await broker.start(Handler())  # not ready: starts anyway
    await asyncio.wait_for(broker.close(), 2)  # before the fix: never returned
    before = attempts
    await asyncio.sleep(0.2)
    assert attempts == before  # no reconnect attempt after close


async def test_a_closed_broker_still_refuses_to_publish_unsubscribed() -> None:
    broker = RedisBroker("redis://127.0.0.1:1/0", connect_timeout=0.05)

    async def failing_open() -> None:
        raise OSError("refused")

    broker._open = failing_open  # type: ignore[method-assign,assignment]
    await broker.start(Handler())
    await broker.close()
    with pytest.raises(BrokerUnavailable):
        await broker.publish("dream:update.a", "x")
