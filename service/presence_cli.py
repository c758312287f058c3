"""``realtime presence TOPIC [--stats]``: print who listens to a topic, on every instance.

Through a server's ``GET /presence/{topic}`` (``/stats`` with ``--stats``) with ``--url``
(env ``REALTIME_URL``) and ``--api-key`` (env ``REALTIME_API_KEY``), else straight from
Redis (``REDIS_URL`` or ``REDIS_CLUSTER_NODES``, ``REDIS_CHANNEL``, ``TOPICS_FILE``, ``PRESENCE_MAX_CLIENTS``), where
every instance writes its connections' entries.

Output, for scripts: one JSON line on stdout, the body of ``GET /presence/{topic}``:
``{"topic": str, "connections": int, "users": int, "clients": [{"user", "client",
"info"}, ...]}`` (``clients`` left out with ``--stats``, or beyond ``PRESENCE_MAX_CLIENTS``).

Exit status: 0 printed; 1 the server refused (any 4xx/5xx: the status and body on stderr)
or could not be reached; 2 a malformed topic, no ``--url`` nor ``REDIS_URL``, and, reading
Redis, a topic the policy does not know or that keeps no presence, or Redis unavailable.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any
from urllib.parse import quote

import orjson

from http_api.presence import dump_presence
from service.topic_reads import read_http, redis_topic
from topics import BadTopic, parse_topic


async def presence_command(args: argparse.Namespace) -> int:
    """Run ``realtime presence`` (``args``: ``topic``, ``stats``, ``url``, ``api_key``).

    Returns:
        The exit status (see the module docstring).

    Raises:
        realtime.RealtimeError: a setting that does not parse; Redis unavailable (exit 2 in
            :func:`service.cli.main`).
    """
    try:
        parse_topic(args.topic)  # the grammar; the server's policy decides the rest
    except BadTopic as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.url:
        body = await _read_http(args.url, args.api_key, args.topic, stats=args.stats)
    else:
        body = await _read_redis(args.topic, stats=args.stats)
    if isinstance(body, int):
        return body
    sys.stdout.write(orjson.dumps(body).decode() + "\n")
    sys.stdout.flush()
    return 0


async def _read_http(url: str, api_key: str, topic: str, *, stats: bool) -> dict[str, Any] | int:
    target = f"{url.rstrip('/')}/presence/{quote(topic, safe=':')}" + ("/stats" if stats else "")
    return await read_http(target, api_key)


async def _read_redis(topic: str, *, stats: bool) -> dict[str, Any] | int:
    found = redis_topic(topic, what="presence", keeps=lambda r: r.presence, off="its rule's presence is off")
    if isinstance(found, int):
        return found
    from service.app import make_publisher

    # the policy too: a Redis without the library gets it loaded from this one
    broker = make_publisher(found.settings, policy=found.policy)
    assert broker is not None
    try:
        limit = 0 if stats else found.settings.presence_max_clients
        snapshot = await broker.presence.read(found.parsed.topic, found.rule, limit)
    finally:
        await broker.close()
    return dump_presence(found.parsed.topic, snapshot)
