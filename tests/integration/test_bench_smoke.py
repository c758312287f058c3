"""Smoke test of the benchmark harness (``python -m bench --quick``) on our server only.

Runs the real harness as a process: our server with the memory broker and with Redis,
tiny loads. Asserts the output's shape and that nothing was lost or duplicated; it
never asserts speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FANOUT_FIELDS = {
    "server", "case", "listeners", "topics", "size", "offered_msgs_per_s", "published", "expected",
    "delivered", "lost", "duplicated", "deliveries_per_s", "latency_ms", "server_cpu",
    "server_us_per_delivery", "client_cpu", "client_limited", "loadavg_before", "loadavg_after", "passed",
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.redis
def test_quick_benchmark_on_our_server(redis_url: str, tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "bench", "--quick", "--no-plot", "--out", str(tmp_path), "--redis-url", redis_url]
    argv += ["--servers", "ours-memory,ours-redis", "--only", "compare,idle,connect"]  # the sweep: same code path
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "benchmarks.json").read_text())
    assert (tmp_path / "benchmarks-tables.md").read_text().startswith("###")
    assert {"meta", "compare", "sweep", "idle", "connect", "summary"} <= data.keys()
    assert "errors" not in data
    assert sorted({r["server"] for r in data["compare"]}) == ["ours-memory", "ours-redis"]
    assert data["sweep"] == []
    for run in data["compare"]:
        assert FANOUT_FIELDS - {"case"} <= run.keys(), FANOUT_FIELDS - run.keys()
        assert run["lost"] == 0 and run["duplicated"] == 0, run
        assert run["delivered"] == run["expected"] == run["published"] * run["listeners"] // run["topics"], run
        assert {"p50", "p99", "max", "samples"} <= run["latency_ms"].keys()
        assert run["latency_ms"]["samples"] > 0
        assert {"user_s", "system_s", "pct"} <= run["server_cpu"].keys()
    assert [r["compression"] for r in data["idle"]] == [False, True]  # clients offer permessage-deflate
    for row in data["idle"]:
        assert row["connections"] == 200 and row["kb_per_connection"] > 0
        assert row["deflated"] == 0  # ours never negotiates it
    assert data["connect"][0]["ok"] == 100 and data["connect"][0]["failed"] == 0
    assert {"compare", "sweep", "sweep_best", "idle", "connect"} <= data["summary"].keys()
    for when in ("before", "after"):  # the machine's write floor, taken around the scenarios
        floor = data["meta"]["write_floor"][when]
        assert floor["writes"] > 0 and floor["us_per_frame"] > 0, floor
