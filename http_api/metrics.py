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

import asyncio
import contextlib
import os
import re
import time
from collections.abc import AsyncIterator, Iterable
from typing import cast

import orjson
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from http_api.appkeys import NODE, SETTINGS
from http_api.render import auth_reason
from realtime.errors import BrokerUnavailable
from realtime.node import Node
from realtime.send_queue import SendQueue

log = structlog.get_logger("http_api.metrics")

_REASON = re.compile(r"[a-z][a-z0-9_]{0,31}")
_UNMATCHED = "(unmatched)"


class NodeCollector(Collector):
    """Exports the node's and broker's own counters when scraped.

    Metrics (all prefixed ``realtime_``): ``connections``, ``topics``, ``listens{topic_name}``,
    ``messages_published_total``, ``messages_delivered_total``, ``gaps_total``,
    ``token_revocations_total``, ``broker_up{kind}``, ``broker_reconnects_total``, ``broker_stalls_total``,
    ``broker_invalid_envelopes_total``, ``ws_handshakes_total{status}``, ``refusals_total{error}``
    and ``slow_consumer_drops_total``. Counters are read through their owners,
    :class:`realtime.stats.NodeStats` and :class:`realtime.stats.BrokerStats`.
    """

    def __init__(self, node: Node, probe: LatencyProbe | None = None) -> None:
        self._node = node
        self._probe = probe

    def collect(self) -> Iterable[Metric]:
        """Yield one sample set per metric, read from the node now (O(listens))."""
        node, probe = self._node, self._probe
        yield GaugeMetricFamily("realtime_connections", "Open WebSocket connections.", value=len(node.peers))
        yield GaugeMetricFamily(
            "realtime_topics", "Topics with at least one local listener.", value=topic_count(node, probe)
        )
        listens = GaugeMetricFamily(
            "realtime_listens", "Active LISTENs on this instance by topic name.", labels=["topic_name"]
        )
        for name, count in sorted(listens_by_name(node).items()):
            listens.add_metric([name], count)
        yield listens
        stats = node.stats
        yield _counter("realtime_messages_published", "Publications accepted through this instance.", stats.published)
        delivered = stats.delivered - (probe.deliveries if probe else 0)
        yield _counter("realtime_messages_delivered", "MESSAGE frames queued to local listeners.", delivered)
        yield _counter("realtime_gaps", "Broker reconnects announced to clients as GAP.", stats.gaps)
        recovery = node.recovery.stats
        yield _counter("realtime_history_reads", "Reads of topic history for recovery.", recovery.reads)
        yield _counter(
            "realtime_history_reads_skipped",
            "New topics whose position was not read (over the per-instance learning budget).",
            recovery.unlearned,
        )
        yield _counter(
            "realtime_messages_recovered", "MESSAGE frames queued from history (resumed clients).", recovery.recovered
        )
        yield _counter(
            "realtime_history_lost", "GAP history_lost sent (per connection and topic).", recovery.history_gaps
        )
        yield _counter(
            "realtime_duplicates_dropped", "Live publications dropped as already delivered.", recovery.duplicates
        )
        presence = node.presence
        yield GaugeMetricFamily(
            "realtime_presence_entries",
            "This instance's presence entries (connection x topic).",
            value=presence.entries,
        )
        yield _counter("realtime_presence_writes", "Presence batches written to the store.", presence.writes)
        yield _counter(
            "realtime_presence_write_failures", "Presence batches the store refused (retried).", presence.write_failures
        )
        yield _counter("realtime_presence_events", "JOIN/LEAVE frames queued to local listeners.", presence.events)
        yield _counter("realtime_token_revocations", "Token revocations applied.", stats.revocations)
        yield _counter(
            "realtime_slow_consumer_drops", "Connections closed with 4008 (slow consumer).", stats.slow_consumers
        )
        refusals = CounterMetricFamily(
            "realtime_refusals", "Error RESPONSEs sent to WebSocket clients, by error code.", labels=["error"]
        )
        for code, count in sorted(stats.refusals.items()):
            refusals.add_metric([code], count)
        yield refusals
        handshakes = CounterMetricFamily(
            "realtime_ws_handshakes", "WebSocket opening handshakes by HTTP status (101: upgraded).", labels=["status"]
        )
        for status, count in sorted(stats.handshakes.items()):
            handshakes.add_metric([str(status)], count)
        yield handshakes
        broker = node.broker
        up = GaugeMetricFamily("realtime_broker_up", "1 while the broker is connected.", labels=["kind"])
        up.add_metric([broker.kind], 1.0 if broker.ready else 0.0)
        yield up
        counts = broker.stats
        for name, doc, value in (
            (
                "realtime_broker_reconnects",
                "Times the Redis subscription came back after a loss.",
                counts.reconnects,
            ),
            ("realtime_broker_invalid_envelopes", "Malformed Redis envelopes dropped.", counts.invalid_envelopes),
            (
                "realtime_broker_received",
                "Publications received from the broker (per-topic routing: only topics with local listeners).",
                counts.received,
            ),
            (
                "realtime_broker_stalls",
                "Redis links dropped by the delivery probe (answering, not delivering).",
                counts.stalls,
            ),
        ):
            yield _counter(name, doc, value)


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


def topic_count(node: Node, probe: LatencyProbe | None) -> int:
    """Topics with local listeners, not counting the latency probe's."""
    return len(node.index) - (1 if probe is not None and node.index.get(probe.topic) else 0)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


PROBE_PREFIX = "__probe__."
"""Probe topics fail the topic grammar, so no client can LISTEN to them."""


