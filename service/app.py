"""The app factory: the one place that assembles settings, keys, broker, node and routes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import structlog
from aiohttp import web

from db import Database
from http_api import setup_routes
from http_api.appkeys import DATABASE, ISSUER, KEY_STORE, LIMITER, NODE, SETTINGS, VERIFIER
from http_api.auth import API_KEYS, ApiKeyAuthenticator
from http_api.console import setup_console
from http_api.metrics import setup_metrics
from http_api.security import SECURITY_HEADERS
from http_api.upstream import UPSTREAM, UpstreamVerifier, upstream_context
from keys import KeyStore, NoSigningKey, TokenIssuer, TokenVerifier, generate_key
from realtime.aiohttp_adapter import WS_CONTEXT, websocket_handler
from realtime.broker import Broker, MemoryBroker
from realtime.limits import ConnectionLimiter
from realtime.node import Node
from realtime.redis_broker import RedisBroker
from realtime.redis_cluster_broker import ClusterBroker
from realtime.revocations import CLOCK_MARGIN, RevocationTable
from realtime.server import WsContext, shutdown_peers
from realtime.settings import BrokerSettings, Settings
from realtime.verification import TokenChecks
from service.sentry import setup_sentry
from topics import DEFAULT_POLICY, TopicPolicy, load_policy

log = structlog.get_logger("realtime")


def load_keys(*, ws_signing_keys: str, keys_dir: str) -> KeyStore:
    """Keys from ``WS_SIGNING_KEYS``, else ``KEYS_DIR``; generate a development key into
    an empty ``KEYS_DIR`` (with a warning) so a fresh machine just works.

    Args:
        ws_signing_keys: PEM private keys (``WS_SIGNING_KEYS``); ``""``: read ``keys_dir``.
        keys_dir: the signing key directory (``KEYS_DIR``).

    Raises:
        keys.NoSigningKey: a configured key does not load.
    """
    if ws_signing_keys:
        return KeyStore.from_pems(ws_signing_keys)
    try:
        return KeyStore.from_directory(keys_dir)
    except NoSigningKey as exc:
        if "no signing key in" not in str(exc):
            raise
    key = generate_key(keys_dir)
    log.warning(
        "development_signing_key_generated",
        kid=key.kid,
        path=key.source,
        hint="for production run `realtime keys generate` or set WS_SIGNING_KEYS; "
        "every instance must share the same keys",
    )
    return KeyStore([key])


def make_broker(broker: BrokerSettings, *, write_interval: float, policy: TopicPolicy = DEFAULT_POLICY) -> Broker:
    """A :class:`ClusterBroker` when ``REDIS_CLUSTER_NODES`` is set, else a
    :class:`RedisBroker` when ``REDIS_URL`` is set, else a :class:`MemoryBroker`.

    Args:
        broker: the broker settings.
        write_interval: ``WRITE_INTERVAL`` seconds, which also paces the subscriber's reads.
        policy: the topic policy (the Redis broker's history library is generated from it).
    """
    if broker.redis_cluster_nodes:
        return ClusterBroker(
            broker.redis_cluster_nodes,
            channel=broker.redis_channel,
            batch_interval=write_interval,
            policy=policy,
            firehose=broker.redis_firehose,
        )
    if broker.redis_url:
        return RedisBroker(
            broker.redis_url,
            channel=broker.redis_channel,
            batch_interval=write_interval,
            probe_interval=broker.redis_probe_interval,
            probe_timeout=broker.redis_probe_timeout,
            policy=policy,
            firehose=broker.redis_firehose,
        )
    return MemoryBroker()


def make_publisher(
    broker: BrokerSettings, *, policy: TopicPolicy = DEFAULT_POLICY
) -> RedisBroker | ClusterBroker | None:
    """A started publishing-only broker for the command line (``realtime publish``,
    ``realtime history``, revocations): on ``REDIS_CLUSTER_NODES`` when set, else on
    ``REDIS_URL``; ``None`` when neither is set. The caller closes it.

    Args:
        broker: the broker settings.
        policy: the topic policy (the history library is loaded from it where missing).
    """
    publisher: RedisBroker | ClusterBroker
    if broker.redis_cluster_nodes:
        publisher = ClusterBroker(broker.redis_cluster_nodes, channel=broker.redis_channel, policy=policy)
    elif broker.redis_url:
        publisher = RedisBroker(broker.redis_url, channel=broker.redis_channel, policy=policy)
    else:
        return None
    publisher.start_publisher()
    return publisher


def create_app(settings: Settings, *, key_store: KeyStore | None = None) -> web.Application:
    """Build the whole server.

    Args:
        settings: the settings.
        key_store: signing keys (default: :func:`load_keys`).

    Returns:
        The aiohttp application; the broker starts and stops with it (cleanup context).

    Raises:
        topics.PolicyError: ``TOPICS_FILE`` does not load.
        keys.NoSigningKey: a configured key does not load.
    """
    server, limits, auth, database = settings.server, settings.limits, settings.auth, settings.database
    store = key_store or load_keys(ws_signing_keys=auth.ws_signing_keys, keys_dir=auth.keys_dir)
    verifier = TokenVerifier(store, issuer=auth.ws_token_issuer, audience=auth.ws_token_audience)
    policy = load_policy(auth.topics_file)
    node = Node(
        broker=make_broker(settings.broker, write_interval=server.write_interval, policy=policy),
        policy=policy,
        verify=verifier.verify,
        max_connections_per_user=limits.max_connections_per_user,
        token_ttl=auth.ws_token_ttl,
        revocations=RevocationTable(
            lifetime=auth.ws_token_ttl + CLOCK_MARGIN,
            capacity=limits.max_revocations,
            per_user=limits.max_revocations_per_user,
        ),
        write_interval=server.write_interval,
        checks=TokenChecks(
            rate_per_address=limits.token_check_rate_per_ip,
            burst_per_address=limits.token_check_burst_per_ip,
            rate_per_connection=limits.token_check_rate_per_connection,
            burst_per_connection=limits.token_check_burst_per_connection,
            max_failures=limits.max_bad_tokens_per_connection,
        ),
        presence_ttl=settings.broker.presence_ttl,
        presence_max_clients=settings.broker.presence_max_clients,
        presence_show_address=settings.broker.presence_show_address,
    )
    app = web.Application(client_max_size=limits.max_body_bytes)
    app[SETTINGS] = settings
    app[KEY_STORE] = store
    app[VERIFIER] = verifier
    app[ISSUER] = TokenIssuer(
        store, issuer=auth.ws_token_issuer, audience=auth.ws_token_audience, ttl=auth.ws_token_ttl
    )
    app[NODE] = node
    app[LIMITER] = ConnectionLimiter(
        max_per_ip=limits.max_connections_per_ip,
        attempts_per_second=limits.connect_rate_per_ip,
        burst=limits.connect_burst_per_ip,
    )
    app[WS_CONTEXT] = WsContext(node, settings, app[LIMITER], security_headers=SECURITY_HEADERS)
    app[API_KEYS] = ApiKeyAuthenticator(auth.api_keys)
    if database.url and database.enabled:
        app[DATABASE] = Database(database.url)
        app.cleanup_ctx.append(database_context(app[DATABASE]))
        if auth.jwks_url:
            app[UPSTREAM] = UpstreamVerifier(
                jwks_url=auth.jwks_url,
                issuer=auth.issuer,
                audience=auth.audience,
                algorithms=auth.algorithm_list,
                default_scopes=auth.default_user_scopes,
            )
            app.cleanup_ctx.append(upstream_context)
    app.router.add_get("/ws", websocket_handler)
    setup_routes(app)
    setup_metrics(app)
    setup_console(app)
    setup_sentry(app, settings)
    app.cleanup_ctx.append(_node_ctx)
    app.on_shutdown.append(_on_shutdown)
    return app


async def _node_ctx(app: web.Application) -> AsyncIterator[None]:
    node = app[NODE]
    await node.start()
    log.info("node_started", broker=node.broker.kind, topics=len(node.policy.rules))
    yield
    await node.close()


def database_context(db: Database) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context that opens ``db`` on start-up and closes it on clean-up."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        await db.open()
        log.info("database_connected")
        yield
        await db.close()

    return ctx


async def _on_shutdown(app: web.Application) -> None:
    await shutdown_peers(app[WS_CONTEXT], app[SETTINGS].server.shutdown_grace)
