"""The topic policy: which topic names exist, what scope each needs, and who may target.

A policy maps each topic *name* (the part before ``.``) to a :class:`TopicRule`:

* ``scope``: the scope a WS token must carry to LISTEN, or ``None`` for a public topic
  that needs no token;
* ``target``: ``"any"`` (any target id), ``"self"`` (the target must equal the token's
  ``sub``, so a user hears only their own topic) or ``"none"`` (a global topic without a
  target).

Operators replace the default with a TOML file (setting ``TOPICS_FILE``)::

    [topics."remote-control:command"]
    scope = "user:read:remote-control"
    target = "self"

    [topics."dream:update"]   # public: no scope
    target = "any"
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from topics.errors import BadScope, BadTopic, PolicyError
from topics.grammar import TOPIC_NAME_RE, ParsedTopic, parse_topic
from topics.scopes import Scope, parse_scope

TargetRule = Literal["any", "self", "none"]
_TARGET_RULES: tuple[TargetRule, ...] = ("any", "self", "none")


@dataclass(frozen=True, slots=True)
class TopicRule:
    """The rule for one topic name.

    Attributes:
        name: the topic name, e.g. ``remote-control:command``.
        scope: the scope required to LISTEN, or ``None`` when the topic is public.
        target: ``"any"``, ``"self"`` or ``"none"`` (see the module docstring).
    """

    name: str
    scope: Scope | None
    target: TargetRule


class TopicPolicy:
    """An immutable set of :class:`TopicRule`, looked up by topic name."""

    __slots__ = ("_rules",)

    def __init__(self, rules: Mapping[str, TopicRule]) -> None:
        """Build a policy.

        Args:
            rules: topic name -> rule.
        """
        self._rules = dict(rules)

    @property
    def rules(self) -> Mapping[str, TopicRule]:
        """Topic name -> rule (read-only view)."""
        return dict(self._rules)

    def check(self, value: object) -> tuple[ParsedTopic, TopicRule]:
        """Parse a topic and find its rule.

        Args:
            value: the candidate topic string.

        Returns:
            The parsed topic and its rule.

        Raises:
            BadTopic: if the topic is malformed, its name is not in the policy, or its
                target does not fit the rule (missing for ``any``/``self``, present for
                ``none``).
        """
        parsed = parse_topic(value)
        rule = self._rules.get(parsed.name)
        if rule is None:
            raise BadTopic(f"unknown topic name {parsed.name!r}")
        if rule.target == "none":
            if parsed.target is not None:
                raise BadTopic(f"topic {parsed.name!r} is global and takes no target")
        elif parsed.target is None:
            raise BadTopic(f"topic {parsed.name!r} needs a target: {parsed.name}.<id>")
        return parsed, rule


def _rule(name: str, scope: str | None, target: TargetRule) -> tuple[str, TopicRule]:
    return name, TopicRule(name, None if scope is None else Scope(scope), target)


DEFAULT_POLICY = TopicPolicy(
    dict(
        [
            _rule("channel:update", None, "any"),
            _rule("channel:follow", "moderator:read:followers", "any"),
            _rule("channel:prediction:lock", "channel:read:predictions", "self"),
            _rule("remote-control:command", "user:read:remote-control", "self"),
            _rule("dream:update", None, "any"),
            _rule("dream:job:progress", None, "any"),
            _rule("system:notice", None, "none"),
        ]
    )
)
"""The policy used when ``TOPICS_FILE`` is not set."""


def policy_from_mapping(data: Mapping[str, object]) -> TopicPolicy:
    """Build a policy from the parsed TOML document (``{"topics": {name: {...}}}``).

    Raises:
        PolicyError: naming the offending topic and field.
    """
    table = data.get("topics")
    if not isinstance(table, dict) or not table:
        raise PolicyError("policy needs a non-empty [topics] table")
    rules: dict[str, TopicRule] = {}
    for name, spec in table.items():
        if TOPIC_NAME_RE.fullmatch(name) is None:
            raise PolicyError(f"topic name {name!r}: expected resource[:subresource]:action")
        if not isinstance(spec, dict):
            raise PolicyError(f"topic {name!r}: expected a table")
        unknown = set(spec) - {"scope", "target"}
        if unknown:
            raise PolicyError(f"topic {name!r}: unknown keys {sorted(unknown)}")
        target = spec.get("target", "any")
        if target not in _TARGET_RULES:
            raise PolicyError(f"topic {name!r}: target must be one of {_TARGET_RULES}")
        raw_scope = spec.get("scope") or None
        try:
            scope = None if raw_scope is None else parse_scope(raw_scope)
        except BadScope as exc:
            raise PolicyError(f"topic {name!r}: {exc}") from None
        rules[name] = TopicRule(name, scope, cast(TargetRule, target))
    return TopicPolicy(rules)


def load_policy(path: str | Path | None) -> TopicPolicy:
    """Load a policy TOML file, or return :data:`DEFAULT_POLICY` when ``path`` is empty.

    Raises:
        PolicyError: if the file cannot be read or parsed, naming the file.
    """
    if not path:
        return DEFAULT_POLICY
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PolicyError(f"cannot load topic policy {path}: {exc}") from None
    return policy_from_mapping(data)
