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
from realtime.settings import Settings
from topics import BadTopic, load_policy, parse_topic


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
    import aiohttp

    headers = {"Authorization": f"Api-Key {api_key}"} if api_key else {}
    target = f"{url.rstrip('/')}/history/{quote(topic, safe=':')}"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
            session.get(target, params={"since": str(since), "limit": str(limit)}, headers=headers) as resp,
        ):
            body = await resp.read()
            status = resp.status
    except (aiohttp.ClientError, OSError) as exc:
        print(f"error: cannot read {target}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"error: {status} {body.decode(errors='replace')}", file=sys.stderr)
        return 1
    page: dict[str, Any] = orjson.loads(body)
    return page


async def _read_redis(topic: str, *, since: int, limit: int) -> dict[str, Any] | int:
    settings = Settings.from_env()
    broker_settings = settings.broker
    if not (broker_settings.redis_url or broker_settings.redis_cluster_nodes):
        print(
            "error: REDIS_URL is not set (nor REDIS_CLUSTER_NODES). The memory broker's history lives "
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
    if not rule.has_history:
        print(f"error: topic {parsed.topic} keeps no history (its rule's history_size is 0)", file=sys.stderr)
        return 2
    from service.app import make_publisher

    # the policy too: a Redis without the library gets it loaded from this one
    broker = make_publisher(broker_settings, policy=policy)
    assert broker is not None
    try:
        page = await broker.history(parsed.topic, since=since, limit=min(limit, rule.history_size), rule=rule)
    finally:
        await broker.close()
    return dump_page(parsed.topic, page)
