"""Sentry's pure parts: no DSN means no client, and the scrubber removes every secret; no I/O.
An error reported from a real app: tests/integration/test_sentry.py."""

from __future__ import annotations

import orjson

from service.sentry import FILTERED, Scrubber, init_sentry
from tests.conftest import make_settings


def test_no_dsn_no_sentry() -> None:
    assert init_sentry(make_settings()) is False


def test_scrubber_covers_headers_fields_and_free_text() -> None:
    scrub = Scrubber(["configured-key-0123456789"])
    session_id = "Qx3_vK9-aB7cD2eF4gH6iJ8kL0mN1oP3qR5sT7uV9wX"  # secrets.token_urlsafe(32)
    event = {
        "request": {
            "headers": [["Authorization", "Bearer abc"], ["X-Other", "keep"]],
            "cookies": {"Cookie": "a=b"},
            "data": '{"email": "a@b.c", "password": "hunter2"}',
            "query_string": "auth_token=q1&x=1",
        },
        "message": "LISTEN with Bearer abc.def and Api-Key configured-key-0123456789",
        "extra": {
            "nested": [{"Password": "hunter2"}, "token=abc", {"new_password": "x"}, {"sessionId": "y"}],
            "fields": {"auth_token": "x", "apiKey": "y", "api_key": "z", "token": "t", "topic": "dream:update.a"},
            "json": 'body {"email": "a@b.c", "password": "pa\\"ss"} and {\'session_id\': \'s1\'}',
            "form": "email=a%40b.c&password=hunter2&realtime_session=abc&page=2",
            "text": f"looked up {session_id} at uuid 7f0c8a4e-9a54-4bd2-8f5e-0d8c0c6b8f1a",
        },
        "exception": {"values": [{"stacktrace": {"frames": [{"function": "login", "vars": {"raw": "hunter2"}}]}}]},
    }
    out = scrub(event, {})
    assert out["request"]["headers"] == [["Authorization", FILTERED], ["X-Other", "keep"]]
    assert "data" not in out["request"] and "cookies" not in out["request"]  # bodies never leave
    assert out["exception"]["values"][0]["stacktrace"]["frames"] == [{"function": "login"}]  # nor locals
    fields = out["extra"]["fields"]
    assert all(fields[k] == FILTERED for k in ("auth_token", "apiKey", "api_key", "token"))
    assert fields["topic"] == "dream:update.a"
    assert out["request"]["query_string"] == f"auth_token={FILTERED}&x=1"
    assert out["message"] == f"LISTEN with Bearer {FILTERED} and Api-Key {FILTERED}"
    assert out["extra"]["nested"] == [
        {"Password": FILTERED},
        f"token={FILTERED}",
        {"new_password": FILTERED},
        {"sessionId": FILTERED},
    ]
    assert (
        out["extra"]["json"]
        == f'body {{"email": "a@b.c", "password": "{FILTERED}"}} and {{\'session_id\': \'{FILTERED}\'}}'
    )
    assert out["extra"]["form"] == f"email=a%40b.c&password={FILTERED}&realtime_session={FILTERED}&page=2"
    assert out["extra"]["text"] == f"looked up {FILTERED} at uuid 7f0c8a4e-9a54-4bd2-8f5e-0d8c0c6b8f1a"
    text = orjson.dumps(out).decode()
    for secret in ("configured-key-0123456789", "hunter2", session_id, "s1"):
        assert secret not in text, secret


def test_the_scrubber_takes_linear_time_on_hostile_text() -> None:
    """Strings a client controls (a header, a query) reach the scrubber on the event loop:
    runs of backslashes, or of a secret word with no ``=``, once backtracked for seconds."""
    scrubber = Scrubber()
    hostile = ['"password": "' + "\\" * 5000, "token" * 20000, "'" + "token" * 3000, "x" * 100_000]
    for text in hostile:
        assert len(scrubber.text(text)) <= 16384 + len("[truncated]")
    assert scrubber.text('{"password": "a\\"b", "n": 1}') == '{"password": "[Filtered]", "n": 1}'