class LatencyProbe:
    """Samples publish-to-deliver latency without touching the fan-out path.

    Every ``interval`` seconds it publishes one message through the broker (Redis: a full
    round trip through the shared channel) to a topic only it listens to, and observes the
    time until the node's fan-out hands the frame to it (it sits in the topic index like a
    connection). This measures broker latency plus event-loop lag, sampled; it does not
    include a client's own socket queue.

    Attributes:
        topic: this instance's probe topic.
        deliveries: probe frames received (subtracted from the delivered counter).
    """

    def __init__(self, node: Node, histogram: Histogram, interval: float) -> None:
        self.topic = f"{PROBE_PREFIX}{os.getpid():x}-{id(self):x}"
        self.deliveries = 0
        self._node = node
        self._histogram = histogram
        self._interval = interval
        self._sent: float | None = None

    def send(self, frame: bytes) -> None:
        """Called by the node's fan-out, as for a connection: observe the latency."""
        self.deliveries += 1
        if self._sent is not None:
            self._histogram.observe(time.perf_counter() - self._sent)
            self._sent = None

    async def run(self) -> None:
        """Probe until cancelled."""
        index, broker = self._node.index, self._node.broker
        index.add(self.topic, cast(SendQueue, self))
        broker.watch(self.topic)  # per-topic routing: receive the probe topic's channel
        try:
            while True:
                await asyncio.sleep(self._interval)
                if not self._node.broker.ready:
                    continue
                self._sent = time.perf_counter()
                try:
                    await self._node.broker.publish(self.topic, "probe")
                except BrokerUnavailable:
                    self._sent = None
        finally:
            index.discard(self.topic, cast(SendQueue, self))
            broker.unwatch(self.topic)


class HttpMetrics:
    """Per-app registry with the node collector and the HTTP request metrics.

    Attributes:
        registry: what ``/metrics`` exposes.
        requests: ``realtime_http_requests_total{method,route,status}``.
        duration: ``realtime_http_request_duration_seconds{route}`` (not ``/ws``, whose
            "request" lasts as long as the connection).
        auth_failures: ``realtime_auth_failures_total{reason}`` (HTTP 401 by reason, 403 as
            ``forbidden``).
        latency: ``realtime_publish_to_deliver_seconds``, fed by ``probe``.
        probe: the latency probe (``None`` when ``METRICS_PROBE_INTERVAL`` is 0).
    """

    def __init__(self, node: Node, probe_interval: float = 0.0) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "realtime_publish_to_deliver_seconds",
            "Publish-to-fan-out latency through the broker, sampled by a probe every METRICS_PROBE_INTERVAL s.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )
        self.probe = LatencyProbe(node, self.latency, probe_interval) if probe_interval > 0 else None
        self.registry.register(NodeCollector(node, self.probe))
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

    def observe(self, request: web.Request, answer: web.StreamResponse | web.HTTPException, started: float) -> None:
        """Count one finished request (``answer``: the response, or the HTTP exception raised)."""
        status = answer.status
        route = route_of(request)
        self.requests.labels(request.method, route, str(status)).inc()
        if route != "/ws":
            self.duration.labels(route).observe(time.perf_counter() - started)
        if status == 401:
            self.auth_failures.labels(auth_failure_reason(answer)).inc()
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


def auth_failure_reason(answer: web.StreamResponse | web.HTTPException | bytes | str | None) -> str:
    """The reason label of a 401 (an answer, or just its body).

    The :class:`~http_api.api_error.AuthReason` of the ``AuthError`` it was rendered from
    (set where the failure was raised) wins; else a ``reason`` member (``[a-z][a-z0-9_]*``)
    of its JSON body; else ``other``. The message is never read, and nothing from the
    request itself is returned (no secrets in labels).
    """
    if isinstance(answer, web.StreamResponse | web.HTTPException):
        reason = auth_reason(answer)
        if reason is not None:
            return reason.value
        body = answer.text if isinstance(answer, web.HTTPException) else getattr(answer, "body", None)
        answer = body if isinstance(body, bytes | str) else None
    try:
        data = orjson.loads(answer or b"{}")
    except orjson.JSONDecodeError:
        return "other"
    if not isinstance(data, dict):
        return "other"
    reason = data.get("reason")
    return reason if isinstance(reason, str) and _REASON.fullmatch(reason) else "other"


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every request by route and status (outermost, so it sees the final status)."""
    metrics = request.app[METRICS]
    started = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        metrics.observe(request, exc, started)
        raise
    metrics.observe(request, response, started)
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
    if not settings.observability.metrics_enabled:
        return
    app[METRICS] = HttpMetrics(app[NODE], settings.observability.metrics_probe_interval)
    app.middlewares.insert(0, metrics_middleware)
    if app[METRICS].probe is not None:
        app.cleanup_ctx.append(_probe_ctx)
    if settings.observability.metrics_port:
        app.cleanup_ctx.append(_metrics_server)
    else:
        app.router.add_get("/metrics", metrics_handler)


async def _probe_ctx(app: web.Application) -> AsyncIterator[None]:
    probe = app[METRICS].probe
    assert probe is not None
    task = asyncio.create_task(probe.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _metrics_server(app: web.Application) -> AsyncIterator[None]:
    """Serve ``/metrics`` alone on ``METRICS_HOST``:``METRICS_PORT`` while the app runs."""
    settings = app[SETTINGS]
    side = web.Application()
    side[METRICS] = app[METRICS]
    side.router.add_get("/metrics", metrics_handler)
    runner = web.AppRunner(side, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.server.host, settings.observability.metrics_port, reuse_address=True)
    await site.start()
    log.info("metrics_listening", host=settings.server.host, port=settings.observability.metrics_port)
    try:
        yield
    finally:
        await runner.cleanup()
