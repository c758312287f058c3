"""Exceptions of the ``topics`` package; each carries a stable ``code``."""

from __future__ import annotations


class TopicError(ValueError):
    """Base of the topic errors.

    Attributes:
        code: stable machine-readable code, the one the wire protocol uses.
    """

    code = "ERR_BADTOPIC"


class BadTopic(TopicError):
    """A topic that is malformed, too long, or not in the topic policy."""

    code = "ERR_BADTOPIC"


class BadScope(TopicError):
    """A scope string that does not follow ``resource:verb[:subresource]``."""

    code = "ERR_BADSCOPE"


class PolicyError(Exception):
    """A topic policy file that cannot be read or does not validate."""
