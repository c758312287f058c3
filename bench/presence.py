"""``python -m bench.presence``: what presence (issue 18) costs.

Everything runs on loopback against a private ``redis-server`` this script starts and stops
(:mod:`bench.private_redis`), bounded in count and time (``--timeout``, SIGALRM).

1. ``listeners``: one topic with ``--conns`` listeners (10,000), presence on
   (``bench:pres.all``: the rule has ``presence``, not ``join_leave``) and off
   (``bench:plain.all``: no presence), ``--reps`` interleaved repetitions (the order flips
   every repetition), each run on a fresh server (Redis, one worker, as :mod:`bench.scale`
   starts it, ``PRESENCE_TTL`` 300 s so that no refresh falls in the measured window) with
   two :mod:`bench.scale_gen` generator processes: the ramp (connection + LISTEN setup rate,
   server and Redis CPU, ``FCALL``s Redis ran during it), RSS growth per connection, then
   ``--publications`` stamped ``POST /publish`` on the topic: server CPU per delivery.
   Goals: setup rate on/off within 20%; delivery cost unchanged.
2. ``stats`` (:mod:`bench.presence_stats`): one presence stats call on a topic with
   ``--entries`` entries (100,000, written straight to Redis with ``FCALL <p>_presence``):
   ``<p>_presence_get`` with limit 0, and the in-band PRESENCE through our server.
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
import redis

from bench import presence_stats, scale_run
from bench.private_redis import PrivateRedis
from bench.procstat import cpu, loadavg, raise_fd_limit, rss_bytes, run_bounded
from bench.servers import ROOT, source_state
from realtime.redis_functions import function_names, presence_key

SCENARIOS = ("listeners", "stats")
TOPICS = {"on": "bench:pres.all", "off": "bench:plain.all"}
TOPICS_FILE = '[topics."bench:pres"]\ntarget = "any"\npresence = true\n\n[topics."bench:plain"]\ntarget = "any"\n'


def uptime() -> str:
    """The machine's load as ``uptime`` prints it: the time, then ``load average: 1, 5, 15 min``."""
    one, five, fifteen = loadavg()
    return f"{time.strftime('%H:%M:%S')} load average: {one:.2f}, {five:.2f}, {fifteen:.2f}"


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of ``values``."""
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def _fcalls(url: str) -> int:
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        row: dict[str, Any] = client.info("commandstats").get("cmdstat_fcall", {})
        return int(row.get("calls", 0))
    finally:
        client.close()


def _present(url: str, channel: str, topic: str) -> int:
    """The topic's presence count in Redis (0 for a topic that keeps none)."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        reply: Any = client.fcall(function_names(channel).presence_get, 1, presence_key(channel, topic), topic, 0)
        return int(reply[0])
    except redis.ResponseError:
        return 0
    finally:
        client.close()


