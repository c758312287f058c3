"""``python -m bench.scale``: many idle LISTENing connections on one instance (issue 17).

One server (ours, ``--workers`` processes, uvloop, the per-client limits off as in
:mod:`bench.servers`) with the Redis broker (a private ``redis-server``,
:mod:`bench.private_redis`) and/or the memory broker. ``--generators`` processes
(:mod:`bench.scale_gen`) open ``--conns`` connections, each bound to one of ``--addrs``
loopback source addresses (``127.0.0.2`` and up) and LISTENing to the public topic
``channel:update.all`` (no token), at most ``--concurrency`` handshakes in flight per
generator. Then:

1. **Setup**: connections/s over the whole ramp, per-connection setup time (TCP connect,
   upgrade, LISTEN, RESPONSE) p50/p99, server and generator CPU during the ramp, accept-queue
   overflows (``ListenOverflows``).
2. **Idle memory**: server RSS (process tree) before the ramp (one warm-up connection open)
   and after a ``--settle``; growth per connection in KB. Kernel socket memory is not in RSS:
   ``/proc/net/sockstat`` (system-wide, both ends) is reported beside it.
3. **Fan-out**: ``--publications`` stamped ``POST /publish`` on the topic, ``--spacing`` s
   apart, each awaited until every connection got it: first / median / p99 / last delivery
   after the stamp (parse time in the generators: an upper bound; and the kernel receive time
   on a sample), server and generator CPU per publication.

Bounded: every wait has a timeout and ``--timeout`` (SIGALRM) ends the whole run; the
generators, the server and the private Redis are stopped by PID in every case.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from bench import scale_run
from bench.private_redis import PrivateRedis
from bench.procstat import raise_fd_limit, run_bounded
from bench.servers import BenchError, source_state, versions

TOPIC = "channel:update.all"


def limits() -> dict[str, Any]:
    """The operating-system limits that bound the connection count on this machine."""
    import resource

    def read(path: str) -> str:
        try:
            return Path(path).read_text().strip().replace("\t", " ")
        except OSError:
            return "unknown"

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "nofile_soft": soft,
        "nofile_hard": hard,
        "fs.file-max": read("/proc/sys/fs/file-max"),
        "fs.nr_open": read("/proc/sys/fs/nr_open"),
        "ip_local_port_range": read("/proc/sys/net/ipv4/ip_local_port_range"),
        "somaxconn": read("/proc/sys/net/core/somaxconn"),
        "tcp_max_syn_backlog": read("/proc/sys/net/ipv4/tcp_max_syn_backlog"),
        "tcp_mem_pages": read("/proc/sys/net/ipv4/tcp_mem"),
        "nf_conntrack_max": read("/proc/sys/net/netfilter/nf_conntrack_max"),
        "cpus": len(__import__("os").sched_getaffinity(0)),
    }


def plan(args: argparse.Namespace, found: dict[str, Any]) -> list[str]:
    """Fill in ``--generators`` and ``--addrs`` left at 0 from the limits.

    Returns:
        Warnings: a size the limits will not let through (the run goes ahead and reports
        where it failed).
    """
    per_process = int(found["nofile_hard"]) - 200  # pipes, the event loop, the listening socket
    low, high = (int(x) for x in str(found["ip_local_port_range"]).split())
    ports = high - low + 1
    if not args.generators:
        args.generators = max(2, math.ceil(args.conns / per_process))
    if not args.addrs:
        # a few thousand connections per address: ports stay sparse, a bind stays cheap
        args.addrs = max(args.generators, math.ceil(args.conns / 5000), math.ceil(args.conns / (ports * 0.8)))
    args.addrs = max(args.addrs, args.generators)
    warnings = []
    if math.ceil(args.conns / args.workers) > per_process:
        warnings.append(
            f"{args.conns:,} connections on {args.workers} worker(s) exceed the open-file hard limit "
            f"({found['nofile_hard']:,} per process): expect failures past ~{per_process * args.workers:,}"
        )
    if math.ceil(args.conns / args.addrs) > ports:
        warnings.append(f"more than {ports:,} connections per source address: raise --addrs")
    return warnings


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every ``--broker`` asked for, each with its own server and generators."""
    found = limits()
    warnings = plan(args, found)
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    meta = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "limits": found,
        "warnings": warnings,
        "versions": versions(),
        "source": source_state(),
        "options": {k: v for k, v in vars(args).items() if k != "out"},
    }
    result: dict[str, Any] = {"meta": meta, "runs": [], "errors": {}}
    for broker in args.broker.split(","):
        try:
            one = _one(broker, args)
        except (BenchError, TimeoutError, OSError) as exc:
            result["errors"][broker] = f"{type(exc).__name__}: {exc}"
            continue
        result["runs"].append(one)
        print_run(one)
    return result


