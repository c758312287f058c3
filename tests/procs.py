"""Real server processes for tests: ``Server`` runs ``python -m realtime serve`` on a free port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REALTIME = [sys.executable, "-m", "realtime"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    def __init__(self, cwd: Path, env: dict[str, str], port: int | None = None) -> None:
        """Start ``realtime serve`` in ``cwd`` with ``env``, on ``port`` (a restart) or a free one."""
        self.env = env
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = cwd / f"server-{self.port}.log"
        base = {
            k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "API_KEYS", "WS_SIGNING_KEYS", "KEYS_DIR")
        }
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*REALTIME, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=cwd,
                env={**base, "LOG_FORMAT": "json", "DATABASE_URL": "none", **env},  # none: no embedded PostgreSQL
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("server did not start: " + self.log.read_text())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)
