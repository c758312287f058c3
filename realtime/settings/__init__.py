"""Settings: read from the environment once, at start-up, parsed and typed by ``environs``.

``Settings`` holds six groups (``server``, ``limits``, ``broker``, ``auth``, ``database``,
``observability``); the README's "Settings" table documents every variable, and
:data:`FLAT_NAMES` says which group field each one fills.
"""

from __future__ import annotations

from realtime.settings.api_keys import ApiKeyEntry, parse_api_keys
from realtime.settings.groups import (
    UPSTREAM_ALGORITHMS,
    AuthSettings,
    BrokerSettings,
    DatabaseSettings,
    LimitsSettings,
    ObservabilitySettings,
    ServerSettings,
)
from realtime.settings.root import ENV_NAMES, FLAT_NAMES, GROUPS, Settings

__all__ = [
    "ENV_NAMES",
    "FLAT_NAMES",
    "GROUPS",
    "UPSTREAM_ALGORITHMS",
    "ApiKeyEntry",
    "AuthSettings",
    "BrokerSettings",
    "DatabaseSettings",
    "LimitsSettings",
    "ObservabilitySettings",
    "ServerSettings",
    "Settings",
    "parse_api_keys",
]
