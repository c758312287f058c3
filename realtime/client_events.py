"""What the client SDK (:mod:`realtime.client`) yields and raises.

Errors: :class:`ClientError` (root, a :class:`realtime.errors.RealtimeError`) >
:class:`ListenRefused` (the server answered a LISTEN with an error code),
:class:`PresenceRefused` (the server answered a PRESENCE with an error code),
:class:`TokenRefused` (``/auth/ws`` refused the credentials: 401/403) and
:class:`Disconnected` (the server closed with a code after which reconnecting would fail the
same way: :data:`realtime.disconnect.DISCONNECTS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson

from realtime.disconnect import DISCONNECTS
from realtime.errors import RealtimeError


class ClientError(RealtimeError):
    """Base of the client's errors."""


class ListenRefused(ClientError):
    """The server refused a LISTEN.

    Attributes:
        code: the protocol error code (``ERR_BADTOPIC``, ``ERR_BADAUTH``, ...).
    """

    def __init__(self, code: str, description: str) -> None:
        super().__init__(f"LISTEN refused: {code} {description}".strip())
        self.code = code


class PresenceRefused(ClientError):
    """The server refused a PRESENCE.

    Attributes:
        code: the protocol error code: ``ERR_BADAUTH`` (no token, or it may not read this
            topic: another user's ``self`` topic), ``ERR_BADTOPIC`` (malformed, unknown, or
            its rule keeps no presence), ``ERR_RATELIMIT`` (counts against ``LISTEN_RATE``),
            ``ERR_BADMESSAGE`` or ``ERR_SERVER``.
        topic: the topic asked about.
    """

    def __init__(self, code: str, description: str, topic: str) -> None:
        super().__init__(f"PRESENCE refused: {code} {description}".strip() + f" ({topic})")
        self.code = code
        self.topic = topic


class TokenRefused(ClientError):
    """``/auth/ws`` refused the credentials (HTTP 401 or 403); retrying will not help."""


class Disconnected(ClientError):
    """The server closed the connection with a code whose row in
    :data:`realtime.disconnect.DISCONNECTS` says not to reconnect (1002, 1007, 1009: the
    client sent something the server refuses; sending it again would fail the same way).

    Attributes:
        code: the close code.
    """

    def __init__(self, code: int) -> None:
        row = DISCONNECTS.get(code)  # type: ignore[call-overload]
        super().__init__(f"the server closed the connection with {code}" + (f" ({row.reason})" if row else ""))
        self.code = code


PRESENCE_EVENTS: Final = frozenset({"JOIN", "LEAVE"})
"""Event types about a topic's presence (README "Presence": topics whose rule has ``join_leave``)."""


@dataclass(frozen=True, slots=True)
class Event:
    """Something the caller should see.

    Attributes:
        type: ``MESSAGE``, ``GAP``, ``AUTH_REVOKED``, ``RECONNECTED``, ``JOIN`` or ``LEAVE``.
        topic: the topic of a ``MESSAGE``, ``JOIN`` or ``LEAVE``.
        message: the ``MESSAGE`` text, as published (JSON values arrive JSON-encoded).
        topics: the topics a ``GAP``, ``AUTH_REVOKED`` or ``RECONNECTED`` is about.
        offset: a ``MESSAGE``'s offset in its topic's stream (1 for the topic's first
            publication, +1 per publication); ``None`` on topics without history.
        epoch: the epoch of that stream (changes when the topic's history was lost);
            ``None`` on topics without history.
        reason: why a ``GAP`` was sent: ``broker_reconnected`` (the server's broker link was
            down) or ``history_lost`` (history could not cover what was missed); ``None``
            when the server gave none.
        user: who joined or left (``JOIN``/``LEAVE``: the ``sub`` of the token its LISTEN
            carried; ``None`` without one).
        client: the connection that joined or left (``JOIN``/``LEAVE``: an opaque id, the
            same as in :meth:`realtime.client.RealtimeClient.presence`'s ``clients``).
        info: its LISTEN's ``client_info`` (``JOIN``/``LEAVE``; ``{}`` without one). Do not
            change it: events are shared values.
    """

    type: str
    topic: str = ""
    message: str = ""
    topics: tuple[str, ...] = ()
    offset: int | None = None
    epoch: str | None = None
    reason: str | None = None
    user: str | None = None
    client: str = ""
    info: dict[str, Any] | None = None

    def json(self) -> Any:
        """The message parsed as JSON.

        Raises:
            orjson.JSONDecodeError: the message is not JSON.
        """
        return orjson.loads(self.message)

    def to_dict(self) -> dict[str, Any]:
        """``{"type": ..., "topic": ..., "message": ...}`` (plus ``"offset"`` and ``"epoch"``
        when set), ``{"type": "JOIN"|"LEAVE", "topic": ..., "user": ..., "client": ...,
        "info": {...}}``, or ``{"type": ..., "topics": [...]}`` (plus ``"reason"`` when set)."""
        if self.type in PRESENCE_EVENTS:
            info = {} if self.info is None else self.info
            return {"type": self.type, "topic": self.topic, "user": self.user, "client": self.client, "info": info}
        if self.type == "MESSAGE":
            out: dict[str, Any] = {"type": self.type, "topic": self.topic, "message": self.message}
            if self.offset is not None and self.epoch is not None:
                out.update(offset=self.offset, epoch=self.epoch)
            return out
        out = {"type": self.type, "topics": list(self.topics)}
        if self.reason is not None:
            out["reason"] = self.reason
        return out
