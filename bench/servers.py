"""The servers under test, each started as its own process on a loopback port.

- ``ours-memory``: ``realtime serve`` with the memory broker (publish: ``POST /publish``).
- ``ours-redis``: ``realtime serve`` with Redis (publish: the Redis envelope).
- ``ours-redis-2w``: ``realtime serve --workers 2`` with Redis.
- ``python-socketio``: ``bench/peers/sio_server.py`` in ``bench/.venv-peers``.
- ``node-socketio``: ``bench/peers/node/server.js`` (Socket.IO 4 + redis adapter).

Every server gets a Redis channel unique to the run (``bench-<uuid>``) so runs never
collide with tests or other runs sharing the Redis.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from bench.procstat import tree

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PEERS_PY = BENCH / ".venv-peers" / "bin" / "python"
NODE_DIR = BENCH / "peers" / "node"
API_KEY = "bench-api-key-0123456789abcdef"
USER_ID = 7
SIO_PATH = "/socket.io/?EIO=4&transport=websocket"
OURS = ("ours-memory", "ours-redis", "ours-redis-2w")
PEERS = ("python-socketio", "node-socketio")


def versions() -> dict[str, str]:
    """Versions of what is measured: event loop of our server and generator, and the peers."""
    found = {"uvloop (our server with EVENT_LOOP=auto, and the generator)": "yes" if _has_uvloop() else "no"}
    if PEERS_PY.exists():
        code = "import importlib.metadata as m; print(m.version('python-socketio'))"
        found["python-socketio"] = _output([str(PEERS_PY), "-c", code])
    if available("node-socketio"):
        found["node"] = _output(["node", "--version"])
        found["socket.io"] = _output(["node", "-p", "require('socket.io/package.json').version"], cwd=NODE_DIR)
        found["@socket.io/redis-adapter"] = _output(
            ["node", "-p", "require('@socket.io/redis-adapter/package.json').version"], cwd=NODE_DIR
        )
    return found


def source_state() -> dict[str, object]:
    """The commit measured (``BENCH_COMMIT`` when running from an exported snapshot), and the
    server files that differ from it (uncommitted edits)."""
    head = os.environ.get("BENCH_COMMIT") or _output(["git", "rev-parse", "HEAD"], cwd=ROOT)
    status = _output(
        ["git", "status", "--porcelain", "--", "realtime", "topics", "keys", "http_api", "service"], cwd=ROOT
    )
    if status == "unknown":  # not a git checkout (an exported snapshot): nothing uncommitted
        status = ""
    return {"commit": head, "uncommitted_server_files": [line[3:] for line in status.splitlines() if line]}


def _has_uvloop() -> bool:
    import importlib.util

    return importlib.util.find_spec("uvloop") is not None


def _output(argv: list[str], cwd: Path | None = None) -> str:
    try:
        return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=20, check=True).stdout.rstrip()  # noqa: S603
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class BenchError(Exception):
    """A server did not start, or the harness cannot run as asked."""


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def available(name: str) -> bool:
    """Whether server ``name`` can run here (peers need ``bench/setup_peers``)."""
    if name == "python-socketio":
        return PEERS_PY.exists()
    if name == "node-socketio":
        return shutil.which("node") is not None and (NODE_DIR / "node_modules" / "socket.io").exists()
    return name in OURS


OUR_EXTRA_ENV: dict[str, str] = {}
"""Settings added to our servers' environment (``--server-env``)."""


def drop_library(url: str, channel: str) -> None:
    """Delete the Redis Function library ours loaded for ``channel`` (libraries are global to
    a Redis server, so each run's would stay); nothing if there is none or Redis is down."""
    import redis

    from realtime.redis_functions import function_names

    try:
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        try:
            client.function_delete(function_names(channel).library)
        finally:
            client.close()
    except (redis.RedisError, OSError):
        pass


