"""Prometheus metrics (``GET /metrics``), read at scrape time.

Nothing here runs on the fan-out path. The realtime counters the node and the broker
already keep (publications, deliveries, gaps, reconnects, open connections, the topic
index) are read by :class:`NodeCollector` when Prometheus scrapes; only HTTP requests,
which are not the hot path, are counted as they happen (:func:`metrics_middleware`).

Each app has its own :class:`prometheus_client.CollectorRegistry` (no global registry:
tests build many apps in one process). ``METRICS_ENABLED=false`` turns it all off;
``METRICS_PORT`` serves ``/metrics`` on a separate port instead of the main one.

Label sets are bounded: listens are labelled by topic *name* (``remote-control:command``,
from the topic policy), never by target id; HTTP requests by route pattern, not raw URL.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Iterable

import orjson
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from realtime.appkeys import NODE, SETTINGS
from realtime.node import Node

log = structlog.get_logger("http_api.metrics")

_REASON = re.compile(r"[a-z][a-z0-9_]{0,31}")
_UNMATCHED = "(unmatched)"


class NodeCollector(Collector):
    """Exports the node's and broker's own counters when scraped.

    Metrics (all prefixed ``realtime_``): ``connections``, ``topics``, ``listens{topic_name}``,
    ``messages_published_total``, ``messages_delivered_total``, ``gaps_total``,
    ``token_revocations_total``, ``broker_up{kind}``, ``broker_reconnects_total``,
    ``broker_invalid_envelopes_total`` and, when the node counts them,
    ``slow_consumer_drops_total``.
    """

    def __init__(self, node: Node) -> None:
        self._node = node

    def collect(self) -> Iterable[Metric]:
        """Yield one sample set per metric, read from the node now (O(listens))."""
        node = self._node
        yield GaugeMetricFamily("realtime_connections", "Open WebSocket connections.", value=len(node.peers))
        yield GaugeMetricFamily("realtime_topics", "Topics with at least one local listener.", value=len(node.index))
        listens = GaugeMetricFamily(
            "realtime_listens", "Active LISTENs on this instance by topic name.", labels=["topic_name"]
        )
        for name, count in sorted(listens_by_name(node).items()):
            listens.add_metric([name], count)
        yield listens
        yield _counter("realtime_messages_published", "Publications accepted through this instance.", node.published)
        yield _counter("realtime_messages_delivered", "MESSAGE frames queued to local listeners.", node.delivered)
        yield _counter("realtime_gaps", "Broker reconnects announced to clients as GAP.", node.gaps)
        yield _counter("realtime_token_revocations", "Token revocations applied.", node.revocations)
        slow = getattr(node, "slow_consumers", None)
        if isinstance(slow, int):
            yield _counter("realtime_slow_consumer_drops", "Connections closed with 4008 (slow consumer).", slow)
        broker = node.broker
        up = GaugeMetricFamily("realtime_broker_up", "1 while the broker is connected.", labels=["kind"])
        up.add_metric([broker.kind], 1.0 if broker.ready else 0.0)
        yield up
        for attr, name, doc in (
            ("reconnects", "realtime_broker_reconnects", "Times the Redis subscription came back after a loss."),
            ("invalid_envelopes", "realtime_broker_invalid_envelopes", "Malformed Redis envelopes dropped."),
        ):
            value = getattr(broker, attr, 0)
            yield _counter(name, doc, value if isinstance(value, int) else 0)


def listens_by_name(node: Node) -> dict[str, int]:
    """Active LISTENs per topic name (the part before ``.``), every policy name present.

    Returns:
        ``{"remote-control:command": 3, "dream:update": 0, ...}``; the keys are the
        policy's topic names, so the label set stays bounded.
    """
    counts = dict.fromkeys(node.policy.rules, 0)
    for peer in list(node.peers.values()):
        for topic in peer.session.topics:
            name = topic.partition(".")[0]
            if name in counts:
                counts[name] += 1
    return counts


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


class HttpMetrics:
    """Per-app registry with the node collector and the HTTP request metrics.

    Attributes:
        registry: what ``/metrics`` exposes.
        requests: ``realtime_http_requests_total{method,route,status}``.
        duration: ``realtime_http_request_duration_seconds{route}`` (not ``/ws``, whose
            "request" lasts as long as the connection).
        auth_failures: ``realtime_auth_failures_total{reason}`` (HTTP 401 by reason, 403 as
            ``forbidden``).
    """

    def __init__(self, node: Node) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(NodeCollector(node))
        ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "realtime_http_requests",
            "HTTP requests by method, route pattern and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "realtime_http_request_duration_seconds",
            "HTTP request handling time by route pattern (not /ws).",
            ["route"],
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "realtime_auth_failures", "HTTP authentication failures by reason.", ["reason"], registry=self.registry
        )

    def observe(self, request: web.Request, status: int, body: bytes | str | None, started: float) -> None:
        """Count one finished request (``body``: the response body, read for 401 reasons)."""
        route = route_of(request)
        self.requests.labels(request.method, route, str(status)).inc()
        if route != "/ws":
            self.duration.labels(route).observe(time.perf_counter() - started)
        if status == 401:
            self.auth_failures.labels(auth_failure_reason(body)).inc()
        elif status == 403:
            self.auth_failures.labels("forbidden").inc()

    def exposition(self) -> bytes:
        """The text exposition format of every metric."""
        return generate_latest(self.registry)


METRICS = web.AppKey("http_metrics", HttpMetrics)


def route_of(request: web.Request) -> str:
    """The matched route's pattern (``/auth/ws``), or ``(unmatched)`` for 404s."""
    resource = request.match_info.route.resource
    return _UNMATCHED if resource is None else resource.canonical


