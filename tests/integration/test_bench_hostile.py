"""Smoke test of the hostile-clients benchmark (``python -m bench.hostile``): a short mixed
attack against our server process. Asserts the output's shape and that the legitimate
listener lost nothing; never a speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_mixed_attack_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "hostile.json"
    argv = [sys.executable, "-m", "bench.hostile", "--attack", "mixed", "--duration", "3", "--out", str(out)]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    data = json.loads(out.read_text())
    assert data["lost"] == 0 and data["publish_errors"] == 0 and data["published"] == 150, proc.stderr[-2000:]
    assert {"p50", "p99", "max"} <= data["latency_ms"].keys() and data["health_probes"] > 0
    attacks = data["attacks"]
    assert set(attacks) == {"stalled", "badsig", "listen", "oversized"}
    assert attacks["stalled"]["opened"] >= 200
    assert attacks["badsig"]["reply ERR_RATELIMIT"] > 0  # beyond the budget: refused unchecked
    assert attacks["oversized"]["close 1009"] > 0
