"""The delivery probe: notice a pub/sub link that answers PING but no longer delivers.

A subscription can wedge without its connection failing: after a Redis Sentinel failover,
Centrifugo's subscriber kept answering PING while nothing was delivered to it any more
(centrifugal/centrifugo#1189, fixed in centrifugal/centrifuge#594 by the same remedy as
here). A PING proves the connection, not the subscription. So, whenever the data channel
has been quiet for ``interval`` seconds, the probe publishes one message on it and waits
``timeout`` seconds for any publication to arrive on the link; if none does, the link is
dropped, and the broker's supervisor resubscribes on a new connection and announces a gap
(``GAP`` to the clients), as after any other loss.

Any publication arriving on the data channel is proof of delivery, the probe's own or
anybody else's (so a busy channel is never probed, and the metrics latency probe's
traffic counts too). The probe costs the hot path one integer increment per publication
and one attribute check per socket read (:class:`ProbedLink`). A probe that Redis refuses
to take (down, timeout) is not a verdict on the subscription: losing the connection is the
PING watch's business.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog

from realtime.errors import BrokerUnavailable

log = structlog.get_logger("realtime.broker")

PROBE_TOPIC_PREFIX = "__probe__.delivery."
"""Probe topics fail the topic grammar: no client can LISTEN to them, so they reach nobody."""


class ProbedLink(Protocol):
    """What the probe needs from a subscriber link."""

    @property
    def received(self) -> int:
        """Publications received on the data channel so far."""
        ...

    def next_delivery(self) -> asyncio.Future[None]:
        """A future resolved when the next publication arrives on the data channel."""
        ...

    def drop(self, reason: str) -> None:
        """Abort the link; the supervisor reconnects and resubscribes."""
        ...


async def probe_delivery(
    link: ProbedLink,
    publish: Callable[[], Awaitable[None]],
    *,
    interval: float,
    timeout: float,  # noqa: ASYNC109 - each probe's deadline, not a bound on this call
) -> None:
    """Probe ``link`` until it stops delivering (then drop it and return) or the task is
    cancelled.

    Args:
        link: the subscribed link.
        publish: publishes one probe on the link's data channel; raises
            :class:`realtime.BrokerUnavailable` when the broker did not take it.
        interval: quiet time on the data channel before a probe is sent, seconds.
        timeout: how long a probe may take to come back, seconds.
    """
    while True:
        seen = link.received
        await asyncio.sleep(interval)
        if link.received != seen:
            continue  # delivered something in the interval: alive
        arrived = link.next_delivery()
        try:
            async with asyncio.timeout(timeout):
                await publish()
        except (BrokerUnavailable, TimeoutError) as exc:
            arrived.cancel()
            log.info("redis_probe_not_published", error=str(exc) or type(exc).__name__)
            continue
        try:
            await asyncio.wait_for(arrived, timeout)
        except TimeoutError:
            log.warning("redis_link_stalled", quiet_seconds=interval, probe_timeout=timeout)
            link.drop(f"no publication delivered within {timeout:g} s of a probe")
            return
