"""Aggregates raw runs (median, min, max over repetitions) into tables and a plot."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

Run = dict[str, Any]
BASELINE = "ours-redis"


def _stat(values: Iterable[float | None]) -> dict[str, float] | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"median": round(statistics.median(vals), 3), "min": round(min(vals), 3), "max": round(max(vals), 3)}


def _group(runs: list[Run], key: Callable[[Run], tuple[Any, ...]]) -> dict[tuple[Any, ...], list[Run]]:
    groups: dict[tuple[Any, ...], list[Run]] = {}
    for run in runs:
        groups.setdefault(key(run), []).append(run)
    return groups


def _fanout_summary(runs: list[Run]) -> Run:
    return {
        "reps": len(runs),
        "deliveries_per_s": _stat(r["deliveries_per_s"] for r in runs),
        "server_us_per_delivery": _stat(r["server_us_per_delivery"] for r in runs),
        "client_us_per_delivery": _stat(r["client_cpu"]["us_per_delivery"] for r in runs),
        "p50_ms": _stat(r["latency_ms"]["p50"] for r in runs),
        "p99_ms": _stat(r["latency_ms"]["p99"] for r in runs),
        "max_ms": _stat(r["latency_ms"]["max"] for r in runs),
        "server_cpu_pct": _stat(r["server_cpu"]["pct"] for r in runs),
        "lost": sum(r["lost"] for r in runs),
        "duplicated": sum(r["duplicated"] for r in runs),
        "reordered": sum(r.get("reordered", 0) for r in runs),
        "client_limited": any(r["client_limited"] for r in runs),
        "passed": all(r["passed"] for r in runs),
    }


def summarize(data: Run) -> Run:
    """Medians per (case, server), ratios to :data:`BASELINE`, sweep maxima, idle, connect."""
    compare = []
    for (case, server), runs in _group(data["compare"], lambda r: (r["case"], r["server"])).items():
        compare.append({"case": case, "server": server, **_fanout_summary(runs)})
    for row in compare:
        base = next((b for b in compare if b["case"] == row["case"] and b["server"] == BASELINE), None)
        mine, theirs = (base or {}).get("server_us_per_delivery"), row["server_us_per_delivery"]
        row["cpu_ratio_vs_ours_redis"] = round(theirs["median"] / mine["median"], 2) if mine and theirs else None
    sweep = []
    groups = _group(data["sweep"], lambda r: (r["listeners"], r["topics"], r["size"], r["offered_deliveries_per_s"]))
    for (listeners, topics, size, offered), runs in sorted(groups.items()):
        row = {"listeners": listeners, "topics": topics, "size": size, "offered_deliveries_per_s": offered}
        row.update(_fanout_summary(runs))
        row["passed"] = sum(r["passed"] for r in runs) * 2 > len(runs)  # a majority of the reps
        sweep.append(row)
    best: dict[tuple[int, int, int], Run] = {}
    for row in sweep:
        key = (row["listeners"], row["topics"], row["size"])
        if row["passed"] and row["offered_deliveries_per_s"] >= best.get(key, {}).get("offered_deliveries_per_s", 0):
            best[key] = row
    idle = [
        {
            "server": s,
            "connections": runs[0]["connections"],
            "kb_per_connection": _stat(r["kb_per_connection"] for r in runs),
        }
        for (s,), runs in _group(data["idle"], lambda r: (r["server"],)).items()
    ]
    connect = [
        {
            "server": s,
            "connections": runs[0]["ok"],
            "failed": sum(r["failed"] for r in runs),
            "conn_per_s": _stat(r["conn_per_s"] for r in runs),
            "handshake_p50_ms": _stat(r["handshake_ms"]["p50"] for r in runs),
            "handshake_p99_ms": _stat(r["handshake_ms"]["p99"] for r in runs),
            "listen_overflows": _stat(r.get("listen_overflows", 0) for r in runs),
        }
        for (s,), runs in _group(data["connect"], lambda r: (r["server"],)).items()
    ]
    return {"compare": compare, "sweep": sweep, "sweep_best": list(best.values()), "idle": idle, "connect": connect}


def _m(stat: dict[str, float] | None, digits: int = 1) -> str:
    if stat is None:
        return "-"
    return f"{stat['median']:,.{digits}f} ({stat['min']:,.{digits}f}-{stat['max']:,.{digits}f})"


def markdown(data: Run) -> str:
    """The summary as Markdown tables (median, with min-max in parentheses)."""
    s = data["summary"]
    lines = [
        "### Peers at equal offered load (server CPU per delivery; ratio = server / ours-redis)",
        "",
        "| case | server | deliveries/s | server us/delivery | ratio | p50 ms | p99 ms | max ms | lost/dup | client-limited |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in s["compare"]:
        lines.append(
            f"| {r['case']} | {r['server']} | {_m(r['deliveries_per_s'], 0)} | {_m(r['server_us_per_delivery'], 2)} "
            f"| {r['cpu_ratio_vs_ours_redis'] or '-'} | {_m(r['p50_ms'], 2)} | {_m(r['p99_ms'], 2)} "
            f"| {_m(r['max_ms'], 1)} | {r['lost']}/{r['duplicated']} | {'yes' if r['client_limited'] else 'no'} |"
        )
    lines += [
        "",
        "### Listener sweep (ours-redis): every offered rate tried; passed = no loss, p99 < 100 ms",
        "",
        "| listeners | topics | size B | offered deliveries/s | delivered/s | server us/delivery | p50 ms | p99 ms | lost/dup | client-limited | passed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in s["sweep"]:
        lines.append(
            f"| {r['listeners']:,} | {r['topics']:,} | {r['size']:,} | {r['offered_deliveries_per_s']:,} "
            f"| {_m(r['deliveries_per_s'], 0)} | {_m(r['server_us_per_delivery'], 2)} | {_m(r['p50_ms'], 2)} "
            f"| {_m(r['p99_ms'], 2)} | {r['lost']}/{r['duplicated']} | {'yes' if r['client_limited'] else 'no'} "
            f"| {'yes' if r['passed'] else 'no'} |"
        )
    lines += [
        "",
        "### Idle memory per LISTENing connection (RSS growth)",
        "",
        "| server | connections | KB/conn |",
        "|---|---|---|",
    ]
    lines += [f"| {r['server']} | {r['connections']:,} | {_m(r['kb_per_connection'], 2)} |" for r in s["idle"]]
    lines += [
        "",
        "### Connection setup (TCP + upgrade + LISTEN with a token)",
        "",
        "| server | connections | conn/s | handshake p50 ms | handshake p99 ms | accept-queue overflows | failed |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['server']} | {r['connections']:,} | {_m(r['conn_per_s'], 0)} | {_m(r['handshake_p50_ms'], 2)} "
        f"| {_m(r['handshake_p99_ms'], 2)} | {_m(r['listen_overflows'], 0)} | {r['failed']} |"
        for r in s["connect"]
    ]
    return "\n".join(lines) + "\n"


def plot(data: Run, path: Path) -> bool:
    """Delivered msgs/s and p99 vs listeners (one topic, best passing rate); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in data["summary"]["sweep_best"] if r["topics"] == 1]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for size in sorted({r["size"] for r in rows}):
        pts = sorted((r["listeners"], r) for r in rows if r["size"] == size)
        xs = [x for x, _ in pts]
        ax1.errorbar(
            xs,
            [r["deliveries_per_s"]["median"] for _, r in pts],
            yerr=_err([r["deliveries_per_s"] for _, r in pts]),
            marker="o",
            capsize=3,
            label=f"{size} B",
        )
        ax2.errorbar(
            xs, [r["p99_ms"]["median"] for _, r in pts], yerr=_err([r["p99_ms"] for _, r in pts]),
            marker="o", capsize=3, label=f"{size} B",
        )  # fmt: skip
    ax1.set(title="delivered msgs/s (highest passing rate)", xlabel="listeners on one topic", ylabel="msgs/s")
    ax2.set(title="p99 publish-to-deliver latency", xlabel="listeners on one topic", ylabel="ms")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("realtime (Redis broker, 1 worker), 2-core loopback; median of reps, bars = min-max")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _err(stats: list[dict[str, float]]) -> list[list[float]]:
    return [[s["median"] - s["min"] for s in stats], [s["max"] - s["median"] for s in stats]]
