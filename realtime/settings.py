"""Settings: one frozen dataclass read from the environment once, at start-up.

Every field is documented in the README's "Settings" table; the environment variable
is the field name in upper case unless noted.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import orjson

from realtime.errors import SettingsError
from topics import BadScope, parse_scopes


@dataclass(frozen=True, slots=True)
class ApiKeyEntry:
    """One API key from ``API_KEYS``.

    Attributes:
        user_id: the user the key acts for (the WS token's ``sub``).
        api_key: the secret key.
        scopes: the scopes the key grants.
    """

    user_id: str
    api_key: str = field(repr=False)
    scopes: frozenset[str]


def parse_api_keys(text: str) -> tuple[ApiKeyEntry, ...]:
    """Parse ``API_KEYS``: ``[{"userId": 1, "apiKey": "...", "scopes": ["..."]}]``.

    Raises:
        SettingsError: naming the entry and field at fault, or for JSON that does not parse
            the line, column and reason (never the key itself).
    """
    if not text.strip():
        return ()
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:  # its msg names the problem, never the text around it
        raise SettingsError(f"API_KEYS is not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, list):
        raise SettingsError("API_KEYS must be a JSON array of objects")
    entries = []
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            raise SettingsError(f"API_KEYS[{index}] must be an object")
        user_id, api_key, scopes = item.get("userId"), item.get("apiKey"), item.get("scopes", [])
        if isinstance(user_id, bool) or not isinstance(user_id, int | str) or user_id == "":
            raise SettingsError(f"API_KEYS[{index}].userId must be a number or string")
        if not isinstance(api_key, str) or len(api_key) < 16:
            raise SettingsError(f"API_KEYS[{index}].apiKey must be a string of 16+ characters")
        if not isinstance(scopes, list):
            raise SettingsError(f"API_KEYS[{index}].scopes must be an array")
        try:
            parsed = parse_scopes(scopes)
        except BadScope as exc:
            raise SettingsError(f"API_KEYS[{index}].scopes: {exc}") from None
        entries.append(ApiKeyEntry(str(user_id), api_key, frozenset(parsed)))
    return tuple(entries)


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of the server, with its default.

    Times are in seconds, sizes in bytes.
    """

    host: str = "0.0.0.0"
    port: int = 4444
    redis_url: str = ""
    redis_channel: str = "realtime"
    redis_probe_interval: float = 15.0
    redis_probe_timeout: float = 5.0
    keys_dir: str = "./keys.d"
    ws_signing_keys: str = field(default="", repr=False)
    ws_token_ttl: int = 3600
    ws_token_issuer: str = "realtime"
    ws_token_audience: str = "realtime"
    api_keys: tuple[ApiKeyEntry, ...] = ()
    topics_file: str = ""
    listen_timeout: float = 15.0
    idle_timeout: float = 330.0
    max_topics_per_connection: int = 50
    listen_rate: float = 10.0
    listen_burst: int = 20
    max_connections_per_ip: int = 1000
    max_connections_per_user: int = 20
    connect_rate_per_ip: float = 20.0
    connect_burst_per_ip: int = 40
    client_ip_header: str = ""
    http_head_timeout: float = 10.0
    http_body_timeout: float = 30.0
    http_keepalive_timeout: float = 130.0
    max_pending_per_ip: int = 64
    token_check_rate_per_ip: float = 50.0
    token_check_burst_per_ip: int = 200
    token_check_rate_per_connection: float = 1.0
    token_check_burst_per_connection: int = 10
    max_bad_tokens_per_connection: int = 10
    max_revocations: int = 100000
    max_revocations_per_user: int = 100
    max_frame_bytes: int = 16384
    max_body_bytes: int = 65536
    send_queue_max_bytes: int = 1048576
    send_queue_max_messages: int = 1000
    write_interval: float = 0.008
    shutdown_grace: float = 10.0
    event_loop: str = "auto"
    log_format: str = "auto"
    log_level: str = "info"
    metrics_enabled: bool = True
    metrics_port: int = 0
    metrics_probe_interval: float = 5.0
    sentry_dsn: str = field(default="", repr=False)
    sentry_environment: str = ""
    database_url: str = field(default="", repr=False)
    default_user_scopes: str = "user:read:remote-control"
    auth_jwks_url: str = ""
    auth_issuer: str = ""
    auth_audience: str = ""
    auth_algorithms: str = "RS256"
    auth_cookie: str = ""
    environment: str = "production"
    session_cookie: str = "realtime_session"
    session_ttl: int = 1209600
    session_domain: str = ""
    login_attempts_per_account: int = 5
    login_attempts_per_ip: int = 20
    login_window: float = 300.0
    cors_origins: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read settings from ``environ`` (default ``os.environ``), then apply overrides.

        Raises:
            SettingsError: naming the variable whose value does not parse.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f.name.upper())
            if raw is None or raw == "":
                continue
            values[f.name] = _convert(f.name, f.type, raw)
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Check ranges.

        Raises:
            SettingsError: naming the variable out of range.
        """
        positive = (
            "port", "ws_token_ttl", "listen_timeout", "idle_timeout",
            "max_topics_per_connection", "max_frame_bytes", "max_body_bytes", "listen_burst", "connect_burst_per_ip",
            "send_queue_max_bytes", "send_queue_max_messages", "http_head_timeout", "http_body_timeout",
            "http_keepalive_timeout", "token_check_burst_per_ip", "token_check_burst_per_connection",
            "max_revocations", "max_revocations_per_user",
        )  # fmt: skip
        for name in positive:
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name.upper()} must be positive")
        if not 0 <= self.write_interval <= 0.1:
            raise SettingsError("WRITE_INTERVAL must be between 0 and 0.1 seconds")
        if self.shutdown_grace < 0:
            raise SettingsError("SHUTDOWN_GRACE must not be negative")
        for name in (
            "listen_rate", "max_connections_per_ip", "max_connections_per_user", "connect_rate_per_ip",
            "max_pending_per_ip", "token_check_rate_per_ip", "token_check_rate_per_connection",
            "max_bad_tokens_per_connection",
        ):  # fmt: skip
            if getattr(self, name) < 0:
                raise SettingsError(f"{name.upper()} must not be negative (0 turns the limit off)")
        if self.client_ip_header not in ("", "Fly-Client-IP", "X-Forwarded-For"):
            raise SettingsError("CLIENT_IP_HEADER must be empty, Fly-Client-IP or X-Forwarded-For")
        if self.event_loop not in ("auto", "asyncio", "uvloop"):
            raise SettingsError("EVENT_LOOP must be auto, asyncio or uvloop")
        if self.log_format not in ("auto", "json", "console"):
            raise SettingsError("LOG_FORMAT must be auto, json or console")
        if not self.redis_channel:
            raise SettingsError("REDIS_CHANNEL must not be empty")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError("REDIS_URL must start with redis://, rediss:// or unix://")
        if self.redis_probe_interval < 0:
            raise SettingsError("REDIS_PROBE_INTERVAL must not be negative (0 turns the delivery probe off)")
        if self.redis_probe_timeout <= 0:
            raise SettingsError("REDIS_PROBE_TIMEOUT must be positive")
        if not 0 <= self.metrics_port <= 65535 or (self.metrics_port and self.metrics_port == self.port):
            raise SettingsError("METRICS_PORT must be 0 (serve /metrics on PORT) or another port up to 65535")
        if self.metrics_probe_interval < 0:
            raise SettingsError("METRICS_PROBE_INTERVAL must not be negative (0 turns the latency probe off)")
        _validate_identity(self)


#: Asymmetric algorithms accepted for upstream JWTs (never ``none`` or HMAC).
UPSTREAM_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


def _validate_identity(s: Settings) -> None:
    """Check the database, upstream JWT, session and CORS settings."""
    if s.database_url not in ("", "none") and not s.database_url.startswith(("postgres://", "postgresql://")):
        raise SettingsError("DATABASE_URL must start with postgres:// or postgresql:// (or be none: no database)")
    try:
        parse_scopes(s.default_user_scopes)
    except BadScope as exc:
        raise SettingsError(f"DEFAULT_USER_SCOPES: {exc}") from None
    bad = [a for a in s.auth_algorithms.replace(",", " ").split() if a not in UPSTREAM_ALGORITHMS]
    if bad or not s.auth_algorithms.strip():
        raise SettingsError(f"AUTH_ALGORITHMS must list some of {', '.join(UPSTREAM_ALGORITHMS)}")
    if s.auth_jwks_url and not (s.auth_issuer and s.auth_audience):
        raise SettingsError("AUTH_JWKS_URL needs AUTH_ISSUER and AUTH_AUDIENCE")
    if s.auth_jwks_url and s.database_url == "none":
        raise SettingsError("AUTH_JWKS_URL needs a database (DATABASE_URL=none): upstream users are stored in it")
    if s.environment not in ("production", "development"):
        raise SettingsError("ENVIRONMENT must be production or development")
    for name in ("session_ttl", "login_attempts_per_account", "login_attempts_per_ip", "login_window"):
        if getattr(s, name) <= 0:
            raise SettingsError(f"{name.upper()} must be positive")
    if not s.session_cookie:
        raise SettingsError("SESSION_COOKIE must not be empty")


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name.upper()}={raw!r} is not a boolean (true/false)")


def _convert(name: str, type_name: object, raw: str) -> Any:
    try:
        if type_name == "int":
            return int(raw)
        if type_name == "float":
            return float(raw)
        if type_name == "bool":
            return _parse_bool(name, raw)
    except ValueError:
        raise SettingsError(f"{name.upper()}={raw!r} is not a number") from None
    if name == "api_keys":
        return parse_api_keys(raw)
    return raw
