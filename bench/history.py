"""``python -m bench.history``: what history and recovery (issue 16) cost.

Everything runs on loopback against a private ``redis-server`` this script starts and
stops (:mod:`bench.private_redis`), bounded in count and time.

1. ``publish`` (:mod:`bench.history_publish`): publications/s through the Redis Function
   (``FCALL <p>_publish``), sequential and pipelined, and Redis CPU per call, against a plain
   ``PUBLISH`` of the same envelope.
2. ``delivery``: our server (Redis, one worker) at the *heavy* shape (50 listeners on one
   topic x 1,000 msg/s) and the *sparse* one (1,000 listeners over 1,000 topics x 100
   msg/s), server CPU per delivery on a topic name that keeps history (published through
   the Function) against one that does not (the plain envelope), interleaved, with the
   main benchmark's load generator (:mod:`bench.scenarios`): loss and duplicates counted.
3. ``storm`` (:mod:`bench.history_storm`): 10,000 connections over 100 topics resume at
   once, each 100 publications behind: time until all recovered, history reads, and the
   first live delivery after.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench import history_publish, history_storm
from bench.private_redis import PrivateRedis
from bench.procstat import raise_fd_limit
from bench.scenarios import Fleet, measure, open_listeners
from bench.servers import ROOT, Server, source_state

SCENARIOS = ("publish", "delivery", "storm")
CASES: dict[str, tuple[int, int, float]] = {"heavy": (50, 1, 1000.0), "sparse": (1000, 1000, 100.0)}
"""Delivery cases: name -> (listeners, topics, msgs/s)."""


def topics_file(directory: Path, history_size: int) -> Path:
    """A ``TOPICS_FILE`` with ``bench:hist`` (history) and ``bench:plain`` (none), both public."""
    path = directory / "topics.toml"
    path.write_text(
        f'[topics."bench:hist"]\ntarget = "any"\nhistory_size = {history_size}\nhistory_ttl = 600\n\n'
        '[topics."bench:plain"]\ntarget = "any"\n'
    )
    return path


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of ``values``."""
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def delivery(
    redis_url: str,
    directory: Path,
    *,
    reps: int,
    duration: float,
    scale: float,
    hist_mode: str,
    root: Path | None = None,
) -> dict[str, Any]:
    """Scenario 2: every case with history and without, ``reps`` interleaved rounds."""
    server = Server("ours-redis", redis_url, env={"TOPICS_FILE": str(topics_file(directory, 100))}, root=root or ROOT)
    fleet = Fleet(2)
    runs: list[dict[str, Any]] = []
    try:
        server.start()
        shapes = {}
        for case, (listeners, count, rate) in CASES.items():
            listeners = max(1, int(listeners * scale))
            count = max(1, min(count, listeners))
            for kind in ("hist", "plain"):
                topics = [f"bench:{kind}.{case[0]}{i}" for i in range(count)]
                setup = open_listeners(server, fleet, listeners, topics)
                if setup["failed"]:
                    raise RuntimeError(f"listeners failed: {setup['errors']}")
                shapes[case, kind] = (listeners, topics, rate * scale)
        for (_, kind), (listeners, topics, rate) in shapes.items():  # warm-up: streams learn their place
            measure(
                server,
                fleet,
                topics,
                rate=rate,
                duration=0.5,
                size=200,
                listeners=listeners,
                mode=_mode(kind, hist_mode),
            )
        for rep in range(reps):
            for case in CASES:
                kinds = ("hist", "plain") if rep % 2 == 0 else ("plain", "hist")
                for kind in kinds:
                    listeners, topics, rate = shapes[case, kind]
                    run = measure(
                        server,
                        fleet,
                        topics,
                        rate=rate,
                        duration=duration,
                        size=200,
                        listeners=listeners,
                        mode=_mode(kind, hist_mode),
                    )
                    runs.append(run | {"case": case, "kind": kind, "rep": rep, "topics": len(topics)})
    finally:
        fleet.stop()
        server.stop()
    return {"runs": runs, "hist_mode": hist_mode, "summary": _delivery_summary(runs)}


def _mode(kind: str, hist_mode: str) -> str:
    return hist_mode if kind == "hist" else "redis"


def _delivery_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for case in CASES:
        row: dict[str, Any] = {}
        for kind in ("hist", "plain"):
            mine = [r for r in runs if r["case"] == case and r["kind"] == kind]
            row[kind] = {
                "us_per_delivery": spread([r["server_us_per_delivery"] or 0.0 for r in mine]),
                "p50_ms": spread([r["latency_ms"]["p50"] for r in mine]),
                "p99_ms": spread([r["latency_ms"]["p99"] for r in mine]),
                "lost": sum(r["lost"] for r in mine),
                "duplicated": sum(r["duplicated"] for r in mine),
                "client_limited": sum(r["client_limited"] for r in mine),
            }
        pairs = [
            (h["server_us_per_delivery"] or 0.0) / (p["server_us_per_delivery"] or 1.0)
            for h in runs
            for p in runs
            if h["case"] == p["case"] == case and h["rep"] == p["rep"] and h["kind"] == "hist" and p["kind"] == "plain"
        ]
        row["ratio"] = spread(pairs) if pairs else None
        summary[case] = row
    return summary


def _publish_summary(result: dict[str, Any]) -> dict[str, Any]:
    summary = {}
    for kind in ("fcall", "publish"):
        for batch in sorted({r["batch"] for r in result["runs"]}):
            mine = [r for r in result["runs"] if r["kind"] == kind and r["batch"] == batch]
            summary[f"{kind} batch {batch}"] = {
                "per_s": spread([r["per_s"] for r in mine]),
                "redis_usec_per_call": spread([r["redis_usec_per_call"] for r in mine]),
                "redis_process_us_per_call": spread([r["redis_process_us_per_call"] for r in mine]),
            }
    return summary


