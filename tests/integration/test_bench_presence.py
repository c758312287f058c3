"""Smoke test of ``python -m bench.presence --quick``: the presence benchmark keeps working.

Runs the real script as a process (it starts its own private redis-server, our servers and
its generators): both scenarios, tiny counts, one repetition. Asserts the output's shape,
that every listener got every publication and that the presence topic's listeners are
present; never a speed.
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
def test_quick_presence_benchmark(tmp_path: Path) -> None:
    out = tmp_path / "presence.json"
    argv = [sys.executable, "-m", "bench.presence", "--quick", "--out", str(out)]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    data = json.loads(out.read_text())
    assert {"meta", "listeners", "stats"} <= data.keys() and "errors" not in data
    assert "load average" in data["meta"]["uptime_before"]
    runs = data["listeners"]["runs"]
    assert [r["mode"] for r in runs] == ["on", "off"]
    for run in runs:
        assert run["setup"]["opened"] == 200 and run["setup"]["failed"] == 0, run["setup"]
        assert run["delivered"] == run["expected"] == 3 * 201, run  # the warm-up connection too
        assert run["us_per_delivery"] is not None
    on, off = runs
    assert on["present"] == 201 and on["fcalls_during_ramp"] >= 1
    assert off["present"] == 0 and off["fcalls_during_ramp"] == 0
    assert {"setup_ratio_on_off", "delivery_ratio_on_off"} <= data["listeners"]["summary"].keys()
    stats = data["stats"]
    assert stats["fill"]["entries"] == 2000
    assert [(r["connections"], r["users"]) for r in stats["direct"]] == [(2000, 500), (100, 25)]
    big, small = stats["inband"]
    assert big["data"] == {"connections": 2000, "users": 500}  # beyond the list cap: counts only
    assert small["data"]["connections"] == 100 and len(small["data"]["clients"]) == 100
    assert big["burst_fcalls"] >= 1 and big["server_us_per_call"] >= 0  # 10 ms CPU ticks: may read 0
    assert "presence on" in proc.stdout and "in-band PRESENCE" in proc.stdout
