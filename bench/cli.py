"""``python -m bench``: run the benchmark and write JSON, Markdown and a PNG plot."""

from __future__ import annotations

import argparse
import functools
import os
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from bench import report
from bench.calibrate import write_floor
from bench.plan import ALL, full_plan, quick_plan
from bench.procstat import loadavg, raise_fd_limit
from bench.runner import Runner
from bench.servers import OUR_EXTRA_ENV, ROOT, source_state, versions

SCENARIOS = ("compare", "sweep", "idle", "connect")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (< 2 minutes)")
    parser.add_argument("--servers", help=f"comma-separated subset of {','.join(ALL)} (default: all installed)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--reps", type=int, help="repetitions (default 3, --quick 1)")
    parser.add_argument("--out", type=Path, help="output directory (default docs/, --quick: bench/results/tmp)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for our server (repeatable), e.g. WRITE_INTERVAL=0.004; recorded in the JSON",
    )
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the plan; returns 0, or 1 when a server failed (losses are reported, not fatal)."""
    args = _parser().parse_args(argv)
    plan = quick_plan() if args.quick else full_plan()
    if args.reps:
        plan = type(plan)(**{**plan.__dict__, "reps": args.reps})
    out: Path = args.out or (ROOT / "bench" / "results" / "tmp" if args.quick else ROOT / "docs")
    out.mkdir(parents=True, exist_ok=True)
    servers = args.servers.split(",") if args.servers else None
    only = args.only.split(",") if args.only else list(SCENARIOS)
    for item in args.server_env:
        name, eq, value = item.partition("=")
        if not eq or not name:
            _parser().error(f"--server-env wants NAME=VALUE, got {item!r}")
        OUR_EXTRA_ENV[name] = value
    raise_fd_limit()
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so every server and generator is stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.time()
    meta: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "quick": args.quick,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_before": loadavg(),
        "versions": versions(),
        "source": source_state(),
        "server_env": dict(OUR_EXTRA_ENV),
        "plan": orjson.loads(orjson.dumps(plan.__dict__, default=lambda o: o.__dict__)),
    }
    runner = Runner(plan, args.redis_url, servers)
    meta["servers"], meta["skipped_servers"] = runner.servers, runner.skipped
    floor = functools.partial(_floor, interval=_write_interval(), duration=0.5 if args.quick else 3.0)
    meta["write_floor"] = {}
    try:
        meta["write_floor"]["before"] = floor()
        for name in only:
            getattr(runner, name)()
    finally:
        runner.close()
    meta["write_floor"]["after"] = floor()
    meta["loadavg_after"] = loadavg()
    meta["duration_s"] = round(time.time() - started, 1)
    data: dict[str, Any] = {"meta": meta, **runner.results}
    data["summary"] = report.summarize(data)
    (out / "benchmarks.json").write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    _write_tables(out, report.markdown(data))
    if not args.no_plot:
        report.plot(data, out / "benchmarks.png")
    print(report.markdown(data))
    return 1 if data.get("errors") else 0


def _floor(**kwargs: Any) -> dict[str, Any]:
    """:func:`bench.calibrate.write_floor`, or ``{"error"}``: a failed calibration must not
    cost the run its results."""
    try:
        return write_floor(**kwargs)
    except (OSError, EOFError, TimeoutError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}


def _write_interval() -> float:
    """Our server's ``WRITE_INTERVAL`` in this run (``--server-env``, else its default), seconds."""
    from realtime.settings import ServerSettings

    if "WRITE_INTERVAL" in OUR_EXTRA_ENV:
        return float(OUR_EXTRA_ENV["WRITE_INTERVAL"])
    return ServerSettings().write_interval


START, END = "<!-- results:start -->", "<!-- results:end -->"


def _write_tables(out: Path, tables: str) -> None:
    """Put the tables between the markers of ``out/benchmarks.md`` if it has them
    (docs/benchmarks.md), else into ``out/benchmarks-tables.md``."""
    doc = out / "benchmarks.md"
    text = doc.read_text() if doc.exists() else ""
    if START in text and END in text:
        head, rest = text.split(START, 1)
        doc.write_text(f"{head}{START}\n\n{tables}\n{END}{rest.split(END, 1)[1]}")
    else:
        (out / "benchmarks-tables.md").write_text(tables)


if __name__ == "__main__":
    sys.exit(main())
