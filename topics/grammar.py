"""Topic grammar: ``resource[:subresource]:action[.target]``.

Examples: ``channel:update.42``, ``channel:prediction:lock.42``,
``remote-control:command.7``, ``system:notice`` (a global topic, no target).

Rules:
  * the *name* (the part before the first ``.``) has two or three segments joined by
    ``:``; each segment is lowercase ``[a-z][a-z0-9-]*``;
  * the *target* (after the ``.``) is ``[A-Za-z0-9_-]{1,64}``;
  * the whole topic is at most :data:`MAX_TOPIC_BYTES` bytes (ASCII only, so bytes equal
    characters).

Whether a target is required, forbidden or must equal the caller is the policy's
business (:mod:`topics.policy`), not the grammar's.
"""

from __future__ import annotations

import re
from typing import NamedTuple, NewType

from topics.errors import BadTopic

Topic = NewType("Topic", str)
"""A full topic string as sent on the wire, e.g. ``channel:update.42``."""

MAX_TOPIC_BYTES = 128
"""Longest topic accepted, in bytes."""

TOPIC_NAME_RE = re.compile(r"[a-z][a-z0-9-]*(?::[a-z][a-z0-9-]*){1,2}")
_TARGET_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ParsedTopic(NamedTuple):
    """A topic split into its name and optional target.

    Attributes:
        topic: the full topic string.
        name: the part before ``.``, e.g. ``channel:prediction:lock``.
        target: the part after ``.``, or ``None`` for a global topic.
    """

    topic: Topic
    name: str
    target: str | None


def parse_topic(value: object) -> ParsedTopic:
    """Parse and validate one topic string against the grammar.

    Args:
        value: the candidate topic (any type; only ``str`` can succeed).

    Returns:
        The parsed topic.

    Raises:
        BadTopic: if ``value`` is not a string, is longer than 128 bytes, or does not
            match ``resource[:subresource]:action[.target]``. The message names the
            problem.
    """
    if not isinstance(value, str):
        raise BadTopic(f"topic must be a string, got {type(value).__name__}")
    if len(value) > MAX_TOPIC_BYTES:
        raise BadTopic(f"topic is longer than {MAX_TOPIC_BYTES} bytes")
    name, dot, target = value.partition(".")
    if TOPIC_NAME_RE.fullmatch(name) is None:
        raise BadTopic(
            f"malformed topic {value!r}: expected resource[:subresource]:action[.target] "
            "with lowercase segments [a-z][a-z0-9-]*"
        )
    if not dot:
        return ParsedTopic(Topic(value), name, None)
    if _TARGET_RE.fullmatch(target) is None:
        raise BadTopic(f"malformed target in topic {value!r}: expected [A-Za-z0-9_-]{{1,64}}")
    return ParsedTopic(Topic(value), name, target)
