"""Pure topic and scope logic: grammar, scopes, and the topic policy.

This package does no I/O apart from reading a policy file when asked to. Everything
else in the project depends on it; it depends on nothing in the project.

Exception tree::

    TopicError                 base of this package, carries a stable ``code``
    ├── BadTopic               a topic that does not parse or is not in the policy
    └── BadScope               a scope that does not parse
    PolicyError                a policy file that cannot be loaded
"""

from __future__ import annotations

from topics.errors import BadScope, BadTopic, PolicyError, TopicError
from topics.grammar import MAX_TOPIC_BYTES, ParsedTopic, Topic, parse_topic
from topics.policy import DEFAULT_POLICY, TargetRule, TopicPolicy, TopicRule, load_policy
from topics.scopes import Scope, parse_scope, parse_scopes

__all__ = [
    "DEFAULT_POLICY",
    "MAX_TOPIC_BYTES",
    "BadScope",
    "BadTopic",
    "ParsedTopic",
    "PolicyError",
    "Scope",
    "TargetRule",
    "Topic",
    "TopicError",
    "TopicPolicy",
    "TopicRule",
    "load_policy",
    "parse_scope",
    "parse_scopes",
    "parse_topic",
]