def listeners_run(redis_proc: PrivateRedis, topics_file: Path, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """One run: a fresh server and generators, the ramp to ``args.conns`` on the mode's
    topic, then the publications."""
    topic = TOPICS[mode]
    env = scale_run.SCALE_ENV | {"TOPICS_FILE": str(topics_file), "PRESENCE_TTL": "300"}
    server = scale_run.ScaleServer("ours-redis", redis_proc.url, env=env, root=args.server_root or ROOT)
    gens = scale_run.Generators(2)
    try:
        server.start(timeout=60)
        addrs = ["127.0.0.2", "127.0.0.3"]
        base = {"op": "open", "host": "127.0.0.1", "port": server.port, "topic": topic, "timeout": args.ramp_timeout}
        scale_run._warm_up(gens, base, addrs)  # the scale benchmark's own steps
        time.sleep(0.5)
        rss0, fcalls0, redis0 = rss_bytes(server.pids()), _fcalls(redis_proc.url), redis_proc.cpu()
        server0 = cpu(server.pids())
        setup = scale_run._ramp(server, gens, base, addrs, args)
        ramp_cpu = (cpu(server.pids()) - server0).total
        redis_cpu = (redis_proc.cpu() - redis0).total
        fcalls = _fcalls(redis_proc.url) - fcalls0
        deadline = time.monotonic() + 10
        present = _present(redis_proc.url, server.channel, topic)
        while mode == "on" and present < setup["opened"] + 1 and time.monotonic() < deadline:
            time.sleep(0.1)
            present = _present(redis_proc.url, server.channel, topic)
        time.sleep(args.settle)
        rss1 = rss_bytes(server.pids())
        cpu0 = cpu(server.pids())
        pubs = [scale_run._publish(server, gens, topic, seq, args) for seq in range(args.publications)]
        server_cpu = (cpu(server.pids()) - cpu0).total
        delivered = sum(p["got"] for p in pubs)
        return {
            "mode": mode,
            "topic": topic,
            "setup": setup,
            "fcalls_during_ramp": fcalls - (1 if mode == "on" else 0),  # the warm-up's write may land late
            "redis_cpu_during_ramp_s": round(redis_cpu, 3),
            "server_us_per_setup": round(1e6 * ramp_cpu / max(1, setup["opened"]), 1),
            "present": present,
            "kb_per_conn": round((rss1 - rss0) / 1024 / max(1, setup["opened"]), 2),
            "publications": pubs,
            "delivered": delivered,
            "expected": sum(p["expected"] for p in pubs),
            "server_cpu_publishing_s": round(server_cpu, 3),
            "us_per_delivery": round(1e6 * server_cpu / delivered, 3) if delivered else None,
        }
    finally:
        gens.stop()
        server.stop()


def listeners(redis_proc: PrivateRedis, topics_file: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Scenario 1: ``args.reps`` interleaved on/off runs, and their paired ratios."""
    runs = []
    for rep in range(args.reps):
        for mode in ("on", "off") if rep % 2 == 0 else ("off", "on"):
            run = listeners_run(redis_proc, topics_file, mode, args) | {"rep": rep}
            runs.append(run)
            _print_listeners_run(run)
    return {"conns": args.conns, "runs": runs, "summary": _listeners_summary(runs)}


def _listeners_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for mode in ("on", "off"):
        mine = [r for r in runs if r["mode"] == mode]
        summary[mode] = {
            "conn_per_s": spread([r["setup"]["conn_per_s"] for r in mine]),
            "setup_p50_ms": spread([r["setup"]["setup_ms"]["p50"] for r in mine]),
            "setup_p99_ms": spread([r["setup"]["setup_ms"]["p99"] for r in mine]),
            "server_cpu_pct_ramp": spread([r["setup"]["server_cpu_pct"] for r in mine]),
            "server_us_per_setup": spread([r["server_us_per_setup"] for r in mine]),
            "redis_cpu_ramp_s": spread([r["redis_cpu_during_ramp_s"] for r in mine]),
            "fcalls_ramp": spread([r["fcalls_during_ramp"] for r in mine]),
            "us_per_delivery": spread([r["us_per_delivery"] or 0.0 for r in mine]),
            "kb_per_conn": spread([r["kb_per_conn"] for r in mine]),
            "lost": sum(r["expected"] - r["delivered"] for r in mine),
            "failed": sum(r["setup"]["failed"] for r in mine),
        }
    pairs = [(on, off) for on in runs for off in runs if on["rep"] == off["rep"] and on["mode"] == "on" != off["mode"]]
    summary["setup_ratio_on_off"] = spread(
        [on["setup"]["conn_per_s"] / off["setup"]["conn_per_s"] for on, off in pairs]
    )
    summary["setup_cpu_ratio_on_off"] = spread(
        [on["server_us_per_setup"] / off["server_us_per_setup"] for on, off in pairs]
    )
    summary["delivery_ratio_on_off"] = spread(
        [(on["us_per_delivery"] or 0.0) / (off["us_per_delivery"] or 1.0) for on, off in pairs]
    )
    return summary


def _fmt(s: dict[str, float] | None, unit: str = "") -> str:
    return "-" if s is None else f"{s['median']:g}{unit} ({s['min']:g}-{s['max']:g})"


def _print_listeners_run(run: dict[str, Any]) -> None:
    setup = run["setup"]
    print(
        f"  rep {run['rep']} presence {run['mode']:3}: {setup['opened']:,} opened ({setup['failed']} failed) at "
        f"{setup['conn_per_s']:,.0f} conn/s, p50/p99 {setup['setup_ms']['p50']}/{setup['setup_ms']['p99']} ms, "
        f"server CPU {setup['server_cpu_pct']}%, Redis {run['redis_cpu_during_ramp_s']} s, "
        f"{run['fcalls_during_ramp']} FCALLs; present {run['present']:,}; "
        f"{run['delivered']:,}/{run['expected']:,} delivered, {run['us_per_delivery']} us/delivery; "
        f"load {setup['loadavg_before'][0]}",
        flush=True,
    )


def print_report(result: dict[str, Any]) -> None:
    """The figures as a table (the JSON has every run)."""
    print(f"\nmachine load: {result['meta']['uptime_before']}  ->  {result['meta'].get('uptime_after', '')}")
    if "listeners" in result:
        summ = result["listeners"]["summary"]
        print(f"\none topic, {result['listeners']['conns']:,} listeners; median (min-max) of the runs")
        rows = [
            ("setup, conn/s", "conn_per_s", ""),
            ("setup p50, ms", "setup_p50_ms", ""),
            ("setup p99, ms", "setup_p99_ms", ""),
            ("server CPU over the ramp, %", "server_cpu_pct_ramp", ""),
            ("server CPU per connection, us", "server_us_per_setup", ""),
            ("Redis CPU over the ramp, s", "redis_cpu_ramp_s", ""),
            ("FCALLs during the ramp", "fcalls_ramp", ""),
            ("server CPU per delivery, us", "us_per_delivery", ""),
            ("RSS per connection, KB", "kb_per_conn", ""),
        ]
        print(f"  {'':30} {'presence on':>26} {'presence off':>26}")
        for label, key, unit in rows:
            print(f"  {label:30} {_fmt(summ['on'][key], unit):>26} {_fmt(summ['off'][key], unit):>26}")
        print(
            f"  {'lost / failed':30} {summ['on']['lost']:>21} / {summ['on']['failed']:<2} {summ['off']['lost']:>21} / {summ['off']['failed']:<2}"
        )
        print(f"  ratio on/off: setup rate {_fmt(summ['setup_ratio_on_off'])} (goal >= 0.8), "
              f"server CPU per setup {_fmt(summ['setup_cpu_ratio_on_off'])}, "
              f"delivery cost {_fmt(summ['delivery_ratio_on_off'])} (goal ~1)")  # fmt: skip
    if "stats" in result:
        _print_stats(result["stats"])


def _print_stats(stats: dict[str, Any]) -> None:
    fill = stats["fill"]
    print(
        f"\nfill: {fill['entries']:,} entries ({fill['users']:,} users) in {fill['elapsed_s']} s = "
        f"{fill['entries_per_s']:,}/s; Redis {fill['redis_usec_per_chunk_call']} us per {fill['chunk']}-entry FCALL "
        f"(commandstats); keys {fill['memory_mb']} MB (set) + {fill['info_memory_mb']} MB (info)"
    )
    print(f"  {'one stats call':44} {'entries':>8} {'round trip p50/p99 us':>22} {'Redis us':>9} {'server us':>10}")
    for row in stats["direct"]:
        print(
            f"  {'FCALL <p>_presence_get, limit 0':44} {row['connections']:>8,} "
            f"{row['rtt_us']['p50']:>10} / {row['rtt_us']['p99']:<9} {row['redis_usec_per_call']:>9} {'-':>10}"
        )
    for row in stats["inband"]:
        listed = "counts" if "clients" not in (row["data"] or {}) else f"{len(row['data']['clients'])} listed"
        for way, key in (("back to back", "rtt_us"), ("12 ms apart", "rtt_spaced_us")):
            print(
                f"  {'in-band PRESENCE (' + listed + '), ' + way:44} {row['data']['connections']:>8,} "
                f"{row[key]['p50']:>10} / {row[key]['p99']:<9} {row['redis_usec_per_call']:>9} "
                f"{row['server_us_per_call']:>10}"
            )
    for row in stats["inband"]:
        print(
            f"  burst of {row['burst']} PRESENCE on {row['data']['connections']:,} entries: "
            f"{row['burst_per_s']:,}/s, {row['burst_fcalls']} FCALLs (concurrent reads shared)"
        )


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.presence", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--only", default=",".join(SCENARIOS), help="scenarios to run: listeners,stats")
    add("--quick", action="store_true", help="tiny counts (the smoke test)")
    add("--reps", type=int, default=3, help="interleaved on/off repetitions (default 3)")
    add("--conns", type=int, default=10_000, help="listeners of the topic (default 10,000)")
    add("--concurrency", type=int, default=64, help="handshakes in flight per generator (default 64)")
    add("--publications", type=int, default=10, help="publications per run (default 10)")
    add("--spacing", type=float, default=0.3, help="seconds between publications (default 0.3)")
    add("--settle", type=float, default=1.0, help="seconds after the ramp (default 1)")
    add("--size", type=int, default=200, help="message size, bytes (default 200)")
    add("--entries", type=int, default=100_000, help="entries of the stats topic (default 100,000)")
    add("--calls", type=int, default=2000, help="direct stats calls per measurement (default 2,000)")
    add("--inband-calls", type=int, default=400, help="in-band PRESENCE per measurement (default 400)")
    add("--ramp-timeout", type=float, default=120.0, help="seconds a ramp may take (default 120)")
    add("--timeout", type=float, default=900.0, help="seconds the whole run may take (default 900)")
    add("--server-root", type=Path, help="run our server from this source tree (another commit's export)")
    add("--out", type=Path, help="write the JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.conns, args.reps, args.publications, args.entries, args.calls = 200, 1, 3, 2000, 50
        args.inband_calls = 30
        args.spacing, args.settle = 0.1, 0.2
    args.sample = 16  # kernel-stamped connections per generator (bench.scale_gen)
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every scenario asked for, against one private redis-server."""
    only = set(args.only.split(","))
    meta = {"source": source_state(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "uptime_before": uptime()}
    result: dict[str, Any] = {"meta": meta | {"args": vars(args) | {"out": str(args.out)}}}
    with PrivateRedis() as redis_proc, tempfile.TemporaryDirectory(prefix="bench-presence-") as tmp:
        topics_file = Path(tmp) / "topics.toml"
        topics_file.write_text(TOPICS_FILE)
        if "listeners" in only:
            try:
                result["listeners"] = listeners(redis_proc, topics_file, args)
            except Exception as exc:  # noqa: BLE001 - reported in the JSON; the other scenario still runs
                result.setdefault("errors", {})["listeners"] = f"{type(exc).__name__}: {exc}"[:2000]
        if "stats" in only:
            opts = {"entries": args.entries, "users": max(1, args.entries // 4), "pipeline": 10, "calls": args.calls}
            opts["inband_calls"] = args.inband_calls
            opts |= {"burst": 100 if args.quick else 1000, "reps": 1, "root": args.server_root or ROOT}
            try:
                result["stats"] = presence_stats.run(redis_proc, topics_file, opts)
            except Exception as exc:  # noqa: BLE001
                result.setdefault("errors", {})["stats"] = f"{type(exc).__name__}: {exc}"[:2000]
    result["meta"] |= {"finished": time.strftime("%Y-%m-%d %H:%M:%S"), "uptime_after": uptime()}
    return result


def main(argv: list[str] | None = None) -> int:
    """Run, print the figures, write the JSON (``--out``); 1 if a scenario failed, a
    connection did not open or a publication did not reach every listener."""
    args = _parse(argv)
    raise_fd_limit()
    result = run_bounded(lambda: run(args), args.timeout)
    print_report(result)
    if args.out:
        args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2, default=str))
    for name, error in result.get("errors", {}).items():
        print(f"{name} failed: {error}", file=sys.stderr)
    broken = bool(result.get("errors"))
    for one in result.get("listeners", {}).get("runs", []):
        broken |= bool(one["setup"]["failed"]) or one["delivered"] != one["expected"]
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
