"""The broker envelope: how publications and control messages travel between instances.

One codec, used by every publisher (the node, ``realtime publish``, ``realtime
revoke-user``) and by the Redis subscriber. JSON (UTF-8) on the wire:

- data channel (default ``realtime``), published by us or by any service in any language::

      {"topic": "dream:update.abc", "message": "<string>" | <any JSON value>}
      {"topic": "dream:update.abc", "message": "<string>", "offset": 7, "epoch": "9f3a1c2e"}

  A ``message`` that is not a string is delivered JSON-encoded, as Twitch PubSub sends
  ``data.message`` (:func:`message_text`). ``offset`` and ``epoch`` come with publications
  on topics that keep history (:mod:`realtime.history`), made by the Redis Function
  library (:mod:`realtime.redis_functions`); a raw ``PUBLISH`` without them is delivered
  without them (and is not in history).

  On a topic's own channel (``<channel>:{<topic>}``) also JOIN and LEAVE of topics with
  ``join_leave``, published by the Function library (:mod:`realtime.redis_presence`)::

      {"topic": "chat:room:message.7", "presence": "join" | "leave",
       "entry": {"user": "42" | null, "client": "<id>", "info": {...}}}
- control channel (``<channel>:control``): an object with a ``type``; the one type today
  is a token revocation (:func:`revocation_message`)::

      {"type": "revoke", "jti": str | null, "sub": str | null, "at": <seconds since the epoch>}

Decoding validates: a malformed envelope raises :class:`InvalidEnvelope` (the subscriber
counts and drops it). Not to be confused with the HTTP API's e-dream envelope
(:mod:`http_api.envelope`). Pure logic, no I/O.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from realtime.errors import BadMessage, RealtimeError
from realtime.history import MAX_EPOCH_LENGTH, MAX_OFFSET, Position

MAX_JTI_LENGTH = 64
"""Longest ``jti`` a revocation may name, characters."""
MAX_SUB_LENGTH = 128
"""Longest ``sub`` a revocation may name, characters."""


class InvalidEnvelope(RealtimeError):
    """A publication or control message that does not decode, or does not have the
    documented shape; it is dropped. Never shown to a client."""


class UnknownControl(InvalidEnvelope):
    """A control message of a ``type`` this instance does not know (``kind``: at most 32
    characters of it)."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"unknown control message type {kind!r}")
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Revocation:
    """A decoded revocation: by ``jti``, by ``sub`` (every token issued at or before
    ``at``), or both (that ``jti`` only if it belongs to ``sub``).

    Attributes:
        jti: the token id, at most :data:`MAX_JTI_LENGTH` characters, or ``None``.
        sub: the user, at most :data:`MAX_SUB_LENGTH` characters, or ``None``.
        at: when it was made, seconds since the epoch.
    """

    jti: str | None
    sub: str | None
    at: float


def message_text(message: object) -> str:
    """The wire form of a published message: a string as is, any other JSON value
    JSON-encoded (as Twitch PubSub sends ``data.message``).

    Raises:
        realtime.BadMessage: the value cannot be encoded.
    """
    if isinstance(message, str):
        return message
    try:
        return orjson.dumps(message).decode()
    except TypeError as exc:  # nested deeper than 255 levels, or not JSON at all
        raise BadMessage(f"message cannot be encoded as JSON: {exc}") from None


def encode_publication(topic: str, text: str, position: Position | None = None) -> bytes:
    """The data-channel envelope of one publication (``text``: see :func:`message_text`;
    ``position``: its place in the topic's history, if the topic keeps one)."""
    if position is None:
        return orjson.dumps({"topic": topic, "message": text})
    return orjson.dumps({"topic": topic, "message": text, "offset": position.offset, "epoch": position.epoch})


