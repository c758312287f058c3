"""The settings, grouped by concern: one small frozen dataclass per group.

Each field is read from the environment variable named by :func:`env_name` (its name in upper
case, or ``metadata["env"]`` where the group's name is dropped from the field's name:
``database.url`` is ``DATABASE_URL``). The README "Settings" table documents every variable.
Each group checks its own ranges (``validate``); :class:`realtime.settings.Settings` checks
the rules that span groups.
"""

from __future__ import annotations

from dataclasses import Field, dataclass, field
from typing import Any

from realtime.errors import SettingsError
from realtime.settings.api_keys import ApiKeyEntry
from topics import BadScope, parse_scopes

#: Asymmetric algorithms accepted for upstream JWTs (never ``none`` or HMAC).
UPSTREAM_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


def env_name(f: Field[Any]) -> str:
    """The environment variable of a group field (``PORT`` for ``server.port``)."""
    name: str = f.metadata.get("env", f.name.upper())
    return name


def _positive(group: object, *names: str) -> None:
    for name in names:
        if getattr(group, name) <= 0:
            raise SettingsError(f"{name.upper()} must be positive")


def _not_negative(group: object, *names: str) -> None:
    for name in names:
        if getattr(group, name) < 0:
            raise SettingsError(f"{name.upper()} must not be negative (0 turns the limit off)")


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """How the process serves: address, workers, event loop, HTTP deadlines, shutdown.

    Attributes:
        host: bind address (``HOST``; ``realtime serve --host``).
        port: TCP port (``PORT``; ``--port``).
        workers: processes sharing the port with ``SO_REUSEPORT`` (``WORKERS``; ``--workers``).
        event_loop: ``auto``, ``asyncio`` or ``uvloop``.
        shutdown_grace: seconds between RECONNECT and the 1001 close on shutdown.
        environment: ``production`` or ``development`` (drops ``Secure`` cookies and HSTS).
        write_interval: shortest time between two merged socket writes, seconds (0 to 0.1).
        client_ip_header: proxy header trusted for the client address (``""``,
            ``Fly-Client-IP`` or ``X-Forwarded-For``).
        http_head_timeout: seconds from accept to a complete first request head.
        http_body_timeout: seconds from a request head to the end of its body.
        http_keepalive_timeout: seconds an idle keep-alive connection may wait.
        cors_origins: space-separated origins allowed to call the API from a browser.
    """

    host: str = "0.0.0.0"
    port: int = 4444
    workers: int = 1
    event_loop: str = "auto"
    shutdown_grace: float = 10.0
    environment: str = "production"
    write_interval: float = 0.008
    client_ip_header: str = ""
    http_head_timeout: float = 10.0
    http_body_timeout: float = 30.0
    http_keepalive_timeout: float = 130.0
    cors_origins: str = ""

    def validate(self) -> None:
        """Check ranges and choices.

        Raises:
            SettingsError: naming the variable at fault.
        """
        _positive(self, "port", "workers", "http_head_timeout", "http_body_timeout", "http_keepalive_timeout")
        if self.event_loop not in ("auto", "asyncio", "uvloop"):
            raise SettingsError("EVENT_LOOP must be auto, asyncio or uvloop")
        if self.shutdown_grace < 0:
            raise SettingsError("SHUTDOWN_GRACE must not be negative")
        if self.environment not in ("production", "development"):
            raise SettingsError("ENVIRONMENT must be production or development")
        if not 0 <= self.write_interval <= 0.1:
            raise SettingsError("WRITE_INTERVAL must be between 0 and 0.1 seconds")
        if self.client_ip_header not in ("", "Fly-Client-IP", "X-Forwarded-For"):
            raise SettingsError("CLIENT_IP_HEADER must be empty, Fly-Client-IP or X-Forwarded-For")


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    """Every bound a client can run into. ``0`` turns a rate or count limit off where noted.

    Attributes:
        listen_timeout: seconds to a first successful LISTEN (else close 4001).
        idle_timeout: seconds without a received frame (else close 4002).
        max_topics_per_connection: topics one connection may hold.
        listen_rate: LISTEN/UNLISTEN per second per connection (0: off).
        listen_burst: LISTEN/UNLISTEN allowed at once.
        max_connections_per_ip: open WebSockets per client address (0: off).
        max_connections_per_user: connections one token ``sub`` may LISTEN on (0: off).
        connect_rate_per_ip: new WebSockets per second per address (0: off).
        connect_burst_per_ip: new WebSockets allowed at once per address.
        token_check_rate_per_ip: token signature checks per second per address (0: off).
        token_check_burst_per_ip: token checks allowed at once per address.
        token_check_rate_per_connection: token checks per second per connection (0: off).
        token_check_burst_per_connection: token checks allowed at once per connection.
        max_bad_tokens_per_connection: refused tokens in a row before close 4003 (0: never).
        max_revocations: token revocations each instance remembers.
        max_revocations_per_user: live revocations by ``jti`` per caller without
            ``realtime:revoke``.
        max_pending_per_ip: sockets per address without a complete request (0: off).
        max_frame_bytes: largest inbound WebSocket message, bytes (close 1009 beyond).
        max_body_bytes: largest HTTP request body, bytes (413 beyond).
        send_queue_max_bytes: per-connection send queue bound, bytes.
        send_queue_max_messages: per-connection send queue bound, frames.
        login_attempts_per_account: failed logins per email per ``login_window``.
        login_attempts_per_ip: failed logins per client address per ``login_window``.
        login_window: the login rate-limit window, seconds.
    """

    listen_timeout: float = 15.0
    idle_timeout: float = 330.0
    max_topics_per_connection: int = 50
    listen_rate: float = 10.0
    listen_burst: int = 20
    max_connections_per_ip: int = 1000
    max_connections_per_user: int = 20
    connect_rate_per_ip: float = 20.0
    connect_burst_per_ip: int = 40
    token_check_rate_per_ip: float = 50.0
    token_check_burst_per_ip: int = 200
    token_check_rate_per_connection: float = 1.0
    token_check_burst_per_connection: int = 10
    max_bad_tokens_per_connection: int = 10
    max_revocations: int = 100000
    max_revocations_per_user: int = 100
    max_pending_per_ip: int = 64
    max_frame_bytes: int = 16384
    max_body_bytes: int = 65536
    send_queue_max_bytes: int = 1048576
    send_queue_max_messages: int = 1000
    login_attempts_per_account: int = 5
    login_attempts_per_ip: int = 20
    login_window: float = 300.0

    def validate(self) -> None:
        """Check ranges.

        Raises:
            SettingsError: naming the variable out of range.
        """
        _positive(
            self, "listen_timeout", "idle_timeout", "max_topics_per_connection", "listen_burst", "connect_burst_per_ip",
            "token_check_burst_per_ip", "token_check_burst_per_connection", "max_revocations",
            "max_revocations_per_user", "max_frame_bytes", "max_body_bytes", "send_queue_max_bytes",
            "send_queue_max_messages", "login_attempts_per_account", "login_attempts_per_ip", "login_window",
        )  # fmt: skip
        _not_negative(
            self, "listen_rate", "max_connections_per_ip", "max_connections_per_user", "connect_rate_per_ip",
            "token_check_rate_per_ip", "token_check_rate_per_connection", "max_bad_tokens_per_connection",
            "max_pending_per_ip",
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """The broker: Redis pub/sub shared by all instances, or the in-process memory broker.

    Attributes:
        redis_url: ``redis://``, ``rediss://`` or ``unix://``; ``""``: memory broker.
        redis_channel: the pub/sub channel shared by all instances.
        redis_probe_interval: seconds of a quiet channel before a delivery probe (0: off).
        redis_probe_timeout: seconds a probe may take to come back before resubscribing.
        redis_firehose: also subscribe to ``redis_channel`` itself, where raw ``PUBLISH``
            envelopes land (every instance receives all of them).
        redis_cluster_nodes: Redis Cluster seed nodes, ``host:port`` comma-separated; set,
            it selects the cluster broker (sharded pub/sub) instead of ``redis_url``.
        presence_ttl: seconds a presence entry lives without a refresh (each instance
            refreshes its own every third of it): how long a dead instance's connections
            stay present.
        presence_max_clients: most clients a presence read lists (the counts stay exact).
        presence_show_address: put each connection's address in its presence ``info``.
    """

    redis_url: str = ""
    redis_channel: str = "realtime"
    redis_probe_interval: float = 15.0
    redis_probe_timeout: float = 5.0
    redis_firehose: bool = True
    redis_cluster_nodes: str = ""
    presence_ttl: float = 60.0
    presence_max_clients: int = 100
    presence_show_address: bool = False

    def validate(self) -> None:
        """Check the URL scheme, the channel and the probe's times.

        Raises:
            SettingsError: naming the variable at fault.
        """
        if not self.redis_channel:
            raise SettingsError("REDIS_CHANNEL must not be empty")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError("REDIS_URL must start with redis://, rediss:// or unix://")
        for node in filter(None, (n.strip() for n in self.redis_cluster_nodes.split(","))):
            host, sep, port = node.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise SettingsError(f"REDIS_CLUSTER_NODES must list host:port entries, not {node!r}")
        if self.redis_probe_interval < 0:
            raise SettingsError("REDIS_PROBE_INTERVAL must not be negative (0 turns the delivery probe off)")
        if self.redis_probe_timeout <= 0:
            raise SettingsError("REDIS_PROBE_TIMEOUT must be positive")
        if not 3 <= self.presence_ttl <= 86400:
            raise SettingsError("PRESENCE_TTL must be from 3 to 86400 seconds")
        if not 0 <= self.presence_max_clients <= 10_000:
            raise SettingsError("PRESENCE_MAX_CLIENTS must be from 0 to 10000")


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """Who may do what: signing keys, WS tokens, API keys, topic policy, upstream JWTs, sessions.

    Attributes:
        keys_dir: signing key directory.
        ws_signing_keys: PEM private keys (the first signs); overrides ``keys_dir``. Secret.
        ws_token_ttl: WS token lifetime, seconds.
        ws_token_issuer: ``iss`` of issued WS tokens, required on LISTEN.
        ws_token_audience: ``aud`` of issued WS tokens, required on LISTEN.
        api_keys: the API keys of ``API_KEYS`` (JSON). Secret.
        topics_file: TOML topic policy replacing the default (``""``: the default).
        default_user_scopes: space-separated scopes granted to new users.
        jwks_url: the upstream identity provider's JWKS URL (``AUTH_JWKS_URL``).
        issuer: required ``iss`` of upstream JWTs (``AUTH_ISSUER``).
        audience: required ``aud`` of upstream JWTs (``AUTH_AUDIENCE``).
        algorithms: space- or comma-separated upstream JWT algorithms (``AUTH_ALGORITHMS``).
        cookie: a cookie that may carry the upstream JWT (``AUTH_COOKIE``).
        session_cookie: name of the built-in login's session cookie.
        session_ttl: built-in login session lifetime, seconds.
        session_domain: ``Domain`` of the session cookie (``""``: this host only).
    """

    keys_dir: str = "./keys.d"
    ws_signing_keys: str = field(default="", repr=False)
    ws_token_ttl: int = 3600
    ws_token_issuer: str = "realtime"
    ws_token_audience: str = "realtime"
    api_keys: tuple[ApiKeyEntry, ...] = ()
    topics_file: str = ""
    default_user_scopes: str = "user:read:remote-control"
    jwks_url: str = field(default="", metadata={"env": "AUTH_JWKS_URL"})
    issuer: str = field(default="", metadata={"env": "AUTH_ISSUER"})
    audience: str = field(default="", metadata={"env": "AUTH_AUDIENCE"})
    algorithms: str = field(default="RS256", metadata={"env": "AUTH_ALGORITHMS"})
    cookie: str = field(default="", metadata={"env": "AUTH_COOKIE"})
    session_cookie: str = "realtime_session"
    session_ttl: int = 1209600
    session_domain: str = ""

    def validate(self) -> None:
        """Check the token lifetime, scopes, upstream JWT settings and the session cookie.

        Raises:
            SettingsError: naming the variable at fault.
        """
        _positive(self, "ws_token_ttl", "session_ttl")
        try:
            parse_scopes(self.default_user_scopes)
        except BadScope as exc:
            raise SettingsError(f"DEFAULT_USER_SCOPES: {exc}") from None
        bad = [a for a in self.algorithm_list if a not in UPSTREAM_ALGORITHMS]
        if bad or not self.algorithm_list:
            raise SettingsError(f"AUTH_ALGORITHMS must list some of {', '.join(UPSTREAM_ALGORITHMS)}")
        if self.jwks_url and not (self.issuer and self.audience):
            raise SettingsError("AUTH_JWKS_URL needs AUTH_ISSUER and AUTH_AUDIENCE")
        if not self.session_cookie:
            raise SettingsError("SESSION_COOKIE must not be empty")

    @property
    def algorithm_list(self) -> list[str]:
        """``algorithms`` split on spaces and commas."""
        return self.algorithms.replace(",", " ").split()


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    """The PostgreSQL database.

    Attributes:
        url: ``postgresql://user:password@host:5432/db`` (``DATABASE_URL``). Secret. ``""``:
            ``realtime serve`` starts an embedded PostgreSQL; ``none``: no database.
    """

    url: str = field(default="", repr=False, metadata={"env": "DATABASE_URL"})

    @property
    def enabled(self) -> bool:
        """``True`` unless ``DATABASE_URL=none`` (an empty URL gets the embedded database)."""
        return self.url != "none"

    def validate(self) -> None:
        """Check the URL scheme.

        Raises:
            SettingsError: naming ``DATABASE_URL``.
        """
        if self.url not in ("", "none") and not self.url.startswith(("postgres://", "postgresql://")):
            raise SettingsError("DATABASE_URL must start with postgres:// or postgresql:// (or be none: no database)")


@dataclass(frozen=True, slots=True)
class ObservabilitySettings:
    """Logs, Prometheus metrics and Sentry.

    Attributes:
        log_format: ``json``, ``console`` or ``auto`` (console on a terminal).
        log_level: ``debug``, ``info``, ``warning`` or ``error``.
        metrics_enabled: serve ``/metrics``.
        metrics_port: ``0``: ``/metrics`` on ``PORT``; else only on this port (up to 65535).
        metrics_probe_interval: seconds between latency probes (0: off).
        sentry_dsn: report unhandled errors to this Sentry DSN (``""``: off). Secret.
        sentry_environment: Sentry ``environment`` tag (``""``: ``ENVIRONMENT``).
    """

    log_format: str = "auto"
    log_level: str = "info"
    metrics_enabled: bool = True
    metrics_port: int = 0
    metrics_probe_interval: float = 5.0
    sentry_dsn: str = field(default="", repr=False)
    sentry_environment: str = ""

    def validate(self) -> None:
        """Check the log format, the metrics port and the probe interval.

        Raises:
            SettingsError: naming the variable at fault.
        """
        if self.log_format not in ("auto", "json", "console"):
            raise SettingsError("LOG_FORMAT must be auto, json or console")
        if not 0 <= self.metrics_port <= 65535:
            raise SettingsError("METRICS_PORT must be 0 (serve /metrics on PORT) or another port up to 65535")
        if self.metrics_probe_interval < 0:
            raise SettingsError("METRICS_PROBE_INTERVAL must not be negative (0 turns the latency probe off)")
