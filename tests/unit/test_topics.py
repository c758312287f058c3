"""Unit tests: topic grammar, scope grammar, topic policy (pure, no I/O beyond tmp files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from topics import (
    DEFAULT_POLICY,
    BadScope,
    BadTopic,
    PolicyError,
    load_policy,
    parse_scope,
    parse_scopes,
    parse_topic,
)


@pytest.mark.parametrize(
    ("topic", "name", "target"),
    [
        ("channel:update.42", "channel:update", "42"),
        ("channel:prediction:lock.42", "channel:prediction:lock", "42"),
        ("remote-control:command.7", "remote-control:command", "7"),
        ("system:notice", "system:notice", None),
        ("a:b.Z_-9", "a:b", "Z_-9"),
        ("dream:update." + "x" * 64, "dream:update", "x" * 64),
    ],
)
def test_valid_topics(topic: str, name: str, target: str | None) -> None:
    parsed = parse_topic(topic)
    assert (parsed.topic, parsed.name, parsed.target) == (topic, name, target)


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "channel",
        "channel.42",
        "Channel:update.42",
        "channel:Update.42",
        "channel:update.",
        "channel:update.4 2",
        "channel:update.42.43",
        "channel:update." + "x" * 65,
        "a:b:c:d.1",
        "1channel:update.1",
        "channel::update.1",
        "channel:update.é",
        "channel:update.../etc/passwd",
        "a:b." + "x" * 60 + ":" + "y" * 70,
        42,
        None,
        ["channel:update.1"],
    ],
)
def test_malformed_topics(topic: object) -> None:
    with pytest.raises(BadTopic):
        parse_topic(topic)


def test_topic_length_limit_is_128_bytes() -> None:
    name = "a" * 60 + ":" + "b" * 60  # 121 bytes
    assert parse_topic(name + ".123456").topic  # 128
    with pytest.raises(BadTopic, match="128"):
        parse_topic(name + ".1234567")


@pytest.mark.parametrize("scope", ["user:read", "user:read:chat", "user:read:remote-control", "realtime:publish"])
def test_valid_scopes(scope: str) -> None:
    assert parse_scope(scope) == scope


@pytest.mark.parametrize("scope", ["user", "user:", ":read", "User:read", "user:read:chat:x", "user read", "", 3])
def test_malformed_scopes(scope: object) -> None:
    with pytest.raises(BadScope):
        parse_scope(scope)


def test_parse_scopes_space_separated_and_list() -> None:
    assert parse_scopes("a:b  c:d") == {"a:b", "c:d"}
    assert parse_scopes(["a:b"]) == {"a:b"}
    assert parse_scopes("") == frozenset()


def test_default_policy_has_the_seed_topics() -> None:
    rules = DEFAULT_POLICY.rules
    for name in ("channel:update", "channel:follow", "channel:prediction:lock", "dream:job:progress"):
        assert name in rules
    assert rules["remote-control:command"].scope == "user:read:remote-control"
    assert rules["remote-control:command"].target == "self"
    assert rules["dream:update"].scope is None and rules["dream:update"].target == "any"
    assert rules["dream:job:progress"].scope is None


def test_policy_check_target_rules() -> None:
    parsed, rule = DEFAULT_POLICY.check("dream:update.abc")
    assert parsed.target == "abc" and rule.name == "dream:update"
    with pytest.raises(BadTopic, match="unknown topic name"):
        DEFAULT_POLICY.check("dream:delete.abc")
    with pytest.raises(BadTopic, match="needs a target"):
        DEFAULT_POLICY.check("dream:update")
    with pytest.raises(BadTopic, match="global"):
        DEFAULT_POLICY.check("system:notice.1")
    assert DEFAULT_POLICY.check("system:notice")[0].target is None


def test_load_policy_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "topics.toml"
    path.write_text(
        '[topics."game:score"]\ntarget = "any"\n\n'
        '[topics."user:inbox:message"]\nscope = "user:read:inbox"\ntarget = "self"\n'
    )
    policy = load_policy(path)
    assert set(policy.rules) == {"game:score", "user:inbox:message"}
    assert policy.rules["user:inbox:message"].scope == "user:read:inbox"
    with pytest.raises(BadTopic):
        policy.check("dream:update.1")  # the file replaces the default


def test_load_policy_default_when_unset() -> None:
    assert load_policy("") is DEFAULT_POLICY


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "non-empty"),
        ('[topics."Bad:name"]\n', "topic name"),
        ('[topics."a:b"]\ntarget = "everyone"\n', "target"),
        ('[topics."a:b"]\nscope = "nope"\n', "scope"),
        ('[topics."a:b"]\ncolour = "red"\n', "unknown keys"),
        ("not toml [", "cannot load"),
    ],
)
def test_bad_policy_files(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "topics.toml"
    path.write_text(text)
    with pytest.raises(PolicyError, match=match):
        load_policy(path)


def test_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot load"):
        load_policy(tmp_path / "nope.toml")