def _loads(data: bytes) -> object:
    """``orjson.loads``, reading bytes that are not UTF-8 with U+FFFD in their place: text
    sent as bytes through the history library (``FCALL`` keeps them as they are, and history
    reads decode them so) arrives live as it is read back, instead of being dropped.

    Raises:
        orjson.JSONDecodeError: not JSON.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            data.decode()
        except UnicodeDecodeError:
            return orjson.loads(data.decode("utf-8", "replace"))
        raise


def decode_publication(data: bytes) -> tuple[str, str, int, str]:
    """A data-channel envelope -> ``(topic, message text, offset, epoch)``; ``offset`` is 0
    and ``epoch`` empty for a publication outside history.

    Raises:
        InvalidEnvelope: not JSON, not an object, no string ``topic``, no ``message``, a
            ``message`` that cannot be re-encoded (nested deeper than 255 levels), or an
            ``offset`` that is not a positive integer with a non-empty string ``epoch`` of at
            most 64 characters.
    """
    try:
        envelope: Any = _loads(data)
        topic = envelope["topic"]
        message = envelope["message"]
        if not isinstance(topic, str):
            raise TypeError("topic must be a string")
        if not isinstance(message, str):
            message = orjson.dumps(message).decode()  # TypeError past 255 levels of nesting
        offset = envelope.get("offset")
    except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError) as exc:
        raise InvalidEnvelope(f"{type(exc).__name__}: {exc}") from None
    if offset is None:
        return topic, message, 0, ""
    epoch = envelope.get("epoch")
    if (
        type(offset) is not int
        or not 0 < offset <= MAX_OFFSET
        or not isinstance(epoch, str)
        or not 0 < len(epoch) <= MAX_EPOCH_LENGTH
    ):
        raise InvalidEnvelope("offset must be a positive integer, with a string epoch")
    return topic, message, offset, epoch


_PRESENCE_KINDS = {"join": "JOIN", "leave": "LEAVE"}


def decode_presence_event(data: bytes) -> tuple[str, str, dict[str, Any]]:
    """A JOIN/LEAVE envelope -> ``(topic, "JOIN" | "LEAVE", entry)``, ``entry`` being
    ``{"user": str | None, "client": str, "info": dict}``.

    Raises:
        InvalidEnvelope: not JSON, or not that shape.
    """
    try:
        envelope: Any = orjson.loads(data)
        topic, kind, entry = envelope["topic"], _PRESENCE_KINDS[envelope["presence"]], envelope["entry"]
    except (orjson.JSONDecodeError, TypeError, KeyError) as exc:
        raise InvalidEnvelope(f"{type(exc).__name__}: {exc}") from None
    if (
        not isinstance(topic, str)
        or not isinstance(entry, dict)
        or not isinstance(entry.get("client"), str)
        or not isinstance(entry.get("user"), str | None)
        or not isinstance(entry.get("info"), dict)
    ):
        raise InvalidEnvelope("presence event needs a string topic and an entry {user, client, info}")
    return topic, kind, {"user": entry["user"], "client": entry["client"], "info": entry["info"]}


def revocation_message(*, jti: str | None = None, sub: str | None = None) -> dict[str, object]:
    """The control message that revokes WS tokens on every instance, stamped now."""
    return {"type": "revoke", "jti": jti, "sub": sub, "at": time.time()}


def encode_control(message: Mapping[str, object]) -> bytes:
    """The control-channel form of a control message (e.g. :func:`revocation_message`)."""
    return orjson.dumps(message)


def decode_control(data: bytes) -> dict[str, object]:
    """A control-channel payload -> the control message (its fields not yet checked: see
    :func:`parse_control`).

    Raises:
        InvalidEnvelope: not JSON, or not a JSON object.
    """
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidEnvelope(f"JSONDecodeError: {exc}") from None
    if not isinstance(message, dict):
        raise InvalidEnvelope("TypeError: control message must be an object")
    return message


def parse_control(message: Mapping[str, object]) -> Revocation:
    """Check a control message's fields.

    Raises:
        UnknownControl: its ``type`` is not ``revoke``.
        InvalidEnvelope: a revocation without a numeric ``at``, with neither ``jti`` nor
            ``sub``, or with one that is not a string or too long.
    """
    if message.get("type") != "revoke":
        raise UnknownControl(str(message.get("type"))[:32])
    jti, sub, at = message.get("jti"), message.get("sub"), message.get("at")
    if (
        not isinstance(at, int | float)
        or not (jti is None or (isinstance(jti, str) and len(jti) <= MAX_JTI_LENGTH))
        or not (sub is None or (isinstance(sub, str) and len(sub) <= MAX_SUB_LENGTH))
        or (jti is None and sub is None)
    ):
        raise InvalidEnvelope("invalid revocation")
    return Revocation(jti=jti, sub=sub, at=float(at))
