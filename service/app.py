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
from realtime.revocations import CLOCK_MARGIN, RevocationTable
from realtime.server import WsContext, shutdown_peers
from realtime.settings import Settings
from realtime.verification import TokenChecks
from service.sentry import setup_sentry
from topics import load_policy

log = structlog.get_logger("realtime")


def load_keys(settings: Settings) -> KeyStore:
    """Keys from ``WS_SIGNING_KEYS``, else ``KEYS_DIR``; generate a development key into
    an empty ``KEYS_DIR`` (with a warning) so a fresh machine just works.

    Raises:
        keys.NoSigningKey: a configured key does not load.
    """
    if settings.ws_signing_keys:
        return KeyStore.from_pems(settings.ws_signing_keys)
    try:
        return KeyStore.from_directory(settings.keys_dir)
    except NoSigningKey as exc:
        if "no signing key in" not in str(exc):
            raise
    key = generate_key(settings.keys_dir)
    log.warning(
        "development_signing_key_generated",
        kid=key.kid,
        path=key.source,
        hint="for production run `realtime keys generate` or set WS_SIGNING_KEYS; "
        "every instance must share the same keys",
    )
    return KeyStore([key])


def make_broker(settings: Settings) -> Broker:
    """A :class:`RedisBroker` when ``REDIS_URL`` is set, else a :class:`MemoryBroker`."""
    if settings.redis_url:
        return RedisBroker(
            settings.redis_url,
            channel=settings.redis_channel,
            batch_interval=settings.write_interval,
            probe_interval=settings.redis_probe_interval,
            probe_timeout=settings.redis_probe_timeout,
        )
    return MemoryBroker()


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
    store = key_store or load_keys(settings)
    verifier = TokenVerifier(store, issuer=settings.ws_token_issuer, audience=settings.ws_token_audience)
    node = Node(
        broker=make_broker(settings),
        policy=load_policy(settings.topics_file),
        verify=verifier.verify,
        max_connections_per_user=settings.max_connections_per_user,
        token_ttl=settings.ws_token_ttl,
        revocations=RevocationTable(
            lifetime=settings.ws_token_ttl + CLOCK_MARGIN,
            capacity=settings.max_revocations,
            per_user=settings.max_revocations_per_user,
        ),
        write_interval=settings.write_interval,
        checks=TokenChecks(
            rate_per_address=settings.token_check_rate_per_ip,
            burst_per_address=settings.token_check_burst_per_ip,
            rate_per_connection=settings.token_check_rate_per_connection,
            burst_per_connection=settings.token_check_burst_per_connection,
            max_failures=settings.max_bad_tokens_per_connection,
        ),
    )
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[KEY_STORE] = store
    app[VERIFIER] = verifier
    app[ISSUER] = TokenIssuer(
        store, issuer=settings.ws_token_issuer, audience=settings.ws_token_audience, ttl=settings.ws_token_ttl
    )
    app[NODE] = node
    app[LIMITER] = ConnectionLimiter(
        max_per_ip=settings.max_connections_per_ip,
        attempts_per_second=settings.connect_rate_per_ip,
        burst=settings.connect_burst_per_ip,
    )
    app[WS_CONTEXT] = WsContext(node, settings, app[LIMITER], security_headers=SECURITY_HEADERS)
    app[API_KEYS] = ApiKeyAuthenticator(settings.api_keys)
    if settings.database_url and settings.database_url != "none":
        app[DATABASE] = Database(settings.database_url)
        app.cleanup_ctx.append(database_context(app[DATABASE]))
        if settings.auth_jwks_url:
            app[UPSTREAM] = UpstreamVerifier(
                jwks_url=settings.auth_jwks_url,
                issuer=settings.auth_issuer,
                audience=settings.auth_audience,
                algorithms=settings.auth_algorithms.replace(",", " ").split(),
                default_scopes=settings.default_user_scopes,
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
    await shutdown_peers(app[WS_CONTEXT], app[SETTINGS].shutdown_grace)
