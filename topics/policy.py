"""The topic policy: which topic names exist, what scope each needs, and who may target.

A policy maps each topic *name* (the part before ``.``) to a :class:`TopicRule`:

* ``scope``: the scope a WS token must carry to LISTEN, or ``None`` for a public topic
  that needs no token;
* ``target``: ``"any"`` (any target id), ``"self"`` (the target must equal the token's
  ``sub``, so a user hears only their own topic) or ``"none"`` (a global topic without a
  target);
* ``history_size``: publications kept per topic for recovery (0: no history, the default);
* ``history_ttl``: seconds a topic's history lives after its last publication (required,
  positive, when ``history_size`` is set);
* ``presence``: who listens to a topic of this name can be asked (PRESENCE,
  ``GET /presence/{topic}``); off by default;
* ``join_leave``: listeners of a topic of this name receive JOIN and LEAVE as connections
  start and stop listening to it (needs ``presence``); off by default.

Operators replace the default with a TOML file (setting ``TOPICS_FILE``)::

    [topics."remote-control:command"]
    scope = "user:read:remote-control"
    target = "self"

    [topics."dream:update"]   # public: no scope
    target = "any"
    history_size = 32
    history_ttl = 3600

    [topics."chat:room:message"]
    target = "any"
    presence = true
    join_leave = true
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

MAX_HISTORY_SIZE = 10_000
"""Most publications one topic may keep (``history_size``)."""
MAX_HISTORY_TTL = 30 * 24 * 3600
"""Longest ``history_ttl``, seconds (30 days)."""


@dataclass(frozen=True, slots=True)
class TopicRule:
    """The rule for one topic name.

    Attributes:
        name: the topic name, e.g. ``remote-control:command``.
        scope: the scope required to LISTEN, or ``None`` when the topic is public.
        target: ``"any"``, ``"self"`` or ``"none"`` (see the module docstring).
        history_size: publications kept per topic of this name (0: no history).
        history_ttl: seconds a topic's history lives after its last publication (0 when
            there is no history).
        presence: topics of this name keep presence (:mod:`realtime.presence`).
        join_leave: their listeners receive JOIN and LEAVE (implies ``presence``).
    """

    name: str
    scope: Scope | None
    target: TargetRule
    history_size: int = 0
    history_ttl: int = 0
    presence: bool = False
    join_leave: bool = False

    @property
    def has_history(self) -> bool:
        """``True`` when topics of this name keep history (offsets, epochs, recovery)."""
        return self.history_size > 0


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


def _rule(
    name: str, scope: str | None, target: TargetRule, size: int = 0, ttl: int = 0, *, presence: bool = False
) -> tuple[str, TopicRule]:
    return name, TopicRule(name, None if scope is None else Scope(scope), target, size, ttl, presence)


DEFAULT_POLICY = TopicPolicy(
    dict(
        [
            _rule("channel:update", None, "any"),
            _rule("channel:follow", "moderator:read:followers", "any"),
            _rule("channel:prediction:lock", "channel:read:predictions", "self"),
            # a player that reconnects (a deploy, a network change) gets the commands it
            # missed; commands older than 5 minutes are stale (refetch state instead)
            # presence: the web app shows "2 of your players are online" before it sends a command
            _rule("remote-control:command", "user:read:remote-control", "self", 32, 300, presence=True),
            # a dream's status changes a handful of times in its life: keep them an hour
            _rule("dream:update", None, "any", 16, 3600),
            # progress at up to ~10/s: 300 cover a 30 s outage or deploy; a finished job stays 10 min
            _rule("dream:job:progress", None, "any", 300, 600),
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
        unknown = set(spec) - {"scope", "target", "history_size", "history_ttl", "presence", "join_leave"}
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
        size, ttl = _history(name, spec)
        presence, join_leave = _flag(name, spec, "presence"), _flag(name, spec, "join_leave")
        if join_leave and not presence:
            raise PolicyError(f"topic {name!r}: join_leave needs presence = true")
        rules[name] = TopicRule(name, scope, cast(TargetRule, target), size, ttl, presence, join_leave)
    return TopicPolicy(rules)


def _flag(name: str, spec: Mapping[str, object], key: str) -> bool:
    """A boolean key of one topic table (``False`` when absent).

    Raises:
        PolicyError: the value is not ``true`` or ``false``.
    """
    value = spec.get(key, False)
    if not isinstance(value, bool):
        raise PolicyError(f"topic {name!r}: {key} must be true or false")
    return value


def _history(name: str, spec: Mapping[str, object]) -> tuple[int, int]:
    """``(history_size, history_ttl)`` of one topic table; both 0 without history.

    Raises:
        PolicyError: a value that is not an integer in range, or a size without a ttl.
    """
    size, ttl = spec.get("history_size", 0), spec.get("history_ttl", 0)
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_HISTORY_SIZE:
        raise PolicyError(f"topic {name!r}: history_size must be an integer from 0 to {MAX_HISTORY_SIZE}")
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 <= ttl <= MAX_HISTORY_TTL:
        raise PolicyError(f"topic {name!r}: history_ttl must be an integer from 0 to {MAX_HISTORY_TTL} (seconds)")
    if size and not ttl:
        raise PolicyError(f"topic {name!r}: history_size needs history_ttl (seconds its history lives)")
    return size, ttl if size else 0


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
