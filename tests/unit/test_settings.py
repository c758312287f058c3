"""The settings: every README variable read into its group, defaults, parse errors, overrides.

Pure: no server, no sockets (the README is read as the source of the documented defaults).
"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from realtime.errors import SettingsError
from realtime.settings import ENV_NAMES, FLAT_NAMES, GROUPS, Settings
from service.cli import main

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = Settings()

#: A valid value, other than the default, for every variable.
SAMPLE = {
    "HOST": "127.0.0.1", "WORKERS": "3", "PORT": "5000", "REDIS_URL": "rediss://r:6380/1", "REDIS_CHANNEL": "rt",
    "REDIS_PROBE_INTERVAL": "0", "REDIS_PROBE_TIMEOUT": "2.5", "REDIS_FIREHOSE": "false", "REDIS_CLUSTER_NODES": "127.0.0.1:7000", "PRESENCE_TTL": "30", "PRESENCE_MAX_CLIENTS": "5", "PRESENCE_SHOW_ADDRESS": "true", "KEYS_DIR": "/k", "WS_SIGNING_KEYS": "pem",
    "WS_TOKEN_TTL": "60", "WS_TOKEN_ISSUER": "iss", "WS_TOKEN_AUDIENCE": "aud",
    "API_KEYS": '[{"userId": 1, "apiKey": "0123456789abcdef", "scopes": []}]', "TOPICS_FILE": "t.toml",
    "LISTEN_TIMEOUT": "1.5", "IDLE_TIMEOUT": "2.5", "MAX_TOPICS_PER_CONNECTION": "3", "LISTEN_RATE": "0",
    "LISTEN_BURST": "4", "MAX_CONNECTIONS_PER_IP": "0", "MAX_CONNECTIONS_PER_USER": "0", "CONNECT_RATE_PER_IP": "0.5",
    "CONNECT_BURST_PER_IP": "5", "TOKEN_CHECK_RATE_PER_IP": "0", "TOKEN_CHECK_BURST_PER_IP": "6",
    "TOKEN_CHECK_RATE_PER_CONNECTION": "0", "TOKEN_CHECK_BURST_PER_CONNECTION": "7",
    "MAX_BAD_TOKENS_PER_CONNECTION": "0", "MAX_REVOCATIONS": "8", "MAX_REVOCATIONS_PER_USER": "9",
    "CLIENT_IP_HEADER": "Fly-Client-IP", "HTTP_HEAD_TIMEOUT": "1", "HTTP_BODY_TIMEOUT": "2",
    "HTTP_KEEPALIVE_TIMEOUT": "3", "MAX_PENDING_PER_IP": "0", "MAX_FRAME_BYTES": "100", "MAX_BODY_BYTES": "200",
    "SEND_QUEUE_MAX_BYTES": "300", "SEND_QUEUE_MAX_MESSAGES": "400", "WRITE_INTERVAL": "0", "SHUTDOWN_GRACE": "0",
    "EVENT_LOOP": "asyncio", "LOG_FORMAT": "console", "LOG_LEVEL": "debug", "DATABASE_URL": "postgres://db/x",
    "DEFAULT_USER_SCOPES": "realtime:publish", "AUTH_JWKS_URL": "https://idp/jwks", "AUTH_ISSUER": "https://idp",
    "AUTH_AUDIENCE": "app", "AUTH_ALGORITHMS": "ES256, EdDSA", "AUTH_COOKIE": "jwt", "ENVIRONMENT": "development",
    "SESSION_COOKIE": "sid", "SESSION_TTL": "60", "SESSION_DOMAIN": "example.com", "LOGIN_ATTEMPTS_PER_ACCOUNT": "1",
    "LOGIN_ATTEMPTS_PER_IP": "2", "LOGIN_WINDOW": "0.5", "CORS_ORIGINS": "https://a.example",
    "METRICS_ENABLED": "false", "METRICS_PORT": "9100", "METRICS_PROBE_INTERVAL": "0", "SENTRY_DSN": "https://k@s/1",
    "SENTRY_ENVIRONMENT": "staging",
}  # fmt: skip


def readme_table() -> dict[str, str]:
    """README "Settings": variable -> documented default (``(unset)`` as is)."""
    section = (ROOT / "README.md").read_text().split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \| (`[^`]*`|\(unset\)) \|", section, flags=re.MULTILINE)
    return {name: default.strip("`") for name, default in rows}


def value(settings: Settings, variable: str) -> Any:
    group, field = FLAT_NAMES[variable.lower()]
    return getattr(getattr(settings, group), field)


def test_every_readme_variable_is_a_group_field_and_back() -> None:
    table = readme_table()
    assert set(table) == set(ENV_NAMES) == set(SAMPLE)
    assert len(ENV_NAMES) == sum(len(fields(cls)) for cls in GROUPS.values())  # no field left unread


#: Variables that need others to pass the checks.
NEEDS = {"AUTH_JWKS_URL": ("AUTH_ISSUER", "AUTH_AUDIENCE")}


@pytest.mark.parametrize("variable", ENV_NAMES)
def test_each_variable_fills_its_own_field(variable: str) -> None:
    given = (variable, *NEEDS.get(variable, ()))
    settings = Settings.from_env({name: SAMPLE[name] for name in given})
    assert {name for name in ENV_NAMES if value(settings, name) != value(DEFAULTS, name)} == set(given)


def test_all_variables_at_once() -> None:
    settings = Settings.from_env(SAMPLE)
    assert [name for name in ENV_NAMES if value(settings, name) == value(DEFAULTS, name)] == []
    assert settings.server.port == 5000 and settings.limits.max_frame_bytes == 100
    assert settings.broker.redis_url == "rediss://r:6380/1" and settings.auth.ws_token_ttl == 60
    assert settings.database.url == "postgres://db/x" and settings.observability.sentry_dsn == "https://k@s/1"
    assert settings.auth.algorithm_list == ["ES256", "EdDSA"] and settings.auth.api_keys[0].user_id == "1"


def test_defaults_are_the_readme_defaults() -> None:
    for variable, documented in readme_table().items():
        if documented == "(unset)":
            assert value(DEFAULTS, variable) in ("", ()), variable
        else:  # the documented default, given explicitly, changes nothing
            assert Settings.from_env({variable: documented}) == DEFAULTS, variable
    assert Settings.from_env({}) == DEFAULTS


def test_an_empty_variable_means_the_default() -> None:
    assert Settings.from_env(dict.fromkeys(ENV_NAMES, "")) == DEFAULTS


def test_reads_the_given_mapping_not_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "not-a-port")
    assert Settings.from_env({}).server.port == 4444
    with pytest.raises(SettingsError, match="PORT"):
        Settings.from_env()


@pytest.mark.parametrize(
    ("variable", "bad"),
    [
        ("PORT", "http"), ("WORKERS", "2.5"), ("MAX_FRAME_BYTES", "16k"), ("WRITE_INTERVAL", "fast"),
        ("IDLE_TIMEOUT", "inf"), ("LISTEN_RATE", "nan"), ("METRICS_ENABLED", "maybe"), ("METRICS_ENABLED", "t"),
        ("SESSION_TTL", "1e6"), ("LOGIN_WINDOW", "5m"),
    ],
)  # fmt: skip
def test_a_value_that_does_not_parse_names_the_variable(variable: str, bad: str) -> None:
    with pytest.raises(SettingsError, match=rf"^{variable}={bad!r}: "):
        Settings.from_env({variable: bad})


def test_every_bad_variable_is_named_at_once() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"PORT": "x", "LISTEN_BURST": "y", "METRICS_ENABLED": "z"})
    assert [part.split("=")[0] for part in str(caught.value).split("; ")] == ["PORT", "LISTEN_BURST", "METRICS_ENABLED"]


def test_booleans_accept_what_they_always_did() -> None:
    for raw in ("1", "true", "TRUE", " Yes ", "on"):
        assert Settings.from_env({"METRICS_ENABLED": raw}).observability.metrics_enabled is True, raw
    for raw in ("0", "false", "No", "OFF "):
        assert Settings.from_env({"METRICS_ENABLED": raw}).observability.metrics_enabled is False, raw


def test_api_keys_errors_say_where_and_never_the_key() -> None:
    secret = "a-secret-key-0123456789"
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"API_KEYS": f'[{{"userId": 7, "apiKey": "{secret}" "scopes": []}}]'})
    assert str(caught.value).startswith("API_KEYS is not valid JSON: line 1, column ")
    assert secret not in str(caught.value)
    with pytest.raises(SettingsError, match=r"^API_KEYS\[0\]\.apiKey must be"):
        Settings.from_env({"API_KEYS": '[{"userId": 7, "apiKey": "short"}]'})
    # the userId is the sub of the key's tokens: one too long to name in a revocation is refused
    with pytest.raises(SettingsError, match=r"^API_KEYS\[0\]\.userId must be at most 128 characters"):
        Settings.from_env({"API_KEYS": f'[{{"userId": "{"u" * 129}", "apiKey": "{secret}"}}]'})


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"port": 0}, "PORT"), ({"workers": 0}, "WORKERS"), ({"write_interval": 0.5}, "WRITE_INTERVAL"),
        ({"max_frame_bytes": 0}, "MAX_FRAME_BYTES"), ({"listen_rate": -1}, "LISTEN_RATE"),
        ({"redis_url": "http://r"}, "REDIS_URL"), ({"event_loop": "trio"}, "EVENT_LOOP"),
        ({"metrics_port": 4444}, "METRICS_PORT"), ({"client_ip_header": "X-Real-IP"}, "CLIENT_IP_HEADER"),
    ],
)  # fmt: skip
def test_ranges_are_checked_after_overrides(overrides: dict[str, Any], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env({}, **overrides)


def test_flat_overrides_reach_their_group() -> None:
    settings = DEFAULTS.with_overrides(port=5000, max_frame_bytes=100, database_url="none", auth_jwks_url="")
    assert (settings.server.port, settings.limits.max_frame_bytes, settings.database.url) == (5000, 100, "none")
    assert settings.auth == DEFAULTS.auth and DEFAULTS.server.port == 4444  # a copy; the original is untouched
    with pytest.raises(TypeError, match="'prot' is not a setting"):
        DEFAULTS.with_overrides(prot=5000)


def test_secrets_stay_out_of_repr() -> None:
    text = repr(Settings.from_env(SAMPLE))
    assert "pem" not in text and "0123456789abcdef" not in text and "k@s" not in text and "db/x" not in text


def test_cli_flags_override_the_environment_through_the_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PORT", "4444")
    monkeypatch.setenv("WORKERS", "1")
    assert main(["serve", "--port", "0"]) == 2  # the flag's value, checked like the variable's
    assert "PORT must be positive" in capsys.readouterr().err
    assert main(["serve", "--workers", "0"]) == 2
    assert "WORKERS must be positive" in capsys.readouterr().err
    monkeypatch.setenv("WORKERS", "two")
    assert main(["serve"]) == 2  # WORKERS is read (and refused) by the settings, like every variable
    assert "WORKERS='two'" in capsys.readouterr().err
    monkeypatch.setenv("WORKERS", "2")
    monkeypatch.setenv("METRICS_PORT", "9100")
    assert main(["serve"]) == 2
    assert "METRICS_PORT cannot be shared" in capsys.readouterr().err


def test_the_soft_fd_limit_is_raised_to_the_hard_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import resource

    from service import runner

    limits = {"now": (1024, 4096)}
    monkeypatch.setattr(resource, "getrlimit", lambda _: limits["now"])
    monkeypatch.setattr(resource, "setrlimit", lambda _, value: limits.__setitem__("now", value))
    assert runner.raise_fd_limit() == 4096 and limits["now"] == (4096, 4096)
    limits["now"] = (1024, resource.RLIM_INFINITY)
    assert runner.raise_fd_limit() == runner.MAX_FD_LIMIT
    limits["now"] = (8192, 4096 * 4)
    monkeypatch.setattr(resource, "setrlimit", lambda *_: (_ for _ in ()).throw(ValueError("not allowed")))
    assert runner.raise_fd_limit() == 8192  # could not: the old limit stands
