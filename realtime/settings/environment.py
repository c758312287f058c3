"""Reading the settings from the environment, once, with ``environs`` (built on marshmallow).

``environs`` parses and types each variable (marshmallow's ``Integer``, ``Float``, a boolean
field accepting what the README documents, and our ``API_KEYS`` parser); its deferred mode
collects every variable that does not parse, so one :class:`SettingsError` names them all. An
unset or empty variable takes the default. Ranges are checked afterwards, by the groups'
``validate``, so that values given in code (CLI flags, tests) are checked the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import marshmallow as ma
from environs import Env, EnvValidationError

from realtime.errors import SettingsError
from realtime.settings.api_keys import ApiKeyEntry, parse_api_keys
from realtime.settings.groups import (
    AuthSettings,
    BrokerSettings,
    DatabaseSettings,
    LimitsSettings,
    ObservabilitySettings,
    ServerSettings,
)


class Switch(ma.fields.Boolean):
    """A boolean variable: ``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``, any
    case, surrounding blanks ignored (exactly what the settings accepted before ``environs``)."""

    truthy = {"1", "true", "yes", "on"}
    falsy = {"0", "false", "no", "off"}
    default_error_messages = {"invalid": "Not a valid boolean (true/false)."}

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> bool:
        return super()._deserialize(value.strip().lower() if isinstance(value, str) else value, attr, data, **kwargs)


def _api_keys(raw: str) -> tuple[ApiKeyEntry, ...]:
    try:
        return parse_api_keys(raw)
    except SettingsError as exc:  # its message names API_KEYS and never holds a key
        raise ma.ValidationError(str(exc)) from None


class SettingsEnv(Env):
    """An ``environs.Env`` over a given mapping (default ``os.environ``), in deferred mode.

    Call :meth:`check` after reading every variable.

    Args:
        environ: the variables to read; ``""`` counts as unset (README: "an empty value
            means the default").
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        super().__init__(eager=False)
        self._source = environ
        self.add_parser_from_field("switch", Switch)
        self.add_parser("api_keys_json", _api_keys)

    def _get_value(self, env_key: str, default: Any) -> Any:
        # environs' one hook for where values come from (it reads os.environ, then .env files)
        value = self._source.get(env_key, "")
        return default if value == "" else value

    def flag(self, name: str, default: bool) -> bool:
        """Read a boolean variable (see :class:`Switch`)."""
        value: bool = self.switch(name, default)
        return value

    def api_keys(self, name: str) -> tuple[ApiKeyEntry, ...]:
        """Read a JSON array of API keys (see :func:`parse_api_keys`)."""
        value: tuple[ApiKeyEntry, ...] = self.api_keys_json(name, "")
        return value

    def check(self) -> None:
        """Stop if any variable read so far did not parse.

        Raises:
            SettingsError: naming every such variable, with its value (never the value of
                ``API_KEYS``, whose message says line, column and reason instead).
        """
        try:
            self.seal()
        except EnvValidationError as exc:
            errors: Mapping[str, list[str]] = exc.error_messages  # type: ignore[assignment]
            raise SettingsError(
                "; ".join(self._describe(name, messages) for name, messages in errors.items())
            ) from None

    def _describe(self, name: str, messages: list[str]) -> str:
        text = " ".join(str(m) for m in messages)
        if text.startswith(name):
            return text
        return f"{name}={self._source.get(name, '')!r}: {text}"


def read_server(env: SettingsEnv) -> ServerSettings:
    """The server group from ``env``."""
    d = ServerSettings()
    return ServerSettings(
        host=env.str("HOST", d.host),
        port=env.int("PORT", d.port),
        workers=env.int("WORKERS", d.workers),
        event_loop=env.str("EVENT_LOOP", d.event_loop),
        shutdown_grace=env.float("SHUTDOWN_GRACE", d.shutdown_grace),
        environment=env.str("ENVIRONMENT", d.environment),
        write_interval=env.float("WRITE_INTERVAL", d.write_interval),
        client_ip_header=env.str("CLIENT_IP_HEADER", d.client_ip_header),
        http_head_timeout=env.float("HTTP_HEAD_TIMEOUT", d.http_head_timeout),
        http_body_timeout=env.float("HTTP_BODY_TIMEOUT", d.http_body_timeout),
        http_keepalive_timeout=env.float("HTTP_KEEPALIVE_TIMEOUT", d.http_keepalive_timeout),
        cors_origins=env.str("CORS_ORIGINS", d.cors_origins),
    )


def read_limits(env: SettingsEnv) -> LimitsSettings:
    """The limits group from ``env``."""
    d = LimitsSettings()
    return LimitsSettings(
        listen_timeout=env.float("LISTEN_TIMEOUT", d.listen_timeout),
        idle_timeout=env.float("IDLE_TIMEOUT", d.idle_timeout),
        max_topics_per_connection=env.int("MAX_TOPICS_PER_CONNECTION", d.max_topics_per_connection),
        listen_rate=env.float("LISTEN_RATE", d.listen_rate),
        listen_burst=env.int("LISTEN_BURST", d.listen_burst),
        max_connections_per_ip=env.int("MAX_CONNECTIONS_PER_IP", d.max_connections_per_ip),
        max_connections_per_user=env.int("MAX_CONNECTIONS_PER_USER", d.max_connections_per_user),
        connect_rate_per_ip=env.float("CONNECT_RATE_PER_IP", d.connect_rate_per_ip),
        connect_burst_per_ip=env.int("CONNECT_BURST_PER_IP", d.connect_burst_per_ip),
        token_check_rate_per_ip=env.float("TOKEN_CHECK_RATE_PER_IP", d.token_check_rate_per_ip),
        token_check_burst_per_ip=env.int("TOKEN_CHECK_BURST_PER_IP", d.token_check_burst_per_ip),
        token_check_rate_per_connection=env.float("TOKEN_CHECK_RATE_PER_CONNECTION", d.token_check_rate_per_connection),
        token_check_burst_per_connection=env.int(
            "TOKEN_CHECK_BURST_PER_CONNECTION", d.token_check_burst_per_connection
        ),
        max_bad_tokens_per_connection=env.int("MAX_BAD_TOKENS_PER_CONNECTION", d.max_bad_tokens_per_connection),
        max_revocations=env.int("MAX_REVOCATIONS", d.max_revocations),
        max_revocations_per_user=env.int("MAX_REVOCATIONS_PER_USER", d.max_revocations_per_user),
        max_pending_per_ip=env.int("MAX_PENDING_PER_IP", d.max_pending_per_ip),
        max_frame_bytes=env.int("MAX_FRAME_BYTES", d.max_frame_bytes),
        max_body_bytes=env.int("MAX_BODY_BYTES", d.max_body_bytes),
        send_queue_max_bytes=env.int("SEND_QUEUE_MAX_BYTES", d.send_queue_max_bytes),
        send_queue_max_messages=env.int("SEND_QUEUE_MAX_MESSAGES", d.send_queue_max_messages),
        login_attempts_per_account=env.int("LOGIN_ATTEMPTS_PER_ACCOUNT", d.login_attempts_per_account),
        login_attempts_per_ip=env.int("LOGIN_ATTEMPTS_PER_IP", d.login_attempts_per_ip),
        login_window=env.float("LOGIN_WINDOW", d.login_window),
    )


def read_broker(env: SettingsEnv) -> BrokerSettings:
    """The broker group from ``env``."""
    d = BrokerSettings()
    return BrokerSettings(
        redis_url=env.str("REDIS_URL", d.redis_url),
        redis_channel=env.str("REDIS_CHANNEL", d.redis_channel),
        redis_probe_interval=env.float("REDIS_PROBE_INTERVAL", d.redis_probe_interval),
        redis_probe_timeout=env.float("REDIS_PROBE_TIMEOUT", d.redis_probe_timeout),
        redis_firehose=env.flag("REDIS_FIREHOSE", d.redis_firehose),
        redis_cluster_nodes=env.str("REDIS_CLUSTER_NODES", d.redis_cluster_nodes),
        presence_ttl=env.float("PRESENCE_TTL", d.presence_ttl),
        presence_max_clients=env.int("PRESENCE_MAX_CLIENTS", d.presence_max_clients),
        presence_show_address=env.flag("PRESENCE_SHOW_ADDRESS", d.presence_show_address),
    )


def read_auth(env: SettingsEnv) -> AuthSettings:
    """The auth group from ``env``."""
    d = AuthSettings()
    return AuthSettings(
        keys_dir=env.str("KEYS_DIR", d.keys_dir),
        ws_signing_keys=env.str("WS_SIGNING_KEYS", d.ws_signing_keys),
        ws_token_ttl=env.int("WS_TOKEN_TTL", d.ws_token_ttl),
        ws_token_issuer=env.str("WS_TOKEN_ISSUER", d.ws_token_issuer),
        ws_token_audience=env.str("WS_TOKEN_AUDIENCE", d.ws_token_audience),
        api_keys=env.api_keys("API_KEYS"),
        topics_file=env.str("TOPICS_FILE", d.topics_file),
        default_user_scopes=env.str("DEFAULT_USER_SCOPES", d.default_user_scopes),
        jwks_url=env.str("AUTH_JWKS_URL", d.jwks_url),
        issuer=env.str("AUTH_ISSUER", d.issuer),
        audience=env.str("AUTH_AUDIENCE", d.audience),
        algorithms=env.str("AUTH_ALGORITHMS", d.algorithms),
        cookie=env.str("AUTH_COOKIE", d.cookie),
        session_cookie=env.str("SESSION_COOKIE", d.session_cookie),
        session_ttl=env.int("SESSION_TTL", d.session_ttl),
        session_domain=env.str("SESSION_DOMAIN", d.session_domain),
    )


def read_database(env: SettingsEnv) -> DatabaseSettings:
    """The database group from ``env``."""
    return DatabaseSettings(url=env.str("DATABASE_URL", DatabaseSettings().url))


def read_observability(env: SettingsEnv) -> ObservabilitySettings:
    """The observability group from ``env``."""
    d = ObservabilitySettings()
    return ObservabilitySettings(
        log_format=env.str("LOG_FORMAT", d.log_format),
        log_level=env.str("LOG_LEVEL", d.log_level),
        metrics_enabled=env.flag("METRICS_ENABLED", d.metrics_enabled),
        metrics_port=env.int("METRICS_PORT", d.metrics_port),
        metrics_probe_interval=env.float("METRICS_PROBE_INTERVAL", d.metrics_probe_interval),
        sentry_dsn=env.str("SENTRY_DSN", d.sentry_dsn),
        sentry_environment=env.str("SENTRY_ENVIRONMENT", d.sentry_environment),
    )
