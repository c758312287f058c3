"""``realtime history TOPIC [--since N] [--limit N]``: print a topic's kept publications.

Through a server's ``GET /history/{topic}`` with ``--url`` (env ``REALTIME_URL``) and
``--api-key`` (env ``REALTIME_API_KEY``), else straight from Redis (``REDIS_CLUSTER_NODES``
when set, else ``REDIS_URL``).

Output, for scripts: one JSON line ``{"offset": int, "message": str}`` per publication on
stdout, oldest first; then one line on stderr,
``topic=<topic> offset=<int> epoch=<str> first=<int> count=<int>``, and a note when
publications after ``--since`` are no longer kept. The next page is
``--since <last offset printed>``.

Exit status: 0 printed; 1 the server refused (any 4xx/5xx: the status and body on stderr)
or could not be reached; 2 a malformed topic, a ``--limit`` over 1000, no ``--url`` nor
``REDIS_URL`` nor ``REDIS_CLUSTER_NODES``, and, reading Redis, a topic the policy does not know or that keeps no
history, or Redis unavailable.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any
from urllib.parse import quote

import orjson

from http_api.history import MAX_LIMIT, dump_page
from service.topic_reads import read_http, redis_topic
from topics import BadTopic, parse_topic


async def history_command(args: argparse.Namespace) -> int:
    """Run ``realtime history`` (``args``: ``topic``, ``since``, ``limit``, ``url``, ``api_key``).

    Returns:
        The exit status (see the module docstring).

    Raises:
        realtime.RealtimeError: a setting that does not parse; Redis unavailable (exit 2 in
            :func:`service.cli.main`).
    """
    if args.limit > MAX_LIMIT:
        print(f"error: --limit is at most {MAX_LIMIT}", file=sys.stderr)
        return 2
    try:
        parse_topic(args.topic)  # the grammar; the server's policy decides the rest
    except BadTopic as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.url:
        page = await _read_http(args.url, args.api_key, args.topic, since=args.since, limit=args.limit)
    else:
        page = await _read_redis(args.topic, since=args.since, limit=args.limit)
    if isinstance(page, int):
        return page
    print_page(page, since=args.since)
    return 0


def print_page(page: dict[str, Any], *, since: int) -> None:
    """Print a history response body (:func:`http_api.history.dump_page`'s shape)."""
    out = sys.stdout
    for publication in page["publications"]:
        out.write(orjson.dumps({"offset": publication["offset"], "message": publication["message"]}).decode() + "\n")
    out.flush()
    status = (
        f"topic={page['topic']} offset={page['offset']} epoch={page['epoch']} "
        f"first={page['first']} count={len(page['publications'])}"
    )
    print(status, file=sys.stderr)
    if since < page["first"] - 1:
        lost = f"offsets {since + 1} to {page['first'] - 1}"
        print(f"note: {lost} are no longer kept (history_size or history_ttl)", file=sys.stderr)


async def _read_http(url: str, api_key: str, topic: str, *, since: int, limit: int) -> dict[str, Any] | int:
    target = f"{url.rstrip('/')}/history/{quote(topic, safe=':')}"
    return await read_http(target, api_key, {"since": str(since), "limit": str(limit)})


async def _read_redis(topic: str, *, since: int, limit: int) -> dict[str, Any] | int:
    found = redis_topic(topic, what="history", keeps=lambda r: r.has_history, off="its rule's history_size is 0")
    if isinstance(found, int):
        return found
    from service.app import make_publisher

    # the policy too: a Redis without the library gets it loaded from this one
    broker = make_publisher(found.settings, policy=found.policy)
    assert broker is not None
    parsed, rule = found.parsed, found.rule
    try:
        page = await broker.history(parsed.topic, since=since, limit=min(limit, rule.history_size), rule=rule)
    finally:
        await broker.close()
    return dump_page(parsed.topic, page)
