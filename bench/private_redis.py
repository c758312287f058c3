"""A private ``redis-server`` for benchmarks that measure Redis or load functions into it.

Started on a free loopback port with no persistence (``--save "" --appendonly no``) in a
temporary directory, stopped by its PID: nothing a benchmark does to it (``CONFIG
RESETSTAT``, ``FUNCTION LOAD``, a flood of publications) reaches the Redis that tests and
other runs share.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from bench.procstat import Cpu, cpu
from bench.servers import BenchError, free_port


class PrivateRedis:
    """One ``redis-server`` process of our own.

    Attributes:
        port: its loopback port.
        url: ``redis://127.0.0.1:<port>/0``.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = Path(tempfile.mkdtemp(prefix="bench-redis-"))
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> PrivateRedis:
        """Start it and wait until it answers ``PING``.

        Raises:
            BenchError: ``redis-server`` is missing, exited, or did not answer in ``timeout`` s.
        """
        binary = shutil.which("redis-server")
        if binary is None:
            raise BenchError("redis-server is not installed")
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(self._dir), "--maxclients", "20000"]
        log = (self._dir / "redis.log").open("wb")
        self._proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # noqa: S603
        client = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    raise BenchError(f"redis-server exited: {(self._dir / 'redis.log').read_text()[-500:]}")
                try:
                    if client.ping():
                        return self
                except redis.ConnectionError:
                    time.sleep(0.05)
        finally:
            client.close()
        self.stop()
        raise BenchError(f"redis-server did not answer in {timeout}s")

    @property
    def pid(self) -> int:
        """The server's process id (0 when not started)."""
        return self._proc.pid if self._proc is not None else 0

    def cpu(self) -> Cpu:
        """CPU time the server used so far."""
        return cpu([self.pid])

    def stop(self) -> None:
        """SIGTERM it (SIGKILL after 5 s) and remove its directory."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
