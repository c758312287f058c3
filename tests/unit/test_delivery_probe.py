"""The delivery probe's rule, on a stand-in link (no sockets): probe only a quiet link, keep a
link whose probe comes back, drop one whose probe does not, and never judge the subscription
by a probe Redis refused. The real thing, over a real socket: tests/integration/test_faults.py."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from realtime.delivery_probe import probe_delivery
from realtime.errors import BrokerUnavailable

INTERVAL = 0.02
TIMEOUT = 0.05


class Link:
    """A subscriber link as the probe sees it; :meth:`deliver` is a publication arriving."""

    def __init__(self) -> None:
        self.received = 0
        self.dropped: list[str] = []
        self._waiter: asyncio.Future[None] | None = None

    def next_delivery(self) -> asyncio.Future[None]:
        self._waiter = asyncio.get_running_loop().create_future()
        return self._waiter

    def drop(self, reason: str) -> None:
        self.dropped.append(reason)

    def deliver(self) -> None:
        self.received += 1
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


async def run_for(link: Link, publish: Callable[[], Awaitable[None]], seconds: float) -> bool:
    """Run the probe for ``seconds``; True if it returned (dropped the link) by then."""
    task = asyncio.create_task(probe_delivery(link, publish, interval=INTERVAL, timeout=TIMEOUT))
    done, _ = await asyncio.wait({task}, timeout=seconds)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return bool(done)


async def test_a_busy_link_is_never_probed() -> None:
    link, probes = Link(), list[int]()

    async def publish() -> None:
        probes.append(1)

    async def traffic() -> None:
        while True:
            link.deliver()
            await asyncio.sleep(INTERVAL / 4)

    feeder = asyncio.create_task(traffic())
    try:
        assert not await run_for(link, publish, 10 * INTERVAL)
    finally:
        feeder.cancel()
    assert probes == [] and link.dropped == []


async def test_a_quiet_link_whose_probe_comes_back_is_kept() -> None:
    link, probes = Link(), list[int]()

    async def publish() -> None:
        probes.append(1)
        asyncio.get_running_loop().call_soon(link.deliver)

    assert not await run_for(link, publish, 10 * INTERVAL)
    assert len(probes) >= 3 and link.dropped == []


async def test_a_quiet_link_whose_probe_does_not_come_back_is_dropped() -> None:
    link = Link()

    async def publish() -> None:
        pass  # Redis took it; nothing arrives

    assert await run_for(link, publish, INTERVAL + TIMEOUT + 1.0)
    assert len(link.dropped) == 1 and "no publication delivered" in link.dropped[0]


async def test_a_probe_redis_refused_is_no_verdict() -> None:
    link = Link()

    async def publish() -> None:
        raise BrokerUnavailable("redis unavailable: ConnectionError")

    assert not await run_for(link, publish, 10 * INTERVAL)
    assert link.dropped == []
