"""The ``realtime`` command line: ``serve``, ``keys``, ``publish``, ``history``, ``presence``, ``listen``,
``migrate``, ``users``, ``apikeys``."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

import orjson

from db import DatabaseError
from db import cli as db_cli
from keys import cli as keys_cli
from realtime.client_positions import Position, parse_since_option
from realtime.errors import RealtimeError, SettingsError
from realtime.presence import BadClientInfo, check_client_info
from realtime.settings import BrokerSettings, Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="realtime", description="Twitch-PubSub-style realtime server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server")
    # --host, --port and --workers override HOST, PORT and WORKERS (see _serve); None: the environment's
    serve.add_argument("--host", help="bind address (env HOST, default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port (env PORT, default 4444)")
    serve.add_argument(
        "--workers",
        type=int,
        help="worker processes sharing the port with SO_REUSEPORT (env WORKERS, default 1; >1 needs REDIS_URL)",
    )
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument("--migrate", action="store_true", help="apply pending database migrations before serving")
    keys = sub.add_parser("keys", help="manage signing keys")
    keys_cli.add_arguments(keys)
    db_cli.add_migrate_arguments(sub.add_parser("migrate", help="apply pending database migrations"))
    db_cli.add_users_arguments(sub.add_parser("users", help="manage users"))
    db_cli.add_apikeys_arguments(sub.add_parser("apikeys", help="manage database API keys"))
    pub = sub.add_parser("publish", help="publish one message")
    pub.add_argument("topic")
    pub.add_argument("message", help="the message; a string unless --json")
    pub.add_argument("--json", action="store_true", help="parse MESSAGE as a JSON value")
    _add_server_arguments(pub, "publish through this server's /publish")
    _add_history_parser(sub)
    _add_presence_parser(sub)
    lis = sub.add_parser("listen", help="print messages on topics as they arrive (a debugging tool)")
    lis.add_argument("topics", nargs="+", metavar="TOPIC")
    lis.add_argument(
        "--url",
        default=os.environ.get("REALTIME_URL", "http://127.0.0.1:4444"),
        help="the server (env REALTIME_URL, default http://127.0.0.1:4444)",
    )
    lis.add_argument(
        "--api-key",
        default=os.environ.get("REALTIME_API_KEY", ""),
        help="API key for a WS token; not needed for public topics (env REALTIME_API_KEY)",
    )
    lis.add_argument("--scope", help="narrow the token to these scopes (space-separated)")
    lis.add_argument(
        "--since",
        action="append",
        default=[],
        type=_since,
        metavar="TOPIC=OFFSET:EPOCH",
        help="resume TOPIC after this position (a MESSAGE line's offset and epoch): first print what "
        "history still holds after it (repeatable; topics with history only)",
    )
    lis.add_argument(
        "--client-info",
        type=_client_info,
        metavar="JSON",
        help='what others see of this listener in presence, a small JSON object: \'{"device":"laptop"}\'',
    )
    return parser


def _since(text: str) -> tuple[str, Position]:
    """``--since`` as ``(topic, position)``; argparse reports a bad one with its reason."""
    try:
        return parse_since_option(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_server_arguments(parser: argparse.ArgumentParser, through: str) -> None:
    """``--url`` and ``--api-key`` (env ``REALTIME_URL``, ``REALTIME_API_KEY``): go ``through``
    a server's HTTP API (e.g. "publish through this server's /publish") instead of Redis."""
    parser.add_argument(
        "--url", default=os.environ.get("REALTIME_URL", ""), help=f"{through} instead of Redis (env REALTIME_URL)"
    )
    parser.add_argument(
        "--api-key", default=os.environ.get("REALTIME_API_KEY", ""), help="API key for --url (env REALTIME_API_KEY)"
    )


def _add_history_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    hist = sub.add_parser(
        "history",
        help="print a topic's kept publications, oldest first",
        description="Print one JSON line {offset, message} per publication after --since on stdout, "
        "then the topic's position (offset= epoch= first=) on stderr.",
    )
    hist.add_argument("topic")
    hist.add_argument("--since", type=_count, default=0, help="publications after this offset (default 0: all)")
    hist.add_argument("--limit", type=_count, default=100, help="at most this many (default 100, at most 1000)")
    _add_server_arguments(hist, "read through this server's GET /history")


def _add_presence_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pres = sub.add_parser(
        "presence",
        help="print who listens to a topic, on every instance",
        description="Print one JSON line {topic, connections, users, clients} on stdout "
        "(clients left out with --stats, or beyond PRESENCE_MAX_CLIENTS).",
    )
    pres.add_argument("topic")
    pres.add_argument("--stats", action="store_true", help="the counts only")
    _add_server_arguments(pres, "read through this server's GET /presence")


def _client_info(text: str) -> dict[str, Any]:
    """``--client-info`` as a checked JSON object; argparse reports a bad one with its reason."""
    try:
        return check_client_info(orjson.loads(text))
    except orjson.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"not JSON: {text!r}") from None
    except BadClientInfo as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("data.")) from None


