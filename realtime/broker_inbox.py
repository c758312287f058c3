"""The broker inbox: what a Redis subscriber link hands on, decoded and passed to the handler.

Both Redis brokers (:mod:`realtime.redis_broker`, :mod:`realtime.redis_cluster_broker`) give
their links the inbox's two callbacks: a data-channel payload becomes
:meth:`realtime.broker.BrokerEventHandler.on_publication` (or ``on_presence_event`` for a
JOIN/LEAVE), a control-channel payload ``on_control``. Invalid envelopes are counted in the broker's stats, logged at most once a
second and dropped; an exception from the handler is logged and never costs the link.
"""

from __future__ import annotations

import time

import structlog

from realtime.broker import BrokerEventHandler
from realtime.envelope import InvalidEnvelope, decode_control, decode_presence_event, decode_publication
from realtime.stats import BrokerStats

log = structlog.get_logger("realtime.broker")


class BrokerInbox:
    """Decodes link payloads for one broker.

    Attributes:
        handler: where decoded publications and control messages go (set by the broker's
            ``start``; payloads before that are dropped).
    """

    __slots__ = ("_last_invalid_log", "_stats", "handler")

    def __init__(self, stats: BrokerStats) -> None:
        """Args:
        stats: the broker's counters (received, invalid envelopes).
        """
        self._stats = stats
        self._last_invalid_log = 0.0
        self.handler: BrokerEventHandler | None = None

    def publication(self, data: bytes) -> None:
        """A data-channel payload (:func:`realtime.envelope.decode_publication`), or a JOIN
        or LEAVE on a topic's channel (:func:`realtime.envelope.decode_presence_event`)."""
        try:
            topic, message, offset, epoch = decode_publication(data)
        except InvalidEnvelope as exc:
            self._presence_event(data, exc)
            return
        if self.handler is None:
            return
        self._stats.count_received()
        try:
            self.handler.on_publication(topic, message, offset, epoch)
        except Exception:
            log.exception("deliver_failed", topic=topic[:128])

    def _presence_event(self, data: bytes, error: InvalidEnvelope) -> None:
        """Hand on a JOIN/LEAVE (tried only for what is not a publication: publications
        pay nothing for it); anything else is invalid with the publication's ``error``."""
        try:
            topic, kind, entry = decode_presence_event(data)
        except InvalidEnvelope:
            self._invalid(error)
            return
        if self.handler is None:
            return
        try:
            self.handler.on_presence_event(topic, kind, entry)
        except Exception:
            log.exception("presence_event_failed", topic=topic[:128])

    def control(self, data: bytes) -> None:
        """A control-channel payload (:func:`realtime.envelope.decode_control`)."""
        try:
            message = decode_control(data)
        except InvalidEnvelope as exc:
            self._invalid(exc)
            return
        if self.handler is None:
            return
        try:
            self.handler.on_control(message)
        except Exception:
            log.exception("control_failed")

    def _invalid(self, exc: InvalidEnvelope) -> None:
        total = self._stats.count_invalid_envelope()
        now = time.monotonic()
        if now - self._last_invalid_log >= 1.0:
            self._last_invalid_log = now
            log.warning(
                "invalid_envelope_dropped",
                error=str(exc),
                total_dropped=total,
                expected='{"topic": "...", "message": ...}',
            )
