"""The counters of a node and of a broker, each owned by one object.

Every counter only grows (exported as Prometheus counters by :mod:`http_api.metrics`).
The object that owns a counter is the only one that changes it, through a ``count_*``
method; everyone else (metrics, the console) reads it through a read-only property.
Pure logic, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType


class NodeStats:
    """What one node counted since it was created.

    Counted by the node itself, its peers (slow consumers) and the WebSocket adapter
    (handshakes); read by ``/metrics`` and the console.
    """

    __slots__ = (
        "_delivered",
        "_gaps",
        "_handshakes",
        "_published",
        "_refusals",
        "_revocations",
        "_slow_consumers",
    )

    def __init__(self) -> None:
        self._published = 0
        self._delivered = 0
        self._gaps = 0
        self._revocations = 0
        self._slow_consumers = 0
        self._refusals: dict[str, int] = {}
        self._handshakes: dict[int, int] = {}

    def count_published(self) -> None:
        """One publication accepted by the broker through this node."""
        self._published += 1

    def count_delivered(self, frames: int) -> None:
        """``frames`` MESSAGE frames queued by fan-out (once per publication, not per listener)."""
        self._delivered += frames

    def count_gap(self) -> None:
        """One broker reconnect announced to clients (GAP)."""
        self._gaps += 1

    def count_revocation(self) -> None:
        """One revocation control message applied."""
        self._revocations += 1

    def count_slow_consumer(self) -> None:
        """One connection closed because its send queue overflowed."""
        self._slow_consumers += 1

    def count_refusal(self, code: str) -> None:
        """One error RESPONSE sent with error ``code`` (``ERR_BADAUTH``, ...)."""
        self._refusals[code] = self._refusals.get(code, 0) + 1

    def count_handshake(self, status: int) -> None:
        """One WebSocket opening handshake answered with HTTP ``status`` (101, 400, 426, 429, 503)."""
        self._handshakes[status] = self._handshakes.get(status, 0) + 1

    @property
    def published(self) -> int:
        """Publications accepted by the broker through this node."""
        return self._published

    @property
    def delivered(self) -> int:
        """MESSAGE frames queued to listeners by fan-out."""
        return self._delivered

    @property
    def gaps(self) -> int:
        """Broker reconnects announced to clients."""
        return self._gaps

    @property
    def revocations(self) -> int:
        """Revocation control messages applied."""
        return self._revocations

    @property
    def slow_consumers(self) -> int:
        """Connections closed because their send queue overflowed."""
        return self._slow_consumers

    @property
    def refusals(self) -> Mapping[str, int]:
        """Error code -> error RESPONSEs sent with it (a read-only view)."""
        return MappingProxyType(self._refusals)

    @property
    def handshakes(self) -> Mapping[int, int]:
        """HTTP status -> opening handshakes answered with it (a read-only view)."""
        return MappingProxyType(self._handshakes)


class BrokerStats:
    """What one broker counted since it was created (all zero for the memory broker)."""

    __slots__ = ("_invalid_envelopes", "_received", "_reconnects", "_stalls")

    def __init__(self) -> None:
        self._reconnects = 0
        self._stalls = 0
        self._invalid_envelopes = 0
        self._received = 0

    def count_received(self) -> None:
        """One publication received from the broker (any topic, any channel)."""
        self._received += 1

    @property
    def received(self) -> int:
        """Publications received from the broker: with per-topic routing, only those of topics
        with local listeners (and what arrives on the firehose)."""
        return self._received

    def count_reconnect(self) -> None:
        """The subscriber link came back after a loss."""
        self._reconnects += 1

    def count_stall(self) -> None:
        """The delivery probe dropped a link that answered but did not deliver."""
        self._stalls += 1

    def count_invalid_envelope(self) -> int:
        """One malformed publication or control message dropped; returns the new total."""
        self._invalid_envelopes += 1
        return self._invalid_envelopes

    @property
    def reconnects(self) -> int:
        """Times the subscriber link came back after a loss."""
        return self._reconnects

    @property
    def stalls(self) -> int:
        """Links dropped by the delivery probe."""
        return self._stalls

    @property
    def invalid_envelopes(self) -> int:
        """Publications and control messages dropped as malformed."""
        return self._invalid_envelopes


class RecoveryStats:
    """What the node's recovery (:mod:`realtime.recovery`) counted.

    Counted by :class:`realtime.recovery.Recovery`; read by ``/metrics``.
    """

    __slots__ = ("_duplicates", "_history_gaps", "_reads", "_recovered", "_unlearned")

    def __init__(self) -> None:
        self._unlearned = 0
        self._reads = 0
        self._recovered = 0
        self._history_gaps = 0
        self._duplicates = 0

    def count_read(self) -> None:
        """One read of a topic's history sent to the broker."""
        self._reads += 1

    def count_unlearned(self) -> None:
        """A new topic's position not read (over the learning budget)."""
        self._unlearned += 1

    @property
    def unlearned(self) -> int:
        """New topics whose position was not read, over the learning budget."""
        return self._unlearned

    def count_recovered(self, frames: int) -> None:
        """``frames`` MESSAGE frames queued from history (one per publication per connection)."""
        self._recovered += frames

    def count_history_gap(self, conns: int) -> None:
        """GAP ``history_lost`` sent to ``conns`` connections."""
        self._history_gaps += conns

    def count_duplicate(self) -> None:
        """One live publication dropped because its offset was delivered already."""
        self._duplicates += 1

    @property
    def reads(self) -> int:
        """Reads of history sent to the broker."""
        return self._reads

    @property
    def recovered(self) -> int:
        """MESSAGE frames queued from history."""
        return self._recovered

    @property
    def history_gaps(self) -> int:
        """GAP ``history_lost`` notices sent (one per connection and topic)."""
        return self._history_gaps

    @property
    def duplicates(self) -> int:
        """Live publications dropped as already delivered."""
        return self._duplicates
