"""Smoke test of ``python -m bench.scale``: the many-connections benchmark keeps working.

Runs the real script as a process (it starts its own private redis-server, our server and
its generator processes): 500 connections over 2 loopback source addresses, both brokers,
two publications. Asserts the output's shape, that every connection opened from its own
source address, and that every publication reached every connection exactly once; never a
speed.
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
def test_scale_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    argv = [sys.executable, "-m", "bench.scale", "--conns", "500", "--addrs", "2", "--generators", "2"]
    argv += ["--broker", "redis,memory", "--publications", "2", "--spacing", "0.2", "--settle", "0.5"]
    argv += ["--ramp-timeout", "30", "--timeout", "90", "--out", str(out)]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    data = json.loads(out.read_text())
    assert data["errors"] == {}
    assert {"nofile_hard", "ip_local_port_range", "somaxconn"} <= data["meta"]["limits"].keys()
    assert [r["broker"] for r in data["runs"]] == ["redis", "memory"]
    for run in data["runs"]:
        assert run["addrs"] == 2 and run["generators"] == 2, run
        setup = run["setup"]
        assert setup["opened"] == 500 and setup["failed"] == 0, setup
        assert setup["sources"] == {"127.0.0.2": 250, "127.0.0.3": 250}, setup
        assert setup["conn_per_s"] > 0 and setup["setup_ms"]["p99"] >= setup["setup_ms"]["p50"] > 0, setup
        assert run["memory"]["rss_after_mb"] > 0, run["memory"]
        assert len(run["publications"]) == 2
        for pub in run["publications"]:
            # 500 plus the warm-up connection, each exactly once
            assert pub["status"] == 202 and pub["got"] == pub["expected"] == 501 and pub["dupes"] == 0, pub
            assert 0 <= pub["first_ms"] <= pub["p50_ms"] <= pub["last_ms"], pub
            assert pub["kernel"]["n"] > 0, pub
    assert "== memory: 500 connections" in proc.stdout
