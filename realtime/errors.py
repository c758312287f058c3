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
