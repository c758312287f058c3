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
    groups = _group(
        data["sweep"], lambda r: (r["server"], r["listeners"], r["topics"], r["size"], r["offered_deliveries_per_s"])
    )
    for (server, listeners, topics, size, offered), runs in sorted(groups.items()):
        row = {"server": server, "listeners": listeners, "topics": topics, "size": size}
        row["offered_deliveries_per_s"] = offered
        row.update(_fanout_summary(runs))
        row["passed"] = sum(r["passed"] for r in runs) * 2 > len(runs)  # a majority of the reps
        sweep.append(row)
    best: dict[tuple[str, int, int, int], Run] = {}
    for row in sweep:
        key = (row["server"], row["listeners"], row["topics"], row["size"])
        if row["passed"] and row["offered_deliveries_per_s"] >= best.get(key, {}).get("offered_deliveries_per_s", 0):
            best[key] = row
    idle = [
        {
            "server": s,
            "compression": compression,
            "connections": runs[0]["connections"],
            "deflated": min(r.get("deflated", 0) for r in runs),
            "kb_per_connection": _stat(r["kb_per_connection"] for r in runs),
        }
        for (s, compression), runs in _group(
            data["idle"], lambda r: (r["server"], bool(r.get("compression", False)))
        ).items()
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


def _floor_lines(floor: Run | None) -> list[str]:
    """The machine's write floor (:mod:`bench.calibrate`), taken before and after the run."""
    taken = {when: f for when, f in (floor or {}).items() if "error" not in f}
    if not taken:
        return []
    first = next(iter(taken.values()))
    text = ", ".join(
        f"{when} {f['us_per_frame']} us per frame ({f['us_per_write']} us per write"
        + (f"; the reader fell behind by {f['buffered']:,} bytes, so it reads low)" if f.get("buffered") else ")")
        for when, f in taken.items()
    )
    return [
        "",
        f"Write floor of this machine (a bare uvloop writer, {first['sockets']} loopback sockets, "
        f"{first['frames_per_write']} frames of 200 B per write every {first['interval_ms']:g} ms, "
        f"nothing else): {text}.",
    ]


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
    lines += _floor_lines(data["meta"].get("write_floor"))
    lines += [
        "",
        "### Listener sweep: every offered rate tried; passed = no loss, p99 < 100 ms",
        "",
        "| server | listeners | topics | size B | offered deliveries/s | delivered/s | server us/delivery | p50 ms | p99 ms | lost/dup | client-limited | passed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in s["sweep"]:
        lines.append(
            f"| {r['server']} | {r['listeners']:,} | {r['topics']:,} | {r['size']:,} | {r['offered_deliveries_per_s']:,} "
            f"| {_m(r['deliveries_per_s'], 0)} | {_m(r['server_us_per_delivery'], 2)} | {_m(r['p50_ms'], 2)} "
            f"| {_m(r['p99_ms'], 2)} | {r['lost']}/{r['duplicated']} | {'yes' if r['client_limited'] else 'no'} "
            f"| {'yes' if r['passed'] else 'no'} |"
        )
    lines += [
        "",
        "### Highest passing rate per configuration (no loss, p99 < 100 ms)",
        "",
        "| server | listeners | topics | size B | deliveries/s | msgs/s published | p50 ms | p99 ms | server us/delivery |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    configs = sorted({(r["server"], r["listeners"], r["topics"], r["size"]) for r in s["sweep"]})
    for key in configs:
        best = next((b for b in s["sweep_best"] if (b["server"], b["listeners"], b["topics"], b["size"]) == key), None)
        head = f"| {key[0]} | {key[1]:,} | {key[2]:,} | {key[3]:,} "
        if best is None:
            lines.append(head + "| none passed | - | - | - | - |")
            continue
        published = best["offered_deliveries_per_s"] * key[2] / key[1]
        lines.append(
            head + f"| {_m(best['deliveries_per_s'], 0)} | {published:,.1f} | {_m(best['p50_ms'], 2)} "
            f"| {_m(best['p99_ms'], 2)} | {_m(best['server_us_per_delivery'], 2)} |"
        )
    lines += [
        "",
        "### Idle memory per LISTENing connection (RSS growth)",
        "",
        "Compression on: the clients offer permessage-deflate; negotiated: connections that took it.",
        "",
        "| server | compression | connections | negotiated | KB/conn |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['server']} | {'on' if r['compression'] else 'off'} | {r['connections']:,} "
        f"| {r['deflated']:,} | {_m(r['kb_per_connection'], 2)} |"
        for r in s["idle"]
    ]
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


def _plot_points(sweep: list[Run]) -> dict[str, list[tuple[int, Run, bool]]]:
    """Per series (server, size, topics), per listener count: the highest passing rate's row,
    or the lowest rate tried when none passed (flagged False)."""
    series: dict[str, list[tuple[int, Run, bool]]] = {}
    for (server, size, topics), rows in _group(sweep, lambda r: (r["server"], r["size"], r["topics"])).items():
        label = f"{server}, {size} B" + (f", {topics:,} topics" if topics > 1 else "")
        for listeners, same in sorted(_group(rows, lambda r: (r["listeners"],)).items()):
            ok = [r for r in same if r["passed"]]
            pick = max(ok, key=lambda r: r["offered_deliveries_per_s"]) if ok else same[0]
            series.setdefault(label, []).append((listeners[0], pick, bool(ok)))
    return series


def _lossless_max(sweep: list[Run]) -> dict[tuple[str, int], float]:
    """Per (series label, listeners): the highest median delivered rate with no loss at all."""
    top: dict[tuple[str, int], float] = {}
    for r in sweep:
        if r["lost"] or r["duplicated"] or r["deliveries_per_s"] is None:
            continue
        label = f"{r['server']}, {r['size']} B" + (f", {r['topics']:,} topics" if r["topics"] > 1 else "")
        key = (label, r["listeners"])
        top[key] = max(top.get(key, 0.0), r["deliveries_per_s"]["median"])
    return top


def plot(data: Run, path: Path) -> bool:
    """Delivered msgs/s and p99 vs listeners at the highest passing rate; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    lossless = _lossless_max(data["summary"]["sweep"])
    for label, pts in sorted(_plot_points(data["summary"]["sweep"]).items()):
        xs = [x for x, _, _ in pts]
        top = [lossless.get((label, x), 0.0) for x in xs]
        for ax, key in ((ax1, "deliveries_per_s"), (ax2, "p99_ms")):
            stats = [r[key] for _, r, _ in pts]
            line = ax.errorbar(
                xs, [st["median"] for st in stats], yerr=_err(stats), marker="o", capsize=3, label=label
            )  # fmt: skip
            if key == "deliveries_per_s":
                ax.plot(xs, top, linestyle=":", color=line[0].get_color())
            failed = [(x, r[key]["median"]) for x, r, ok in pts if not ok]
            if failed:
                ax.scatter(*zip(*failed, strict=True), s=120, facecolors="none", edgecolors=line[0].get_color())
    ax1.set(
        title="delivered msgs/s: highest passing rate (dotted: highest lossless, any p99)",
        xlabel="listeners",
        ylabel="deliveries/s",
    )
    ax2.set(title="p99 publish-to-deliver latency", xlabel="listeners", ylabel="ms", yscale="log")
    ax2.axhline(100, color="grey", linestyle="--", linewidth=1)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    fig.suptitle(
        "realtime fan-out (Redis, and the memory broker via POST /publish), 2-core loopback: median of reps, bars = min-max;\n"
        "circled: no rate passed (no loss and p99 < 100 ms), lowest rate shown",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _err(stats: list[dict[str, float]]) -> list[list[float]]:
    return [[s["median"] - s["min"] for s in stats], [s["max"] - s["median"] for s in stats]]
