"""One run of :mod:`bench.scale`: a server, its generators, the ramp, the settle, the fan-out."""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import time
import urllib.error
import urllib.request
from array import array
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import orjson

from bench import scale_gen
from bench.procstat import Cpu, cpu, listen_overflows, loadavg, rss_bytes
from bench.publisher import payload
from bench.scenarios import percentile
from bench.servers import API_KEY, Server

SCALE_ENV = {
    # every generator address opens thousands of sockets at once: the per-address bound on
    # sockets without a complete request (64 by default) would refuse most of them
    "MAX_PENDING_PER_IP": "0",
    "IDLE_TIMEOUT": "3600",
}


@dataclass
class ScaleServer(Server):
    """:class:`bench.servers.Server` with ``workers`` processes (``realtime serve --workers``)."""

    workers: int = 1

    def _command(self) -> tuple[list[str], dict[str, str]]:
        argv, env = super()._command()
        if self.workers > 1:
            argv += ["--workers", str(self.workers)]
        return argv, env


class Generators:
    """``count`` :mod:`bench.scale_gen` processes, each driven over its own pipe."""

    def __init__(self, count: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs: list[BaseProcess] = []
        for _ in range(count):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=scale_gen.main, args=(theirs,), daemon=True)
            proc.start()
            self.pipes.append(mine)
            self.procs.append(proc)

    def pids(self) -> list[int]:
        """The generators' process ids."""
        return [p.pid for p in self.procs if p.pid is not None]

    def all(self, cmds: list[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
        """Send ``cmds[i]`` to generator ``i``; every reply, in order.

        Raises:
            TimeoutError: a generator did not answer within ``timeout`` seconds.
        """
        for pipe, cmd in zip(self.pipes, cmds, strict=True):
            pipe.send(cmd)
        deadline = time.monotonic() + timeout
        replies = []
        for pipe in self.pipes:
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError("a scale generator did not answer")
            replies.append(pipe.recv())
        return replies

    def stop(self) -> None:
        """Ask each to close its connections and exit; terminate those still alive after 15 s."""
        for pipe in self.pipes:
            with contextlib.suppress(OSError):  # it died already
                pipe.send({"op": "close"})
        deadline = time.monotonic() + 15
        for proc in self.procs:
            proc.join(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)


def sockstat_mem_kb() -> int:
    """Kernel memory held by TCP sockets, KB (``/proc/net/sockstat`` ``TCP: ... mem <pages>``;
    system-wide: the server's and the clients' ends)."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            return int(fields[fields.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    return 0


def slab_kb() -> int:
    """Kernel slab memory, KB (``Slab`` in ``/proc/meminfo``; system-wide, so both ends of
    every loopback connection and whatever else runs: socket, inode, file structures)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Slab:"):
            return int(line.split()[1])
    return 0


def fd_counts(pids: list[int]) -> list[int]:
    """Open file descriptors of each live process of ``pids`` (the server's: how close to the
    open-file limit each one is)."""
    counts = []
    for pid in pids:
        try:
            counts.append(len(os.listdir(f"/proc/{pid}/fd")))
        except OSError:
            continue
    return counts


def measure(redis_url: str, args: argparse.Namespace, topic: str) -> dict[str, Any]:
    """One run (see :mod:`bench.scale`); ``redis_url`` empty: the memory broker."""
    name = "ours-redis" if redis_url else "ours-memory"
    server = ScaleServer(name, redis_url, env=dict(SCALE_ENV), workers=args.workers)
    gens = Generators(args.generators)
    try:
        server.start(timeout=60)
        addrs = [f"127.0.0.{2 + i}" for i in range(args.addrs)]
        base = {"op": "open", "host": "127.0.0.1", "port": server.port, "topic": topic, "timeout": args.ramp_timeout}
        _warm_up(gens, base, addrs)
        time.sleep(1.0)
        rss0, sock0, slab0 = rss_bytes(server.pids()), sockstat_mem_kb(), slab_kb()
        setup = _ramp(server, gens, base, addrs, args)
        time.sleep(args.settle)
        rss1, sock1, slab1 = rss_bytes(server.pids()), sockstat_mem_kb(), slab_kb()
        opened = max(1, setup["opened"])
        memory = {
            "rss_before_mb": round(rss0 / 2**20, 1),
            "rss_after_mb": round(rss1 / 2**20, 1),
            "kb_per_conn": round((rss1 - rss0) / 1024 / opened, 2),
            "sockstat_mem_kb_per_conn": round((sock1 - sock0) / opened, 2),
            "slab_kb_per_conn": round((slab1 - slab0) / opened, 2),
            "fds": fd_counts(server.pids()),
        }
        pubs = [_publish(server, gens, topic, seq, args) for seq in range(args.publications)]
        return {
            "broker": "redis" if redis_url else "memory",
            "conns": args.conns,
            "workers": args.workers,
            "generators": args.generators,
            "addrs": args.addrs,
            "setup": setup,
            "memory": memory,
            "publications": pubs,
            "server_log_tail": server.log_tail()[-1500:] if _troubled(setup, pubs) else "",
        }
    finally:
        gens.stop()
        server.stop()


def _warm_up(gens: Generators, base: dict[str, Any], addrs: list[str]) -> None:
    """One connection from generator 0, so the first connection's one-time allocations are
    in the RSS before the ramp (the others get an empty command)."""
    first = base | {"addrs": addrs[:1], "count": 1, "concurrency": 1, "sample": 1}
    rest = base | {"addrs": addrs[:1], "count": 0, "concurrency": 1, "sample": 1}
    gens.all([first] + [rest] * (len(gens.pipes) - 1), 30)


def _ramp(
    server: Server, gens: Generators, base: dict[str, Any], addrs: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    count = len(gens.pipes)
    cmds = [
        base
        | {
            "addrs": addrs[g::count],
            "count": args.conns // count + (1 if g < args.conns % count else 0),
            "concurrency": args.concurrency,
            "sample": args.sample,
        }
        for g in range(count)
    ]
    overflows, load = listen_overflows(), loadavg()
    gen_cpu0, server_cpu0 = cpu(gens.pids()), cpu(server.pids())
    per_gen0 = [cpu([pid]) for pid in gens.pids()]
    start = time.monotonic_ns()
    replies = gens.all(cmds, args.ramp_timeout + 60)
    wall = (time.monotonic_ns() - start) / 1e9
    setup, done = array("q"), array("q")
    for reply in replies:
        setup.frombytes(reply["setup_ns"])
        done.frombytes(reply["done_ns"])
    opened = len(setup)
    ramp_s = (max(done) - start) / 1e9 if done else wall
    by_tenth = _rate_by_tenth(sorted(done), start)
    ms = sorted(x / 1e6 for x in setup)
    per_gen = [c - c0 for c, c0 in zip((cpu([pid]) for pid in gens.pids()), per_gen0, strict=True)]
    sources: dict[str, int] = {}
    for reply in replies:
        for addr, n in reply["sources"].items():
            sources[addr] = sources.get(addr, 0) + n
    return {
        "opened": opened,
        "sources": dict(sorted(sources.items())),
        "failed": sum(r["failed"] for r in replies),
        "errors": [e for r in replies for e in r["errors"]][:6],
        "wall_s": round(ramp_s, 2),
        "conn_per_s": round(opened / ramp_s, 1) if ramp_s else 0.0,
        "conn_per_s_by_tenth": by_tenth,
        "setup_ms": {k: round(percentile(ms, p), 2) for k, p in (("p50", 50), ("p99", 99), ("max", 100))},
        "server_cpu_pct": round(100 * (cpu(server.pids()) - server_cpu0).total / wall, 1),
        "generator_cpu_pct": round(100 * (cpu(gens.pids()) - gen_cpu0).total / wall, 1),
        "generator_cpu_pct_each": [round(100 * c.total / wall, 1) for c in per_gen],
        "listen_overflows": listen_overflows() - overflows,
        "loadavg_before": load,
        "loadavg_after": loadavg(),
    }


def _rate_by_tenth(done: list[int], start: int) -> list[float]:
    """Connections/s in each tenth of the ramp's connections (does setup slow as they grow?)."""
    rates: list[float] = []
    last = start
    for k in range(1, 11):
        if len(done) < 10:
            break
        end = done[k * len(done) // 10 - 1]
        rates.append(round(len(done) / 10 / max((end - last) / 1e9, 1e-9)))
        last = end
    return rates


def _post(server: Server, body: bytes) -> tuple[int, str]:
    """``POST /publish``; the status and, when refused, the body (a refusal is a figure)."""
    headers = {"Authorization": f"Api-Key {API_KEY}", "Content-Type": "application/json"}
    req = urllib.request.Request(server.url + "/publish", data=body, method="POST", headers=headers)  # noqa: S310 - loopback
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback
            return int(resp.status), ""
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")[:300]


def _publish(server: Server, gens: Generators, topic: str, seq: int, args: argparse.Namespace) -> dict[str, Any]:
    """One stamped publication on the topic; when each connection got it."""
    time.sleep(args.spacing)
    server_cpu0, gen_cpu0 = cpu(server.pids()), cpu(gens.pids())
    message = payload(seq, args.size)
    stamp = int(message.split("~")[2])
    status, refusal = _post(server, orjson.dumps({"topic": topic, "message": message}))
    wait = 20 if status == 202 else 1
    replies = gens.all([{"op": "wait", "seq": seq, "timeout": wait}] * len(gens.pipes), 60)
    server_cpu: Cpu = cpu(server.pids()) - server_cpu0
    parsed, kernel = array("q"), array("q")
    for reply in replies:
        parsed.frombytes(reply["parsed_ns"])
        kernel.frombytes(reply["kernel_ns"])
    ms = sorted((t - stamp) / 1e6 for t in parsed)
    kms = sorted((t - stamp) / 1e6 for t in kernel)
    return {
        "seq": seq,
        "status": status,
        "refusal": refusal,
        "expected": sum(r["open"] for r in replies),
        "got": len(ms),
        "dupes": sum(r["dupes"] for r in replies),
        "first_ms": round(ms[0], 1) if ms else None,
        "p50_ms": round(percentile(ms, 50), 1) if ms else None,
        "p99_ms": round(percentile(ms, 99), 1) if ms else None,
        "last_ms": round(ms[-1], 1) if ms else None,
        "kernel": {
            "n": len(kms),
            "p50_ms": round(percentile(kms, 50), 1) if kms else None,
            "last_ms": round(kms[-1], 1) if kms else None,
        },
        "server_cpu_s": round(server_cpu.total, 2),
        "generator_cpu_s": round((cpu(gens.pids()) - gen_cpu0).total, 2),
    }


def _troubled(setup: dict[str, Any], pubs: list[dict[str, Any]]) -> bool:
    """Whether a connection failed or a publication was refused or not delivered to all."""
    return bool(setup["failed"]) or any(p["status"] != 202 or p["got"] != p["expected"] for p in pubs)
