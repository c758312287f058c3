"""Summary, cost fit and table of :mod:`bench.routing` runs.

- :func:`summarize`: per (mode, N), medians with min and max over the repetitions of the
  per-instance CPU, idle CPU, received and delivered; the per-topic mode's efficiency
  against ideal 1/N scaling, paired by repetition: ``(CPU at N=1) / N / (CPU at N)``; the
  single-channel mode's ``CPU at N / CPU at N=1``; and the fitted costs (:func:`fit`).
- :func:`fit`: least squares over every instance of every run: busy CPU (window CPU minus
  the quiet window's, us) = ``w`` x window seconds + ``a`` x received + ``b`` x delivered
  (``w``: what an instance spends per second while publications stream in, whatever their
  number: its paced wake-ups); and Redis CPU per ``PUBLISH`` = ``p + q`` x subscribers of its
  channel.
"""

from __future__ import annotations

import statistics
from typing import Any

MODE_NAMES = {"single": "single channel (firehose)", "topic": "per-topic (firehose off)"}


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of ``values`` (zeros when empty)."""
    if not values:
        return {"median": 0.0, "min": 0.0, "max": 0.0}
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def fmt(s: dict[str, float] | None, digits: int = 1) -> str:
    """``median (min-max)``."""
    if s is None:
        return "-"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def line(run: dict[str, Any], seconds: float) -> str:
    """One run as a progress line."""
    cpus = "/".join(f"{i['cpu_pct']:.1f}" for i in run["instances"])
    return (
        f"rep {run['rep']} N={run['n']} {run['mode']:6}: CPU % per instance {cpus}, received/instance "
        f"{run['received_per_instance']:.0f}, delivered {run['delivered']}/{run['expected']}, lost {run['lost']}, "
        f"dup {run['duplicated']}, redis {run['redis']['cpu_pct']}%, p50/p99 {run['latency_ms']['p50']}/"
        f"{run['latency_ms']['p99']} ms, load {run['loadavg_before'][0]} ({seconds:.0f} s)"
    )


def solve(rows: list[list[float]]) -> list[float] | None:
    """Least squares ``y = c1 x1 + ... + cm xm`` over rows ``[x1, ..., xm, y]`` (normal
    equations, Gaussian elimination); ``None`` if they are singular."""
    m = len(rows[0]) - 1 if rows else 0
    if m == 0:
        return None
    a = [[sum(r[i] * r[j] for r in rows) for j in range(m + 1)] for i in range(m)]
    for col in range(m):
        pivot = max(range(col, m), key=lambda i: abs(a[i][col]))
        if abs(a[pivot][col]) < 1e-9:
            return None
        a[col], a[pivot] = a[pivot], a[col]
        for i in range(m):
            if i != col:
                f = a[i][col] / a[col][col]
                a[i] = [x - f * y for x, y in zip(a[i], a[col], strict=True)]
    return [a[i][m] / a[i][i] for i in range(m)]


def fit(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fitted costs (see the module docstring), in microseconds of one core."""
    rows = []
    for run in runs:
        wall = run["wall_s"]
        for inst in run["instances"]:
            busy_us = (inst["cpu_pct"] - inst["idle_pct"]) / 100 * wall * 1e6
            rows.append([wall, float(inst["received"]), float(inst["delivered"]), busy_us])
    server = solve(rows)
    redis_rows = [
        [1.0, float(run["n"] if run["mode"] == "single" else 1), float(run["redis"]["process_us_per_publish"] or 0)]
        for run in runs
    ]
    red = solve(redis_rows)
    return {
        "stream_pct": round(server[0] / 1e4, 2) if server else None,
        "us_per_received": round(server[1], 2) if server else None,
        "us_per_delivery": round(server[2], 2) if server else None,
        "redis_us_per_publish": round(red[0], 2) if red else None,
        "redis_us_per_subscriber": round(red[1], 2) if red else None,
        "points": len(rows),
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (mode, N) spreads, efficiency and flatness paired by repetition, and the fit."""
    table: dict[str, dict[str, Any]] = {}
    counts = sorted({r["n"] for r in runs})
    by = {(r["mode"], r["n"], r["rep"]): r for r in runs}
    reps = sorted({r["rep"] for r in runs})
    for mode in ("single", "topic"):
        for n in counts:
            mine = [r for r in runs if r["mode"] == mode and r["n"] == n]
            if not mine:
                continue
            row = {
                "cpu_pct": spread([r["cpu_pct_per_instance"] for r in mine]),
                "idle_pct": spread([r["idle_pct_per_instance"] for r in mine]),
                "received": spread([r["received_per_instance"] for r in mine]),
                "delivered": spread([statistics.fmean(i["delivered"] for i in r["instances"]) for r in mine]),
                "redis_us_per_publish": spread([r["redis"]["process_us_per_publish"] or 0.0 for r in mine]),
                "p99_ms": spread([r["latency_ms"]["p99"] for r in mine]),
                "lost": sum(r["lost"] for r in mine),
                "duplicated": sum(r["duplicated"] for r in mine),
            }
            base = [
                (by[mode, counts[0], rep], by[mode, n, rep])
                for rep in reps
                if (mode, counts[0], rep) in by and (mode, n, rep) in by
            ]
            ratios = [b["cpu_pct_per_instance"] / max(1e-9, a["cpu_pct_per_instance"]) for a, b in base]
            row["cpu_vs_first"] = spread(ratios)
            row["efficiency"] = spread([counts[0] / n / r for r in ratios if r > 0])
            table[f"{mode} {n}"] = row
    return {"table": table, "fit": fit(runs)}


def table(result: dict[str, Any]) -> str:
    """The summary as Markdown (medians with min-max over the repetitions)."""
    summary = result["summary"]
    out = [
        "| mode | N | CPU % per instance | idle CPU % | received/instance | delivered/instance "
        "| CPU vs N=1 | efficiency vs 1/N | Redis us/PUBLISH | p99 ms | lost/dup |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, row in summary["table"].items():
        mode, n = key.split()
        out.append(
            f"| {MODE_NAMES[mode]} | {n} | {fmt(row['cpu_pct'])} | {fmt(row['idle_pct'])} | {fmt(row['received'], 0)} "
            f"| {fmt(row['delivered'], 0)} | {fmt(row['cpu_vs_first'], 2)} | {fmt(row['efficiency'], 2)} "
            f"| {fmt(row['redis_us_per_publish'])} | {fmt(row['p99_ms'])} | {row['lost']}/{row['duplicated']} |"
        )
    f = summary["fit"]
    out.append(
        f"\nfit over {f['points']} instance-windows: {f['stream_pct']}% of a core while a stream flows + "
        f"{f['us_per_received']} us per received publication + "
        f"{f['us_per_delivery']} us per delivery (busy CPU, one core); Redis {f['redis_us_per_publish']} us per "
        f"PUBLISH + {f['redis_us_per_subscriber']} us per subscriber of its channel"
    )
    for step in result.get("fanout", []):
        out.append(
            f"fan-out k={step['k']}: Redis {step['process_us_per_publish']} us/PUBLISH (process), "
            f"{step['usec_per_call']} us/call (commandstats), {step['published']} published, "
            f"min bytes read per subscriber {step['min_bytes_read']}"
        )
    for step in result.get("saturated", []):
        out.append(
            f"saturated k={step['k']}: {step['per_s']} PUBLISH/s, Redis {step['redis_cpu_pct']}% CPU, "
            f"{step['process_us_per_publish']} us/PUBLISH (process)"
        )
    subs = result.get("subscriptions")
    if subs:
        out.append(
            f"subscriptions: {subs['channels']} channels, {subs['bytes_per_channel']} B of Redis memory each, "
            f"{subs['subscribe_us_per_channel']} us Redis CPU per SUBSCRIBEd channel, "
            f"{subs['unsubscribe_us_per_channel']} us per UNSUBSCRIBEd one"
        )
    return "\n".join(out)
