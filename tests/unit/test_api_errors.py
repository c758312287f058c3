"""The one API error type and its two renderers: pure, no I/O.

The README's error codes (the "HTTP API" errors line, the ``/api/v1`` envelope line and
the auth-failure reasons of the metrics table) are read from README.md and each must be
produced by :class:`http_api.api_error.ApiError` through a renderer.
"""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from http_api.api_error import CODES, ApiError, AuthError, AuthReason, InvalidFields
from http_api.body import BodyError
from http_api.render import (
    ENVELOPE_CODES,
    RenderedError,
    auth_reason,
    is_envelope,
    render_envelope,
    render_plain,
)

README = (Path(__file__).parents[2] / "README.md").read_text()
PLAIN_CHALLENGE = {"WWW-Authenticate": 'Api-Key realm="realtime"'}
ENVELOPE_CHALLENGE = {"WWW-Authenticate": 'Api-Key realm="realtime", Bearer realm="realtime"'}


def paragraph(starting: str) -> str:
    """The README paragraph that starts with ``starting``."""
    start = README.index(starting)
    end = README.find("\n\n", start)
    return README[start : end if end != -1 else None]


def test_every_plain_code_in_the_readme_is_rendered_from_an_api_error() -> None:
    line = paragraph('Errors are JSON `{"error": "<code>"')
    codes = line.split("stable code:", 1)[1].split("Every response carries", 1)[0]
    # a code, then maybe "(<status>..." whose own backticks (`fields`...) are not codes
    documented = re.findall(r"`([a-z_]+)`(?:\s*\((\d{3})?[^()]*\))?", codes)
    assert {c for c, _ in documented} >= {"bad_request", "unauthorized", "forbidden", "internal"}, documented
    for code, status in documented:
        statuses = [int(status)] if status else [s for s, c in CODES.items() if c == code]
        assert statuses, f"no status renders {code}"
        assert render_plain(ApiError(statuses[0], "x")).body["error"] == code


def test_every_envelope_code_in_the_readme_is_rendered_from_an_api_error() -> None:
    line = paragraph("Every answer is the e-dream envelope")
    documented = re.findall(r"(\d{3})(?:\s+`([A-Z_]+)`)?(?:\s+\(`([^`]+)`\))?", line)
    assert {int(s) for s, _, _ in documented} >= {400, 401, 403, 404, 415, 503}, documented
    for status, code, message in documented:
        body = render_envelope(ApiError(int(status))).body
        assert body["success"] is False and body["errorCode"] == (code or ENVELOPE_CODES[int(status)][0])
        if message:
            assert body["message"] == message
    bad = render_envelope(InvalidFields({"name": ["Missing data for required field."]})).body
    assert bad["data"] == [{"field": "name", "message": "Missing data for required field."}]


def test_auth_reasons_are_the_documented_metric_labels() -> None:
    row = next(line for line in README.splitlines() if line.startswith("| `realtime_auth_failures_total`"))
    cell = row.split("|")[4]  # "... `missing_credentials` (none sent), ... and 403s (`forbidden`)"
    documented = set(re.findall(r"`([a-z_]+)` \(", cell)) | set(re.findall(r"\(`([a-z_]+)`\)", cell))
    assert documented == {r.value for r in AuthReason}


def test_plain_body_shapes() -> None:
    assert render_plain(ApiError(400, "bad scope", fields={"scope": ["bad"]})).body == {
        "error": "bad_request",
        "message": "bad scope",
        "fields": {"scope": ["bad"]},
    }
    forbidden = render_plain(AuthError(AuthReason.FORBIDDEN, "lacks realtime:publish", missing_scopes=["a:b"]))
    assert forbidden.status == 403 and forbidden.headers == {}
    assert forbidden.body == {"error": "forbidden", "message": "lacks realtime:publish", "missing_scopes": ["a:b"]}
    assert render_plain(ApiError(404)).body == {"error": "not_found", "message": "Not Found"}
    assert render_plain(ApiError(418, "teapot")).body == {"error": "error", "message": "teapot"}
    assert render_plain(ApiError(499)).body == {"error": "error", "message": "Error"}


def test_plain_401_challenges_for_an_api_key_and_keeps_the_explanation() -> None:
    rendered = render_plain(AuthError(AuthReason.MISSING_CREDENTIALS, "missing credentials"))
    assert rendered.status == 401 and rendered.headers == PLAIN_CHALLENGE
    assert rendered.body == {"error": "unauthorized", "message": "missing credentials"}


