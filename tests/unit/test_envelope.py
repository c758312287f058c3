"""Unit tests of the broker envelope codec (:mod:`realtime.envelope`): no I/O."""

from __future__ import annotations

import orjson
import pytest

from realtime.envelope import (
    MAX_JTI_LENGTH,
    MAX_SUB_LENGTH,
    InvalidEnvelope,
    Revocation,
    UnknownControl,
    decode_control,
    decode_publication,
    encode_control,
    encode_publication,
    message_text,
    parse_control,
    revocation_message,
)
from realtime.errors import BadMessage


def test_a_publication_round_trips() -> None:
    assert decode_publication(encode_publication("dream:update.a", "hi")) == ("dream:update.a", "hi", 0, "")
    assert orjson.loads(encode_publication("t.a", "m")) == {"topic": "t.a", "message": "m"}


def test_message_text_sends_strings_as_is_and_other_json_encoded() -> None:
    assert message_text("plain") == "plain"
    assert message_text({"a": [1, 2]}) == '{"a":[1,2]}'
    assert message_text(None) == "null"
    with pytest.raises(BadMessage):
        message_text(object())


def test_a_non_string_message_from_another_publisher_is_delivered_json_encoded() -> None:
    assert decode_publication(b'{"topic": "t.a", "message": {"x": 1}}') == ("t.a", '{"x":1}', 0, "")
    assert decode_publication(b'{"topic": "t.a", "message": 5}') == ("t.a", "5", 0, "")


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b'"a string"',
        b'{"message": "m"}',
        b'{"topic": "t.a"}',
        b'{"topic": 5, "message": "m"}',
        b'{"topic": "t.a", "message": ' + b"[" * 300 + b"]" * 300 + b"}",
    ],
)
def test_invalid_publications_raise_invalid_envelope(data: bytes) -> None:
    with pytest.raises(InvalidEnvelope):
        decode_publication(data)


def test_a_revocation_round_trips_through_the_control_channel() -> None:
    message = revocation_message(jti="j1", sub="7")
    decoded = decode_control(encode_control(message))
    assert parse_control(decoded) == Revocation(jti="j1", sub="7", at=message["at"])  # type: ignore[arg-type]


@pytest.mark.parametrize("data", [b"{", b"[1]", b"null"])
def test_control_payloads_that_are_not_objects_are_invalid(data: bytes) -> None:
    with pytest.raises(InvalidEnvelope):
        decode_control(data)


def test_unknown_control_types_are_named_and_truncated() -> None:
    with pytest.raises(UnknownControl) as info:
        parse_control({"type": "x" * 100})
    assert info.value.kind == "x" * 32


@pytest.mark.parametrize(
    "message",
    [
        {"type": "revoke", "jti": "j", "sub": None},  # no time
        {"type": "revoke", "jti": None, "sub": None, "at": 1.0},  # nothing to revoke
        {"type": "revoke", "jti": 5, "sub": None, "at": 1.0},
        {"type": "revoke", "jti": "j" * (MAX_JTI_LENGTH + 1), "sub": None, "at": 1.0},
        {"type": "revoke", "jti": None, "sub": "s" * (MAX_SUB_LENGTH + 1), "at": 1.0},
        {"type": "revoke", "jti": None, "sub": "7", "at": "yesterday"},
    ],
)
def test_invalid_revocations_are_refused(message: dict[str, object]) -> None:
    with pytest.raises(InvalidEnvelope):
        parse_control(message)
