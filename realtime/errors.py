"""Exceptions of the ``realtime`` package."""

from __future__ import annotations


class RealtimeError(Exception):
    """Base of the realtime errors."""


class SettingsError(RealtimeError):
    """A setting that is missing or does not parse; the message names the variable."""


class BrokerUnavailable(RealtimeError):
    """The broker cannot take a message now (e.g. Redis is down); it was not sent."""


class BadMessage(RealtimeError):
    """A message that cannot be published (e.g. JSON nested deeper than 255 levels)."""


class RevocationRefused(RealtimeError):
    """A token revocation this instance cannot remember (its table is full, or the caller
    has too many live revocations of its own); it was not sent.

    Attributes:
        full: ``True`` when the table is full (a server limit), ``False`` when the caller is
            over its own bound.
    """

    def __init__(self, message: str, *, full: bool) -> None:
        super().__init__(message)
        self.full = full


class NoHistory(RealtimeError):
    """A history read on a topic whose policy rule keeps no history (``history_size`` 0)."""
