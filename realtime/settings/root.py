"""The root of the settings: the six groups together, read once, overridable by flat name."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from realtime.errors import SettingsError
from realtime.settings.environment import (
    SettingsEnv,
    read_auth,
    read_broker,
    read_database,
    read_limits,
    read_observability,
    read_server,
)
from realtime.settings.groups import (
    AuthSettings,
    BrokerSettings,
    DatabaseSettings,
    LimitsSettings,
    ObservabilitySettings,
    ServerSettings,
    env_name,
)

#: The groups, by their attribute name on :class:`Settings`.
GROUPS: dict[str, type[Any]] = {
    "server": ServerSettings,
    "limits": LimitsSettings,
    "broker": BrokerSettings,
    "auth": AuthSettings,
    "database": DatabaseSettings,
    "observability": ObservabilitySettings,
}

#: Every setting by its flat name (the variable in lower case) -> (group, field):
#: ``"port" -> ("server", "port")``, ``"database_url" -> ("database", "url")``.
FLAT_NAMES: dict[str, tuple[str, str]] = {
    env_name(f).lower(): (group, f.name) for group, cls in GROUPS.items() for f in fields(cls)
}

#: Every environment variable a setting is read from, in the groups' order.
ENV_NAMES: tuple[str, ...] = tuple(name.upper() for name in FLAT_NAMES)


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of the server, grouped by concern; read from the environment once.

    The composition root (``service/``) unpacks the groups and hands each component the
    fields it needs as keyword arguments. Times are in seconds, sizes in bytes.

    Attributes:
        server: address, workers, event loop, HTTP deadlines, shutdown.
        limits: every bound a client can run into.
        broker: Redis (or the memory broker).
        auth: signing keys, WS tokens, API keys, topic policy, upstream JWTs, sessions.
        database: the PostgreSQL URL.
        observability: logs, metrics, Sentry.
    """

    server: ServerSettings = field(default_factory=ServerSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    observability: ObservabilitySettings = field(default_factory=ObservabilitySettings)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read settings from ``environ`` (default ``os.environ``), apply overrides, check them.

        Args:
            environ: the environment variables; unset or empty ones take their default.
            **overrides: values by flat name (``port=0``, ``database_url="none"``) that win
                over the environment: the CLI's flags, tests.

        Raises:
            SettingsError: naming every variable whose value does not parse, or the one out of
                range.
            TypeError: an override names no setting.
        """
        env = SettingsEnv(os.environ if environ is None else environ)
        settings = cls(
            server=read_server(env),
            limits=read_limits(env),
            broker=read_broker(env),
            auth=read_auth(env),
            database=read_database(env),
            observability=read_observability(env),
        )
        env.check()
        return settings.with_overrides(**overrides)

    def with_overrides(self, **flat: Any) -> Settings:
        """A copy with the settings named by flat name replaced, checked.

        Raises:
            SettingsError: a value is out of range.
            TypeError: a name is not a setting (see :data:`FLAT_NAMES`).
        """
        changes: dict[str, dict[str, Any]] = {}
        for name, value in flat.items():
            if name not in FLAT_NAMES:
                raise TypeError(f"{name!r} is not a setting (the variable's name in lower case, e.g. 'port')")
            group, attr = FLAT_NAMES[name]
            changes.setdefault(group, {})[attr] = value
        settings = replace(self, **{group: replace(getattr(self, group), **c) for group, c in changes.items()})
        settings.validate()
        return settings

    def validate(self) -> None:
        """Check every group's ranges, then the rules that span groups.

        Raises:
            SettingsError: naming the variable at fault.
        """
        for group in GROUPS:
            getattr(self, group).validate()
        port = self.observability.metrics_port
        if port and port == self.server.port:
            raise SettingsError("METRICS_PORT must be 0 (serve /metrics on PORT) or another port up to 65535")
        if self.auth.jwks_url and not self.database.enabled:
            raise SettingsError("AUTH_JWKS_URL needs a database (DATABASE_URL=none): upstream users are stored in it")