def _count(value: str) -> int:
    if not (value.isascii() and value.isdigit()):
        raise argparse.ArgumentTypeError(f"not a non-negative integer: {value!r}")
    return int(value)


def main(argv: list[str] | None = None) -> int:
    """Run the ``realtime`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "keys":
            return keys_cli.run(args)
        if args.command in ("migrate", "users", "apikeys"):
            settings = Settings.from_env()
            return db_cli.run(
                args,
                settings.database.url,
                settings.auth.default_user_scopes,
                on_revoked=lambda sub: _announce_revocation(settings.broker, sub),
            )
        if args.command == "listen":
            from realtime.client_cli import listen_command

            return asyncio.run(
                listen_command(
                    args.url,
                    args.topics,
                    api_key=args.api_key,
                    scope=args.scope,
                    since=dict(args.since),
                    client_info=args.client_info,
                )
            )
        if args.command == "history":
            from service.history_cli import history_command

            return asyncio.run(history_command(args))
        if args.command == "presence":
            from service.presence_cli import presence_command

            return asyncio.run(presence_command(args))
        return asyncio.run(_publish(args))
    except (RealtimeError, DatabaseError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _serve(args: argparse.Namespace) -> int:
    from service.logs import configure_logging
    from service.runner import run_workers, serve

    # the one place where the command line overrides the environment
    flags = {"host": args.host, "port": args.port, "workers": args.workers}
    settings = Settings.from_env(**{name: value for name, value in flags.items() if value is not None})
    workers = settings.server.workers
    if workers > 1 and settings.observability.metrics_enabled and settings.observability.metrics_port:
        raise SettingsError("METRICS_PORT cannot be shared by --workers > 1: leave it 0 (each worker answers /metrics)")
    configure_logging(settings.observability.log_format, settings.observability.log_level)
    from service.sentry import init_sentry

    init_sentry(settings)
    if workers > 1 and not args.worker:
        return run_workers(settings, migrate=args.migrate)
    from service.runner import loop_factory

    with asyncio.Runner(loop_factory=loop_factory(settings.server.event_loop)) as runner:
        runner.run(serve(settings, reuse_port=args.worker, migrate=args.migrate))
    return 0


async def _publish(args: argparse.Namespace) -> int:
    from topics import DEFAULT_POLICY, BadTopic, load_policy

    settings = Settings.from_env()
    message: object = args.message
    if args.json:
        try:
            message = orjson.loads(args.message)
        except orjson.JSONDecodeError:
            print("error: MESSAGE is not valid JSON (drop --json to send it as a string)", file=sys.stderr)
            return 2
    if args.url:
        return await _publish_http(args.url, args.api_key, args.topic, message)
    broker_settings = settings.broker
    if not (broker_settings.redis_url or broker_settings.redis_cluster_nodes):
        print(
            "error: REDIS_URL is not set (nor REDIS_CLUSTER_NODES). The memory broker lives inside one "
            "server process; set REDIS_URL, or pass --url http://host:port --api-key KEY to publish "
            "through a server.",
            file=sys.stderr,
        )
        return 2
    policy = load_policy(settings.auth.topics_file) if settings.auth.topics_file else DEFAULT_POLICY
    try:
        _, rule = policy.check(args.topic)
    except BadTopic as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from realtime.envelope import message_text
    from service.app import make_publisher

    broker = make_publisher(broker_settings, policy=policy)
    assert broker is not None
    try:
        position = await broker.publish(args.topic, message_text(message), rule)
    finally:
        await broker.close()
    where = f" (offset {position.offset}, epoch {position.epoch})" if position is not None else ""
    print(f"published to {args.topic}{where}")
    return 0


async def _announce_revocation(redis: BrokerSettings, sub: str) -> None:
    """Tell every running instance (through Redis, or the Redis Cluster) to end the WS
    tokens of ``sub``."""
    from service.app import make_publisher

    broker = make_publisher(redis)
    if broker is None:
        print(
            "note: REDIS_URL is not set (nor REDIS_CLUSTER_NODES), so running servers were not told: WS "
            f"tokens already issued to user {sub} stay valid until they expire (WS_TOKEN_TTL), unless "
            "revoked with POST /auth/ws/revoke",
            file=sys.stderr,
        )
        return
    from realtime.envelope import revocation_message

    try:
        await broker.publish_control(revocation_message(sub=sub))
    finally:
        await broker.close()
    print(f"revoked the WS tokens of user {sub} on every running server", file=sys.stderr)


async def _publish_http(url: str, api_key: str, topic: str, message: object) -> int:
    import aiohttp

    headers = {"Authorization": f"Api-Key {api_key}"} if api_key else {}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url.rstrip('/')}/publish", json={"topic": topic, "message": message}, headers=headers) as resp,
    ):
        body = await resp.text()
        if resp.status != 202:
            print(f"error: {resp.status} {body}", file=sys.stderr)
            return 1
    print(f"published to {topic}")
    return 0