def _one(broker: str, args: argparse.Namespace) -> dict[str, Any]:
    if broker == "memory":
        if args.workers > 1:
            raise BenchError("the memory broker is per process: --workers > 1 needs --broker redis")
        return scale_run.measure("", args, TOPIC)
    with PrivateRedis() as redis:
        return scale_run.measure(redis.url, args, TOPIC)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def print_run(run: dict[str, Any]) -> None:
    """A few lines per run on stdout."""
    setup, mem = run["setup"], run["memory"]
    print(
        f"\n== {run['broker']}: {run['conns']:,} connections, {run['workers']} worker(s), "
        f"{run['generators']} generators over {run['addrs']} source addresses"
    )
    print(
        f"setup: {setup['opened']:,} opened, {setup['failed']:,} failed in {setup['wall_s']} s = "
        f"{setup['conn_per_s']:,.0f} conn/s; p50 {_ms(setup['setup_ms']['p50'])} ms, "
        f"p99 {_ms(setup['setup_ms']['p99'])} ms; server CPU {setup['server_cpu_pct']}%, "
        f"generators {setup['generator_cpu_pct']}%; overflows {setup['listen_overflows']}"
    )
    print(f"  conn/s by tenth of the ramp: {setup['conn_per_s_by_tenth']}")
    if setup["errors"]:
        print(f"  errors: {setup['errors']}")
    print(
        f"memory: RSS {mem['rss_before_mb']} -> {mem['rss_after_mb']} MB = {mem['kb_per_conn']} KB/conn "
        f"(kernel, both ends: TCP buffers {mem['sockstat_mem_kb_per_conn']}, slab {mem['slab_kb_per_conn']} KB/conn); fds per worker {mem['fds']}"
    )
    for pub in run["publications"]:
        print(
            f"publication {pub['seq']}: {pub['got']:,}/{pub['expected']:,} got it; first {_ms(pub['first_ms'])}, "
            f"p50 {_ms(pub['p50_ms'])}, p99 {_ms(pub['p99_ms'])}, last {_ms(pub['last_ms'])} ms "
            f"(kernel-stamped sample of {pub['kernel']['n']}: last {_ms(pub['kernel']['last_ms'])} ms); "
            f"server CPU {pub['server_cpu_s']} s, generators {pub['generator_cpu_s']} s"
        )
        if pub["status"] != 202:
            print(f"  POST /publish answered {pub['status']} {pub['refusal']}")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--conns", type=int, default=100_000, help="connections to open (default 100,000)")
    add("--broker", default="redis", help="redis, memory, or redis,memory (default redis)")
    add("--workers", type=int, default=1, help="server worker processes (default 1)")
    add("--generators", type=int, default=0, help="generator processes (default: from the fd limit)")
    add("--addrs", type=int, default=0, help="source addresses 127.0.0.2 and up (default: 5,000 conns each)")
    add("--concurrency", type=int, default=64, help="handshakes in flight per generator (default 64)")
    add("--publications", type=int, default=5, help="publications on the topic after the settle (default 5)")
    add("--spacing", type=float, default=2.0, help="seconds between publications (default 2)")
    add("--settle", type=float, default=5.0, help="seconds idle before the RSS is read (default 5)")
    add("--size", type=int, default=200, help="message size, bytes (default 200)")
    add("--sample", type=int, default=64, help="kernel-stamped connections per generator (default 64)")
    add("--ramp-timeout", type=float, default=300.0, help="seconds the ramp may take (default 300)")
    add("--timeout", type=float, default=900.0, help="seconds the whole run may take (default 900)")
    add("--out", type=Path, default=None, help="write the JSON here")
    args = parser.parse_args(argv)
    if args.conns < 1 or args.workers < 1 or args.publications < 0:
        parser.error("--conns and --workers must be positive, --publications not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run, print, write the JSON; 1 if a broker's run failed, a connection did not open or
    a publication did not reach every connection."""
    args = _parse(argv)
    raise_fd_limit()
    result = run_bounded(lambda: run(args), args.timeout)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2, default=str))
    for name, error in result["errors"].items():
        print(f"{name} failed: {error}", file=sys.stderr)
    broken = bool(result["errors"])
    for one in result["runs"]:
        broken |= bool(one["setup"]["failed"]) or any(p["got"] != p["expected"] for p in one["publications"])
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