def _fmt(s: dict[str, float] | None) -> str:
    return "-" if s is None else f"{s['median']:g} ({s['min']:g}-{s['max']:g})"


def print_report(result: dict[str, Any]) -> None:
    """The figures as plain text (the JSON has every run)."""
    if "publish" in result:
        print("publish cost (median (min-max)):")
        for name, row in result["publish"]["summary"].items():
            print(
                f"  {name:18} {_fmt(row['per_s'])}/s  redis {_fmt(row['redis_usec_per_call'])} us/call (commandstats), {_fmt(row['redis_process_us_per_call'])} us/call (process)"
            )
    if "delivery" in result:
        print(f"delivery cost, server us per delivery (hist published with {result['delivery']['hist_mode']}):")
        for case, row in result["delivery"]["summary"].items():
            for kind in ("hist", "plain"):
                r = row[kind]
                print(
                    f"  {case:6} {kind:5} {_fmt(r['us_per_delivery'])} us  p50 {_fmt(r['p50_ms'])} p99 {_fmt(r['p99_ms'])} ms  lost {r['lost']} dup {r['duplicated']}"
                )
            print(f"  {case:6} ratio hist/plain {_fmt(row['ratio'])}")
    for run in result.get("storm", []):
        print(
            f"storm ({run['broker']}): {run['complete']}/{run['conns']} recovered in {run['all_recovered_s']} s "
            f"(p50 {run['recovered_ms']['p50']} ms; RESPONSE to last recovered p50/p99 {run['catch_up_ms']['p50']}/{run['catch_up_ms']['p99']} ms), connected by {run['all_connected_s']} s, out of order {run['out_of_order']}, "
            f"GAPs {run['gaps']}, reads {run['metrics'].get('history_reads')}, server CPU {run['server_cpu_pct']}%, "
            f"generators {run['generator_cpu_pct']}%, live p50/p99 {run['live']['latency_ms']['p50']}/{run['live']['latency_ms']['p99']} ms ({run['live']['got']} got)"
        )


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.history", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default=",".join(SCENARIOS), help="scenarios to run: publish,delivery,storm")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions (publish, delivery)")
    parser.add_argument("--quick", action="store_true", help="tiny counts (the smoke test)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per delivery run")
    parser.add_argument(
        "--hist-mode",
        choices=("fcall", "offsets"),
        default="fcall",
        help="how the delivery scenario publishes to the history topic",
    )
    parser.add_argument("--storm-brokers", default="redis,memory", help="brokers the storm runs on")
    parser.add_argument("--storm-conns", type=int, default=10_000)
    parser.add_argument("--storm-topics", type=int, default=100)
    parser.add_argument("--storm-generators", type=int, default=2)
    parser.add_argument("--storm-concurrency", type=int, default=1000, help="handshakes in flight per generator")
    parser.add_argument(
        "--server-root", type=Path, help="run our server from this source tree (another commit's export)"
    )
    parser.add_argument("--out", type=Path, help="write the JSON here")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every scenario asked for, against one private redis-server."""
    only = set(args.only.split(","))
    result: dict[str, Any] = {
        "meta": {
            "source": source_state(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "args": vars(args) | {"out": str(args.out)},
        }
    }
    with PrivateRedis() as redis_proc, tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        for name in SCENARIOS:
            if name in only:
                try:
                    result[name] = _scenario(name, args, redis_proc.url, Path(tmp))
                except Exception as exc:  # noqa: BLE001 - reported in the JSON; the other scenarios still run
                    result.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"[:2000]
    result["meta"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    return result


def _scenario(name: str, args: argparse.Namespace, redis_url: str, tmp: Path) -> Any:
    quick = args.quick
    if name == "publish":
        counts = (200, 1000) if quick else (5000, 50_000)
        pub = history_publish.run(
            reps=args.reps, sequential=counts[0], pipelined=counts[1], batch=100, size=200, history_size=100
        )
        return pub | {"summary": _publish_summary(pub)}
    if name == "delivery":
        scale, duration = (0.1, 1.0) if quick else (1.0, args.duration)
        return delivery(
            redis_url,
            tmp,
            reps=args.reps,
            duration=duration,
            scale=scale,
            hist_mode=args.hist_mode,
            root=args.server_root,
        )
    opts = {"conns": args.storm_conns, "topics": args.storm_topics, "behind": 100, "extra": 20, "size": 200}
    opts |= {"generators": args.storm_generators, "concurrency": args.storm_concurrency, "timeout": 60.0}
    opts["root"] = args.server_root or ROOT
    if quick:
        opts |= {"conns": 100, "topics": 5, "behind": 10, "extra": 2, "timeout": 20.0}
    path = topics_file(tmp, max(100, opts["behind"]))
    return [history_storm.run(b, redis_url, path, opts) for b in args.storm_brokers.split(",")]


def main(argv: list[str] | None = None) -> int:
    """Run, print the figures, write the JSON (``--out``); 1 if a run lost or duplicated messages."""
    args = _parse(argv)
    raise_fd_limit()
    result = run(args)
    print_report(result)
    if args.out:
        args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2, default=str))
    for name, error in result.get("errors", {}).items():
        print(f"{name} failed: {error}", file=sys.stderr)
    broken = bool(result.get("errors"))
    broken |= any(r["lost"] or r["duplicated"] for r in result.get("delivery", {}).get("runs", []))
    broken |= any(not s["all_recovered"] or s["out_of_order"] for s in result.get("storm", []))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
