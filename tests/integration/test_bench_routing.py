"""Smoke test of ``python -m bench.routing --quick``: the routing benchmark keeps working.

Runs the real script as a process (it starts its own private redis-server, the server
instances and its load generators): N = 1 and 2, both modes, tiny counts, one repetition.
Asserts the output's shape, what reaches each instance in each mode (every command with the
firehose, only its own users' without), and no loss or duplicates; never a speed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server for a private instance")
def test_quick_routing_benchmark(tmp_path: Path) -> None:
    out = tmp_path / "routing.json"
    argv = [sys.executable, "-m", "bench.routing", "--quick", "--reps", "1", "--out", str(out)]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    data = json.loads(out.read_text())
    runs = data["runs"]
    assert sorted((r["mode"], r["n"]) for r in runs) == [("single", 1), ("single", 2), ("topic", 1), ("topic", 2)]
    for run in runs:
        assert run["lost"] == 0 and run["duplicated"] == 0 and run["publish_errors"] == 0, run
        assert run["delivered"] == run["expected"] == run["published"] == 100, run
        assert len(run["instances"]) == run["n"], run
        assert sum(i["delivered"] for i in run["instances"]) == 100, run
        share = 100 if run["mode"] == "single" else 100 // run["n"]
        assert [i["received"] for i in run["instances"]] == [share] * run["n"], run
        assert run["redis"]["publish_calls"] == 100, run
    assert {"single 1", "single 2", "topic 1", "topic 2"} == data["summary"]["table"].keys()
    assert [s["k"] for s in data["fanout"]] == [0, 2]
    assert data["fanout"][1]["min_bytes_read"] > 100 * 100, data["fanout"]
    assert [s["k"] for s in data["saturated"]] == [2], data["saturated"]
    assert data["saturated"][0]["min_bytes_read"] > 1000 * 100, data["saturated"]
    subs = data["subscriptions"]
    assert subs["channels"] == 1000 and subs["bytes_per_channel"] > 0, subs
    assert "efficiency vs 1/N" in proc.stdout
