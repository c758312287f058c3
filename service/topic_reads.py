"""What ``realtime history`` and ``realtime presence`` share: reading a topic's state
through a server's HTTP API (``--url``), or straight from Redis (``REDIS_URL`` or
``REDIS_CLUSTER_NODES``) with the topic policy of ``TOPICS_FILE``.

Both print ``error: ...`` on stderr and answer an exit status instead of a value when they
cannot: 1 for a server that refused or could not be reached, 2 for what the command line
or the settings got wrong.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import orjson

from realtime.settings import BrokerSettings, Settings
from topics import BadTopic, ParsedTopic, TopicPolicy, TopicRule, load_policy


async def read_http(target: str, api_key: str, params: dict[str, str] | None = None) -> dict[str, Any] | int:
    """``GET target`` with ``Authorization: Api-Key <api_key>`` (none when empty), 30 s at most.

    Returns:
        The JSON body of a 200, or exit status 1 (refused: the status and body printed;
        unreachable).
    """
    import aiohttp

    headers = {"Authorization": f"Api-Key {api_key}"} if api_key else {}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
            session.get(target, params=params, headers=headers) as resp,
        ):
            body = await resp.read()
            status = resp.status
    except (aiohttp.ClientError, OSError) as exc:
        print(f"error: cannot read {target}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"error: {status} {body.decode(errors='replace')}", file=sys.stderr)
        return 1
    answer: dict[str, Any] = orjson.loads(body)
    return answer


class RedisTopic(NamedTuple):
    """A topic to read from Redis: its parse, its rule, the broker settings and the policy."""

    parsed: ParsedTopic
    rule: TopicRule
    settings: BrokerSettings
    policy: TopicPolicy  # the library is loaded from it where Redis lacks it


def redis_topic(topic: str, *, what: str, keeps: Callable[[TopicRule], bool], off: str) -> RedisTopic | int:
    """Check that ``topic`` can be read from Redis for ``what`` (``"history"``,
    ``"presence"``): Redis is configured, the policy knows the topic and its rule ``keeps``
    it (else ``off`` says why: e.g. ``"its rule's history_size is 0"``).

    Returns:
        The topic, or exit status 2 (the reason printed).

    Raises:
        realtime.RealtimeError: a setting that does not parse.
        topics.PolicyError: ``TOPICS_FILE`` does not load.
    """
    settings = Settings.from_env()
    broker_settings = settings.broker
    if not (broker_settings.redis_url or broker_settings.redis_cluster_nodes):
        print(
            f"error: REDIS_URL is not set (nor REDIS_CLUSTER_NODES). The memory broker's {what} lives "
            "inside one server process; set REDIS_URL, or pass --url http://host:port --api-key KEY to "
            "read through a server.",
            file=sys.stderr,
        )
        return 2
    policy = load_policy(settings.auth.topics_file)
    try:
        parsed, rule = policy.check(topic)
    except BadTopic as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not keeps(rule):
        print(f"error: topic {parsed.topic} keeps no {what} ({off})", file=sys.stderr)
        return 2
    return RedisTopic(parsed, rule, broker_settings, policy)
