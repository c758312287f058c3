"""The first ten minutes of a new user: a second server on a taken port, ``realtime listen``
against a server that is down, a malformed ``API_KEYS``, packaging without warnings."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.procs import REALTIME, Server


def run_realtime(
    args: list[str], cwd: Path, env: dict[str, str], timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "API_KEYS", "WS_SIGNING_KEYS", "KEYS_DIR")}
    return subprocess.run(
        [*REALTIME, *args], cwd=cwd, env={**base, **env}, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_a_second_server_on_a_taken_port_says_so_in_one_line(spawn: type[Server], tmp_path: Path) -> None:
    first = spawn()
    second = run_realtime(
        ["serve", "--host", "127.0.0.1", "--port", str(first.port)],
        tmp_path,
        {"DATABASE_URL": "none", "LOG_FORMAT": "json"},
    )
    assert second.returncode == 2
    assert "Traceback" not in second.stderr + second.stdout
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, second.stderr
    assert f"port {first.port} on 127.0.0.1 is already in use" in errors[0] and "PORT" in errors[0]
    assert first.proc.poll() is None  # the first server is untouched
