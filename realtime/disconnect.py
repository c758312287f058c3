"""Close codes, and the one table of why a server closes a WebSocket (no I/O).

Like centrifuge's ``disconnect.go``: every reason the server has to close a connection is one
:class:`Disconnect` (code, the reason sent in the CLOSE frame, whether the client should
reconnect). The server closes with these (:mod:`realtime.server`), the client SDK decides from
:data:`DISCONNECTS` whether to reconnect (:mod:`realtime.client`), and the README's close-code
table lists exactly these rows (``tests/unit/test_disconnect.py`` checks it).

Codes 1000-1015 are RFC 6455 section 7.4.1; 4000-4999 are private use (section 7.4.2): ours
are 4000-4499, all of them "you may reconnect".
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final


class CloseCode(enum.IntEnum):
    """Every close code this server sends or interprets (RFC 6455 section 7.4)."""

    NORMAL = 1000
    """Normal closure; the server echoes it to a client's CLOSE without a code."""
    GOING_AWAY = 1001
    """Server shutting down (after ``RECONNECT``)."""
    PROTOCOL_ERROR = 1002
    """The client broke RFC 6455 (unmasked frame, RSV bits, bad opcode or fragmentation)."""
    NO_STATUS = 1005
    """A CLOSE without a code (received only, never sent)."""
    ABNORMAL = 1006
    """The TCP connection ended without a close handshake (never sent: logs only)."""
    INVALID_DATA = 1007
    """A text message (or a close reason) that is not valid UTF-8."""
    MESSAGE_TOO_BIG = 1009
    """An inbound message larger than ``MAX_FRAME_BYTES``."""
    INTERNAL_ERROR = 1011
    """The server failed handling a frame (a bug: logged and reported)."""
    LISTEN_TIMEOUT = 4001
    """No successful LISTEN within ``LISTEN_TIMEOUT`` seconds of connecting."""
    IDLE_TIMEOUT = 4002
    """Nothing received for ``IDLE_TIMEOUT`` seconds (PING at least every 5 minutes)."""
    BAD_TOKENS = 4003
    """``MAX_BAD_TOKENS_PER_CONNECTION`` LISTENs in a row refused for their token."""
    SLOW_CONSUMER = 4008
    """The send queue overflowed: the client did not read fast enough."""


@dataclass(frozen=True, slots=True)
class Disconnect:
    """One reason the server closes a connection.

    Attributes:
        code: the close code.
        reason: the reason sent in the CLOSE frame (ASCII, at most 123 bytes).
        reconnect: whether a client should reconnect (with backoff) after it. ``False``
            means reconnecting would fail the same way: the client has a bug to fix.
        description: what it means, for the README's close-code table (Markdown).
    """

    code: CloseCode
    reason: str
    reconnect: bool
    description: str


def _table(*rows: Disconnect) -> Mapping[CloseCode, Disconnect]:
    return MappingProxyType({row.code: row for row in rows})


DISCONNECTS: Final = _table(
    Disconnect(CloseCode.GOING_AWAY, "server shutting down", True, "server shutting down (after `RECONNECT`)"),
    Disconnect(
        CloseCode.PROTOCOL_ERROR,
        "protocol error",
        False,
        "the client broke RFC 6455 framing (unmasked frame, RSV bits, unknown opcode, bad fragmentation)",
    ),
    Disconnect(CloseCode.INVALID_DATA, "invalid data", False, "a text message that is not valid UTF-8"),
    Disconnect(
        CloseCode.MESSAGE_TOO_BIG,
        "message too big",
        False,
        "an inbound message was larger than `MAX_FRAME_BYTES`",
    ),
    Disconnect(CloseCode.INTERNAL_ERROR, "internal error", True, "the server failed handling a frame (a bug)"),
    Disconnect(
        CloseCode.LISTEN_TIMEOUT,
        "no LISTEN in time",
        True,
        "no successful LISTEN within `LISTEN_TIMEOUT` seconds of connecting (default 15)",
    ),
    Disconnect(
        CloseCode.IDLE_TIMEOUT,
        "idle timeout",
        True,
        "nothing received for `IDLE_TIMEOUT` seconds (default 330: PING at least every 5 minutes)",
    ),
    Disconnect(
        CloseCode.BAD_TOKENS,
        "too many invalid tokens",
        True,
        "`MAX_BAD_TOKENS_PER_CONNECTION` LISTENs in a row (default 10) refused for their token (invalid, "
        "expired or revoked): get a fresh token before reconnecting",
    ),
    Disconnect(
        CloseCode.SLOW_CONSUMER,
        "slow consumer",
        True,
        'slow consumer: the connection\'s send queue overflowed (see "Backpressure")',
    ),
)
"""Why the server closes a connection, by close code (read-only)."""


def should_reconnect(code: int | None) -> bool:
    """Whether a client should reconnect after the server closed with ``code``.

    Args:
        code: the close code received, or ``None`` when the connection dropped without one.

    Returns:
        The table's answer for a code in :data:`DISCONNECTS`; ``True`` for any other code
        (a proxy's, 1006 for a dropped connection): the failure may be transient.
    """
    row = DISCONNECTS.get(code) if code is not None else None  # type: ignore[call-overload]
    return True if row is None else row.reconnect


def reason_of(code: int) -> str:
    """The CLOSE frame reason the table gives ``code`` (``""`` for a code not in it)."""
    row = DISCONNECTS.get(code)  # type: ignore[call-overload]
    return row.reason if row is not None else ""