@dataclass
class Server:
    """One running server under test.

    Attributes:
        name: one of :data:`OURS` or :data:`PEERS`.
        port: its loopback port.
        dialect: ``pubsub`` (ours) or ``sio`` (Socket.IO peers).
        path: the WebSocket path.
        publish_mode: ``http`` (memory broker) or ``redis``.
        channel: the run's Redis channel.
        token: a WS token (ours) for LISTEN.
        compression: enable permessage-deflate where it is a server setting (Node
            Socket.IO: ``perMessageDeflate``, off by default). python-socketio (aiohttp)
            accepts it whenever a client offers it; ours never negotiates it.
        env: settings of ours applied last (e.g. the production limits back on).
        root: the source tree ours runs from (another commit's export, for paired runs).
    """

    name: str
    redis_url: str
    port: int = field(default_factory=free_port)
    channel: str = field(default_factory=lambda: f"bench-{uuid.uuid4().hex}")
    token: str = ""
    compression: bool = False
    proc: subprocess.Popen[bytes] | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="realtime-bench-")))
    env: dict[str, str] = field(default_factory=dict)
    root: Path = ROOT

    @property
    def ours(self) -> bool:
        return self.name in OURS

    @property
    def dialect(self) -> str:
        return "pubsub" if self.ours else "sio"

    @property
    def path(self) -> str:
        return "/ws" if self.ours else SIO_PATH

    @property
    def publish_mode(self) -> str:
        return "http" if self.name == "ours-memory" else "redis"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Server:
        """Start the process and wait until it serves (ours: ``/ready``; peers: TCP accept).

        Raises:
            BenchError: it exited or did not become ready within ``timeout`` seconds.
        """
        argv, env = self._command()
        log = (self.workdir / "server.log").open("wb")
        self.proc = subprocess.Popen(  # noqa: S603 - our own fixed command lines
            argv, cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited: {self.log_tail()}")
            if self._ready():
                if self.ours:
                    self.token = self._token()
                return self
            time.sleep(0.1)
        tail = self.log_tail()
        self.stop()
        raise BenchError(f"{self.name} did not start in {timeout}s: {tail}")

    def pids(self) -> list[int]:
        """The server's process tree (workers included)."""
        return tree(self.proc.pid) if self.proc is not None else []

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL after 10 s; removes the work directory."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self.ours and self.redis_url:
            drop_library(self.redis_url, self.channel)

    def log_tail(self) -> str:
        """The last 2 KB of the server's output."""
        try:
            return (self.workdir / "server.log").read_bytes()[-2000:].decode(errors="replace")
        except OSError:
            return ""

    def _command(self) -> tuple[list[str], dict[str, str]]:
        base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
        if self.name == "python-socketio":
            return [
                str(PEERS_PY),
                str(BENCH / "peers" / "sio_server.py"),
                str(self.port),
                self.redis_url,
                self.channel,
            ], base
        if self.name == "node-socketio":
            env = {**base, "PORT": str(self.port), "REDIS_URL": self.redis_url, "CHANNEL": self.channel}
            if self.compression:
                env["PERMESSAGE_DEFLATE"] = "1"
            return ["node", str(NODE_DIR / "server.js")], env
        keys = [{"userId": USER_ID, "apiKey": API_KEY, "scopes": ["user:read:remote-control", "realtime:publish"]}]
        env = {
            **base,
            "API_KEYS": orjson.dumps(keys).decode(),
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "warning",
            "SHUTDOWN_GRACE": "0",
            "IDLE_TIMEOUT": "3600",
            "LISTEN_TIMEOUT": "120",
            # per-client abuse limits would refuse a load generator on one address: off
            "MAX_CONNECTIONS_PER_IP": "0",
            "MAX_CONNECTIONS_PER_USER": "0",
            "CONNECT_RATE_PER_IP": "0",
            "LISTEN_RATE": "0",
            "TOKEN_CHECK_RATE_PER_IP": "0",  # the connect scenario checks 3,000 fresh tokens from one address
            "DATABASE_URL": "none",  # the realtime core only: no embedded PostgreSQL per run
            "PYTHONPATH": str(self.root),
        }
        argv = [sys.executable, "-m", "realtime", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        env.update(OUR_EXTRA_ENV)
        env.update(self.env)
        if self.name != "ours-memory":
            env.update(REDIS_URL=self.redis_url, REDIS_CHANNEL=self.channel)
        if self.name == "ours-redis-2w":
            argv += ["--workers", "2"]
        return argv, env

    def _ready(self) -> bool:
        try:
            if self.ours:
                with urllib.request.urlopen(f"{self.url}/ready", timeout=1) as resp:  # noqa: S310 - loopback
                    return bool(resp.status == 200)
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def tokens(self, count: int) -> list[str]:
        """``count`` distinct WS tokens (ours; empty for the peers), so no verification is cached."""
        return [self._token() for _ in range(count)] if self.ours else []

    def _token(self) -> str:
        req = urllib.request.Request(  # noqa: S310 - loopback
            f"{self.url}/auth/ws", method="POST", headers={"Authorization": f"Api-Key {API_KEY}"}
        )
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - loopback
            token: str = orjson.loads(resp.read())["token"]
        return token
