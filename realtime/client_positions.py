"""Where the client SDK (:mod:`realtime.client`) is in each topic's stream.

On topics with history every MESSAGE carries ``offset`` and ``epoch``
(:mod:`realtime.history`). The client keeps the last pair it saw per topic, sends it as
``since`` when it LISTENs again (after a reconnect) so the server sends what was missed, and
drops a publication it already yielded (the same epoch, an offset not past the known one).
Pure logic, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from realtime.history import MAX_EPOCH_LENGTH, MAX_OFFSET, Position

__all__ = ["Position", "Positions", "check_position", "message_position", "parse_since_option"]


def check_position(topic: str, value: tuple[int, str]) -> Position:
    """One ``since`` entry as a :class:`Position`.

    Args:
        topic: the topic (for the error message).
        value: ``(offset, epoch)``.

    Raises:
        ValueError: the offset is not an integer from 0 to 2**53 - 1, or the epoch not a
            string of 1 to 64 characters.
    """
    offset, epoch = value
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= MAX_OFFSET:
        raise ValueError(f"since {topic}: the offset must be an integer from 0 to {MAX_OFFSET}")
    if not isinstance(epoch, str) or not 0 < len(epoch) <= MAX_EPOCH_LENGTH:
        raise ValueError(f"since {topic}: the epoch must be a string of 1 to {MAX_EPOCH_LENGTH} characters")
    return Position(offset, epoch)


def message_position(body: Mapping[str, Any]) -> Position | None:
    """A MESSAGE's ``(offset, epoch)`` from its ``data``; ``None`` when it carries none (a
    topic without history) or they are not an integer and a string."""
    offset, epoch = body.get("offset"), body.get("epoch")
    if isinstance(offset, int) and not isinstance(offset, bool) and isinstance(epoch, str):
        return Position(offset, epoch)
    return None


def parse_since_option(text: str) -> tuple[str, Position]:
    """``realtime listen --since TOPIC=OFFSET:EPOCH`` (an ``argparse`` type).

    Example: ``"dream:update.a=7:9f3a1c2e"`` -> ``("dream:update.a", Position(7, "9f3a1c2e"))``.

    Raises:
        ValueError: not of that form, or the offset or epoch out of range.
    """
    topic, equals, position = text.partition("=")
    offset, colon, epoch = position.partition(":")
    if not (topic and equals and colon and offset.isdigit()):
        raise ValueError(f"{text!r} is not TOPIC=OFFSET:EPOCH (e.g. dream:update.a=7:9f3a1c2e)")
    return topic, check_position(topic, (int(offset), epoch))


class Positions:
    """The last position read and the last one yielded per topic, and the duplicates dropped.

    Two maps because the client reads ahead of its caller (a queue between them): what was
    read decides duplicates and the ``since`` of a reconnect (the queued events will still
    be yielded), what was yielded is what a program may save to resume from without
    skipping events it has not seen yet.

    Args:
        since: positions to start from, ``{topic: (offset, epoch)}``.

    Raises:
        ValueError: a ``since`` entry is out of range (:func:`check_position`).

    Attributes:
        duplicates_dropped: publications :meth:`accept` refused as already seen.
    """

    def __init__(self, since: Mapping[str, tuple[int, str]] | None = None) -> None:
        self._known = {topic: check_position(topic, value) for topic, value in (since or {}).items()}
        self._yielded = dict(self._known)
        self._after_gap: set[str] = set()
        self.duplicates_dropped = 0

    def snapshot(self) -> dict[str, Position]:
        """A copy of the positions yielded (or given as ``since`` and not yet passed)."""
        return dict(self._yielded)

    def yielded(self, topic: str, position: Position) -> None:
        """The caller got the publication at ``position`` (ignored for a topic forgotten
        since it was read)."""
        if topic in self._known:
            self._yielded[topic] = position

    def since(self, topics: Iterable[str]) -> dict[str, dict[str, int | str]]:
        """LISTEN's ``since`` for those of ``topics`` whose position is known (may be empty)."""
        return {t: {"offset": p.offset, "epoch": p.epoch} for t in topics if (p := self._known.get(t)) is not None}

    def gap(self, topics: Iterable[str]) -> None:
        """A GAP for these topics: the server sends only live publications after it, so the
        next one is new whatever its offset (the position may have been ahead of the
        stream). Until it comes the position stays: a reconnect sends it again."""
        self._after_gap.update(topics)

    def accept(self, topic: str, position: Position, *, track: bool = True) -> bool:
        """Whether a publication read at ``position`` is new; if so (and ``track``) it becomes
        the topic's position read. A duplicate (same epoch, offset not past the known one) is counted.
        Another epoch is always new: the topic's history was reset; so is the first after a GAP."""
        known = self._known.get(topic)
        if topic in self._after_gap:
            self._after_gap.discard(topic)
        elif known is not None and known.epoch == position.epoch and position.offset <= known.offset:
            self.duplicates_dropped += 1
            return False
        if track:
            self._known[topic] = position
        return True

    def forget(self, topics: Iterable[str]) -> None:
        """Drop these topics' positions (UNLISTEN, AUTH_REVOKED)."""
        for topic in topics:
            self._known.pop(topic, None)
            self._yielded.pop(topic, None)
            self._after_gap.discard(topic)
