"""Smoke test of ``python -m bench.history --quick``: the history benchmark keeps working.

Runs the real script as a process (it starts its own private redis-server, our server and
its load generators): every scenario, tiny counts, one repetition. Asserts the output's
shape, no loss or duplicates, and every storm connection recovered in order; never a speed.
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
def test_quick_history_benchmark(tmp_path: Path) -> None:
    pytest.importorskip("realtime.redis_functions", reason="the Redis history library (issue 16) is not merged")
    out = tmp_path / "history.json"
    argv = [sys.executable, "-m", "bench.history", "--quick", "--reps", "1", "--out", str(out)]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    data = json.loads(out.read_text())
    assert {"meta", "publish", "delivery", "storm"} <= data.keys()
    kinds = {(r["kind"], r["batch"]) for r in data["publish"]["runs"]}
    assert kinds == {("fcall", 1), ("fcall", 100), ("publish", 1), ("publish", 100)}
    for row in data["publish"]["runs"]:
        assert row["per_s"] > 0 and row["calls_counted"] == row["count"], row
        assert row["redis_usec_per_call"] > 0, row
    runs = data["delivery"]["runs"]
    assert {(r["case"], r["kind"]) for r in runs} == {(c, k) for c in ("heavy", "sparse") for k in ("hist", "plain")}
    for run in runs:
        assert run["lost"] == 0 and run["duplicated"] == 0 and run["publish_errors"] == 0, run
        assert run["delivered"] == run["expected"] > 0, run
    assert {"heavy", "sparse"} <= data["delivery"]["summary"].keys()
    assert [s["broker"] for s in data["storm"]] == ["redis", "memory"]
    for storm in data["storm"]:
        assert storm["all_recovered"] and storm["complete"] == storm["conns"] == 100, storm
        assert storm["out_of_order"] == 0 and storm["gaps"] == 0 and storm["failed"] == 0, storm
        assert storm["live"]["got"] == storm["conns"] and storm["live"]["publish_errors"] == 0, storm
        assert storm["metrics"]["history_reads"] >= 1, storm
    assert "storm (memory)" in proc.stdout and "publish cost" in proc.stdout