def test_envelope_never_says_why_auth_failed() -> None:
    for reason in AuthReason:
        error = AuthError(reason, "invalid API key", missing_scopes=["a:b"] if reason is AuthReason.FORBIDDEN else None)
        rendered = render_envelope(error)
        if reason is AuthReason.FORBIDDEN:
            assert rendered.headers == {}
            assert rendered.body == {
                "success": False,
                "data": None,
                "message": "Action not allowed.",
                "errorCode": "FORBIDDEN",
            }
        else:
            assert rendered.headers == ENVELOPE_CHALLENGE
            assert rendered.body == {
                "success": False,
                "data": None,
                "message": "Unauthorized.",
                "errorCode": "UNAUTHORIZED",
            }
    own = render_envelope(ApiError(403, "Action not allowed: this needs a user account."))
    assert own.body["message"] == "Action not allowed: this needs a user account."


def test_body_errors_in_both_families() -> None:
    nul = BodyError(400, "sub: NUL characters are not allowed", "sub", "contains NUL")
    assert render_plain(nul).body == {
        "error": "bad_request",
        "message": "sub: NUL characters are not allowed",
        "fields": {"sub": ["contains NUL"]},
    }
    assert render_envelope(nul).body == {
        "success": False,
        "data": [{"field": "sub", "message": "contains NUL"}],
        "message": "sub: NUL characters are not allowed.",
        "errorCode": "BAD_REQUEST",
    }
    assert render_envelope(BodyError(400, "request body is required", problem="required")).body["message"] == (
        "Request body is required."
    )
    media = BodyError(415, "request body must be application/json", problem="not JSON")
    assert render_plain(media).body == {
        "error": "unsupported_media_type",
        "message": "request body must be application/json",
    }
    assert render_envelope(media).body == {
        "success": False,
        "data": None,
        "message": "Send application/json.",
        "errorCode": "UNSUPPORTED_MEDIA_TYPE",
    }


@pytest.mark.parametrize(
    ("messages", "plain_message", "data", "envelope_message"),
    [
        (
            {"take": ["Not a valid integer."]},
            "invalid field(s): take",
            [{"field": "take", "message": "Not a valid integer."}],
            "Not a valid integer.",
        ),
        (
            {"take": ["Not a valid integer."], "skip": ["Too small."]},
            "invalid field(s): skip, take",
            [{"field": "skip", "message": "Too small."}, {"field": "take", "message": "Not a valid integer."}],
            "Invalid request.",
        ),
        (
            {"meta": {"size": ["Not a valid integer."]}},
            "invalid field(s): meta",
            [{"field": "meta.size", "message": "Not a valid integer."}],
            "Not a valid integer.",
        ),
        (
            ["Invalid input type."],
            "invalid field(s): body",
            [{"field": "body", "message": "Invalid input type."}],
            None,
        ),
    ],
)
def test_invalid_fields_in_both_families(
    messages: dict[str, object] | list[str],
    plain_message: str,
    data: list[dict[str, str]],
    envelope_message: str | None,
) -> None:
    error = InvalidFields(messages)
    plain = render_plain(error).body
    assert plain["error"] == "bad_request" and plain["message"] == plain_message
    assert plain["fields"] == (messages if isinstance(messages, dict) else {"body": messages})
    envelope = render_envelope(error).body
    assert envelope["errorCode"] == "BAD_REQUEST" and envelope["data"] == data
    assert envelope["message"] == (envelope_message or data[0]["message"])


def test_headers_and_sentences_reach_both_families() -> None:
    error = ApiError(503, "the database is unavailable; try again", sentence="The database is unavailable.")
    assert render_plain(error).body["message"] == "the database is unavailable; try again"
    assert render_envelope(error).body == {
        "success": False,
        "data": None,
        "message": "The database is unavailable.",
        "errorCode": "SERVICE_UNAVAILABLE",
    }
    limited = ApiError(429, "too many login attempts", headers={"Retry-After": "60"})
    assert render_plain(limited).headers == render_envelope(limited).headers == {"Retry-After": "60"}
    assert render_envelope(ApiError(408, "too slow")).body["errorCode"] == "REQUEST_TIMEOUT"
    assert render_envelope(ApiError(418, "teapot")).body["errorCode"] == "ERROR"  # a status without a code


def test_rendered_error_keeps_the_error_for_outer_middlewares() -> None:
    error = AuthError(AuthReason.EXPIRED, "invalid bearer token: Signature has expired")
    plain = RenderedError(error, render_plain)
    assert plain.status == 401 and plain.content_type == "application/json"
    assert plain.headers["WWW-Authenticate"] == PLAIN_CHALLENGE["WWW-Authenticate"]
    assert orjson.loads(plain.text or "") == render_plain(error).body
    assert auth_reason(plain) is AuthReason.EXPIRED and not is_envelope(plain)
    envelope = RenderedError(error, render_envelope)
    assert auth_reason(envelope) is AuthReason.EXPIRED and is_envelope(envelope)
    assert auth_reason(RenderedError(ApiError(404), render_plain)) is None
