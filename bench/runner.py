"""Runs a :class:`bench.plan.Plan`: every scenario, repetitions interleaved across servers."""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.plan import Plan
from bench.scenarios import Fleet, idle_memory, measure, open_listeners, overloaded, passed
from bench.servers import BenchError, Server, available


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _topics(server: Server, count: int) -> list[str]:
    return [f"channel:update.{i}" for i in range(count)]


class Runner:
    """Drives the servers and the :class:`Fleet` through a plan; collects raw results."""

    def __init__(self, plan: Plan, redis_url: str, servers: list[str] | None = None) -> None:
        self.plan = plan
        self.redis_url = redis_url
        wanted = servers or sorted(set(plan.compare_servers) | {c[0] for c in plan.sweep_configs})
        self.servers = [s for s in wanted if available(s)]
        self.skipped = [s for s in wanted if not available(s)]
        self.fleet = Fleet(plan.generators)
        self.results: dict[str, list[dict[str, Any]]] = {"compare": [], "sweep": [], "idle": [], "connect": []}

    def close(self) -> None:
        """Stop the generator and publisher processes."""
        self.fleet.stop()

    def _with_server(self, name: str, body: Callable[[Server], None], *, compression: bool = False) -> None:
        server = Server(name, self.redis_url, compression=compression)
        try:
            server.start()
            body(server)
        except (BenchError, TimeoutError) as exc:
            _log(f"{name}: {exc}")
            self.results.setdefault("errors", []).append({"server": name, "error": str(exc)[:500]})
        finally:
            try:
                self.fleet.close_connections()
            finally:
                server.stop()

    def compare(self) -> None:
        """Every compare case on every server, ``reps`` times, interleaved."""
        for rep in range(self.plan.reps):
            for case in self.plan.compare_cases:
                for name in [s for s in self.plan.compare_servers if s in self.servers]:

                    def body(server: Server, case: Any = case, rep: int = rep) -> None:
                        topics = _topics(server, case.topics)
                        setup = open_listeners(server, self.fleet, case.listeners, topics)
                        run = measure(
                            server, self.fleet, topics, rate=case.rate, duration=case.duration,
                            size=case.size, listeners=setup["ok"],
                        )  # fmt: skip
                        run.update(server=server.name, case=case.name, rep=rep, topics=case.topics, size=case.size)
                        run["passed"] = passed(run)
                        self.results["compare"].append(run)
                        _log(_line(run))

                    self._with_server(name, body)

    def sweep(self) -> None:
        """The listener sweep: a ladder of offered deliveries/s per (server, listeners, topics),
        climbed until the server is overloaded (so past the highest passing rate)."""
        for rep in range(self.plan.reps):
            for name, listeners, ntopics in self.plan.sweep_configs:
                if name in self.servers:
                    body = functools.partial(self._sweep_one, listeners=listeners, ntopics=ntopics, rep=rep)
                    self._with_server(name, body)

    def _sweep_one(self, server: Server, *, listeners: int, ntopics: int, rep: int) -> None:
        plan = self.plan
        topics = _topics(server, ntopics)
        setup = open_listeners(server, self.fleet, listeners, topics)
        for size in plan.sweep_sizes:
            for offered in plan.sweep_ladder:
                rate = offered * ntopics / max(1, setup["ok"])
                run = measure(
                    server,
                    self.fleet,
                    topics,
                    rate=rate,
                    duration=plan.sweep_duration,
                    size=size,
                    listeners=setup["ok"],
                )
                run.update(server=server.name, rep=rep, topics=ntopics, size=size)
                run.update(offered_deliveries_per_s=offered, passed=passed(run))
                self.results["sweep"].append(run)
                _log(_line(run))
                if overloaded(run):
                    break

    def idle(self) -> None:
        """Idle RSS per connection on each server, compression off and on, interleaved reps."""
        for rep in range(self.plan.reps):
            for compression in self.plan.idle_compression:
                for name in [s for s in self.plan.idle_servers if s in self.servers]:
                    body = functools.partial(self._idle_one, rep=rep, compression=compression)
                    self._with_server(name, body, compression=compression)

    def _idle_one(self, server: Server, *, rep: int, compression: bool) -> None:
        result = idle_memory(server, self.fleet, self.plan.idle_connections, compression=compression)
        result.update(server=server.name, rep=rep)
        self.results["idle"].append(result)
        _log(
            f"idle {server.name} compression {'on' if compression else 'off'}: {result['kb_per_connection']} "
            f"KB/conn over {result['connections']} ({result['deflated']} negotiated permessage-deflate)"
        )

    def connect(self) -> None:
        """Connection setup rate (TCP + upgrade + LISTEN with a token), interleaved reps."""
        for rep in range(self.plan.reps):
            for name in [s for s in self.plan.connect_servers if s in self.servers]:

                def body(server: Server, rep: int = rep) -> None:
                    count = self.plan.connect_connections
                    tokens = server.tokens(count)
                    result = open_listeners(server, self.fleet, count, ["remote-control:command.7"], tokens=tokens)
                    result.update(server=server.name, rep=rep)
                    if not result["failed"]:
                        del result["errors"]
                    self.results["connect"].append(result)
                    _log(f"connect {server.name}: {result['conn_per_s']} conn/s, {result['handshake_ms']}")

                self._with_server(name, body)


def _line(run: dict[str, Any]) -> str:
    lat = run["latency_ms"]
    return (
        f"{run['server']} {run.get('case') or ''} L={run['listeners']} T={run['topics']} size={run['size']} "
        f"rate={run['offered_msgs_per_s']:.0f}/s: {run['deliveries_per_s']:.0f} deliv/s, "
        f"{run['server_us_per_delivery']} us/deliv, p50={lat['p50']}ms p99={lat['p99']}ms, "
        f"lost={run['lost']} dup={run['duplicated']} client_max={run['client_cpu']['max_pct']}% "
        f"{'ok' if run['passed'] else 'FAIL'}"
    )
