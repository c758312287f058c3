"""The realtime engine: the Twitch-PubSub-style wire protocol, connections, topic index,
fan-out and brokers. The app factory and the ``realtime`` command line are in :mod:`service`.

Exception tree::

    RealtimeError              base of this package
    ├── SettingsError          a setting that does not parse; names the variable
    ├── BrokerUnavailable      the broker cannot take a message right now
    ├── BadMessage             a message that cannot be encoded for publishing
    └── RevocationRefused      a token revocation the instance cannot remember (not sent)
"""

from __future__ import annotations

from realtime.errors import BadMessage, BrokerUnavailable, RealtimeError, RevocationRefused, SettingsError

__all__ = ["BadMessage", "BrokerUnavailable", "RealtimeError", "RevocationRefused", "SettingsError"]
__version__ = "0.1.0"