def auth_failure_reason(body: bytes | str | None) -> str:
    """The reason of a 401 from its JSON body.

    A ``reason`` field (``[a-z][a-z0-9_]*``) wins; otherwise the message is classified:
    ``missing_credentials``, ``bad_scheme``, ``invalid_credentials``, ``expired`` or
    ``other``. Never returns anything from the request itself (no secrets in labels).
    """
    try:
        data = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError:
        return "other"
    if not isinstance(data, dict):
        return "other"
    reason = data.get("reason")
    if isinstance(reason, str) and _REASON.fullmatch(reason):
        return reason
    message = str(data.get("message", "")).lower()
    for needle, label in (
        ("missing", "missing_credentials"),
        ("scheme", "bad_scheme"),
        ("expired", "expired"),
        ("invalid", "invalid_credentials"),
    ):
        if needle in message:
            return label
    return "other"


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every request by route and status (outermost, so it sees the final status)."""
    metrics = request.app[METRICS]
    started = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        metrics.observe(request, exc.status, exc.text, started)
        raise
    body = response.body if isinstance(response, web.Response) and response.status in (401, 403) else None
    metrics.observe(request, response.status, body if isinstance(body, bytes) else None, started)
    return response


async def metrics_handler(request: web.Request) -> web.Response:
    """``GET /metrics``: the Prometheus text format (no auth: keep it off the public
    network, or serve it on ``METRICS_PORT``)."""
    body = request.app[METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def setup_metrics(app: web.Application) -> None:
    """Add the metrics middleware and ``/metrics`` (or the separate metrics server) to ``app``.

    Call after the node is in ``app[NODE]``; does nothing when ``METRICS_ENABLED`` is false.
    """
    settings = app[SETTINGS]
    if not settings.metrics_enabled:
        return
    app[METRICS] = HttpMetrics(app[NODE])
    app.middlewares.insert(0, metrics_middleware)
    if settings.metrics_port:
        app.cleanup_ctx.append(_metrics_server)
    else:
        app.router.add_get("/metrics", metrics_handler)


async def _metrics_server(app: web.Application) -> AsyncIterator[None]:
    """Serve ``/metrics`` alone on ``METRICS_HOST``:``METRICS_PORT`` while the app runs."""
    settings = app[SETTINGS]
    side = web.Application()
    side[METRICS] = app[METRICS]
    side.router.add_get("/metrics", metrics_handler)
    runner = web.AppRunner(side, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.metrics_port, reuse_address=True)
    await site.start()
    log.info("metrics_listening", host=settings.host, port=settings.metrics_port)
    try:
        yield
    finally:
        await runner.cleanup()
