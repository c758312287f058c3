"""A pytest plugin: why tests were skipped, printed at the end of every run, also under ``-q``.

Without it a run on a machine lacking Redis, PostgreSQL, caddy or Chromium says only
"N skipped", and the reasons need ``-rs``. Loaded by ``tests/conftest.py``. Under ``CI`` the
fixtures fail instead of skipping, so this section is empty there.
"""

from __future__ import annotations

from collections import Counter
from typing import Any


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    """Print one line per skip reason (with how many tests it skipped)."""
    if set(config.getoption("reportchars", "") or "") & set("sSaA"):
        return  # pytest's own short summary (-rs, -ra) already lists them
    reasons: Counter[str] = Counter()
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        reasons[reason.removeprefix("Skipped: ")] += 1
    if not reasons:
        return
    terminalreporter.section("skipped, and why (CI=true makes these fail)", yellow=True)
    for reason, count in reasons.most_common():
        terminalreporter.write_line(f"{count} skipped: {reason}")
