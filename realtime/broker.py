"""The broker interface and the in-process memory broker.

A broker carries publications between server instances. Each instance hands it a
``deliver(topic, message)`` callback and receives every publication made through any
instance (including itself). Guarantees, shared by both implementations: at-most-once
(a publication made while an instance is not receiving from the broker never reaches
that instance's listeners; the instance learns of the gap through ``on_gap``, called
whenever receiving starts again after the instance may have accepted listeners without
it), publications from one publisher on one topic are delivered in publish order, and
an instance that is not receiving refuses to publish (``BrokerUnavailable``) rather than
accept a publication its own listeners would miss unannounced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from realtime.errors import BrokerUnavailable

Deliver = Callable[[str, str], None]
"""``deliver(topic, message)``: fan one publication out locally. Must not block."""
OnGap = Callable[[], None]
"""Called when the broker receives again after a time it did not (a reconnect, a renewed
subscription that had stopped delivering, a first subscription made after the server
started serving): publications may have been missed."""
OnControl = Callable[[dict[str, object]], None]
"""Called with each control message (e.g. a token revocation) published by any instance."""
OnBatch = Callable[[], bool]
"""Called after a burst of ``deliver`` calls read together: write them out now. Returns
``True`` if the burst delivered a publication to a local listener (the broker may then
pace its next read)."""


class Broker(Protocol):
    """What the node needs from a broker."""

    @property
    def kind(self) -> str:
        """``"memory"`` or ``"redis"``."""
        ...

    @property
    def ready(self) -> bool:
        """``True`` while the broker is connected and receiving (``/ready``)."""
        ...

    async def start(
        self, deliver: Deliver, on_gap: OnGap, on_control: OnControl, on_batch: OnBatch | None = None
    ) -> None:
        """Start receiving; returns once the first subscription attempt was made."""
        ...

    async def publish_control(self, message: dict[str, object]) -> None:
        """Send a control message to every instance (including this one).

        Raises:
            BrokerUnavailable: it was not sent (the broker did not take it, or this
                instance is not receiving).
        """
        ...

    async def publish(self, topic: str, message: str) -> None:
        """Publish one message.

        Raises:
            BrokerUnavailable: the broker did not take the message, or this instance is not
                receiving (its own listeners would miss it); it was not sent.
        """
        ...

    async def close(self) -> None:
        """Stop receiving and release connections."""
        ...


class MemoryBroker:
    """Single-instance broker: a publication is fanned out in the publishing call.

    This is the product's single-instance mode (no ``REDIS_URL``), not a test double.
    """

    kind = "memory"

    def __init__(self) -> None:
        self._deliver: Deliver | None = None
        self._on_control: OnControl | None = None

    @property
    def ready(self) -> bool:
        """Always ``True`` once started."""
        return self._deliver is not None

    async def start(
        self, deliver: Deliver, on_gap: OnGap, on_control: OnControl, on_batch: OnBatch | None = None
    ) -> None:
        """Remember the callbacks; a memory broker has no gaps (nor batches: each
        publication is fanned out in its own call and flushed by the scheduler)."""
        self._deliver = deliver
        self._on_control = on_control

    async def publish(self, topic: str, message: str) -> None:
        """Fan the message out to this process's listeners right away."""
        if self._deliver is None:
            raise BrokerUnavailable("broker is not started")
        self._deliver(topic, message)

    async def publish_control(self, message: dict[str, object]) -> None:
        """Apply a control message to this process right away."""
        if self._on_control is None:
            raise BrokerUnavailable("broker is not started")
        self._on_control(message)

    async def close(self) -> None:
        """Stop delivering."""
        self._deliver = None
        self._on_control = None
