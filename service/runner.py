"""Running the server: one process (:func:`serve`) or several workers (:func:`run_workers`)."""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable

import structlog
from aiohttp import web

from db.serving import prepare_database
from realtime.aiohttp_adapter import RealtimeRunner
from realtime.errors import SettingsError
from realtime.settings import Settings
from service.app import create_app, load_keys

log = structlog.get_logger("realtime")
LISTEN_BACKLOG = 1024
"""Pending TCP connections the kernel queues before accept() (capped by net.core.somaxconn)."""


async def serve(settings: Settings, *, reuse_port: bool = False, migrate: bool = False) -> None:
    """Run the server until SIGTERM or SIGINT, then shut down gracefully.

    Shutdown order: stop accepting connections, send RECONNECT to every client, wait up
    to ``SHUTDOWN_GRACE`` seconds, close the rest with 1001, release the broker.

    Args:
        settings: the settings.
        reuse_port: bind with ``SO_REUSEPORT`` (worker mode: the kernel spreads new
            connections over the workers).
        migrate: apply pending database migrations first (else refuse to serve with any).

    Raises:
        AddressInUse: ``PORT`` on ``HOST`` is taken (another server is running there).
        db.PendingMigrations: migrations are pending and ``migrate`` is false.
        db.DatabaseError: the database cannot be reached or prepared.
    """
    settings = settings.with_overrides(database_url=await prepare_database(settings.database.url, migrate=migrate))
    server = settings.server
    fd_limit = raise_fd_limit()  # before the app: its descriptor budget is read from the limit
    app = create_app(settings)
    runner = RealtimeRunner(app, access_log=None, shutdown_timeout=server.shutdown_grace + 5)
    await runner.setup()
    freeze_startup_heap()  # before the socket opens: readiness and signal handling stay immediate
    # a deep accept queue: while the loop verifies a burst of LISTEN tokens, the kernel's
    # default 128 overflowed and each dropped SYN cost a client a 1 s retry
    site = web.TCPSite(
        runner, server.host, server.port, reuse_address=True, reuse_port=reuse_port or None, backlog=LISTEN_BACKLOG
    )
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        if exc.errno == errno.EADDRINUSE:
            raise AddressInUse(server.host, server.port) from None
        raise
    loop_kind = "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
    log.info("listening", host=server.host, port=server.port, pid=os.getpid(), loop=loop_kind, fd_limit=fd_limit)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
        log.info("shutdown_started")
    finally:
        await runner.cleanup()
        log.info("shutdown_complete")


class AddressInUse(SettingsError):
    """The port to listen on is taken, most often by another ``realtime serve`` (``make run``)."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(
            f"port {port} on {host} is already in use (another server, e.g. `make run`?): "
            f"stop it, or choose another port with PORT=<port> or --port <port>"
        )
        self.host, self.port = host, port


MAX_FD_LIMIT = 1 << 20
"""Where :func:`raise_fd_limit` stops when the hard limit is unlimited."""


def raise_fd_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard one (at most :data:`MAX_FD_LIMIT`): every
    connection is a descriptor, and distributions default the soft limit to 1,024 while the
    hard one allows far more (an operator's ``ulimit -Hn`` or ``LimitNOFILE`` is the bound).

    Returns:
        The soft limit now (the old one if it could not be raised).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = MAX_FD_LIMIT if hard == resource.RLIM_INFINITY else min(hard, MAX_FD_LIMIT)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft


def freeze_startup_heap() -> int:
    """Collect once, then move every object allocated so far (modules, the app, settings,
    keys: they live as long as the process) out of the garbage collector's reach
    (``gc.freeze``), so its full collections walk only what connections allocate since.

    Without it every full collection during a connection storm walks the ~100,000 startup
    objects again (the paired connect figures are in docs/benchmarks.md).

    Returns:
        The number of objects frozen.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop to run on: ``"uvloop"``, ``"asyncio"``, or ``"auto"`` (uvloop when it
    is installed, e.g. ``pip install 'realtime-pubsub[uvloop]'``).

    Raises:
        SettingsError: ``"uvloop"`` was asked for and is not installed.
    """
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise SettingsError("EVENT_LOOP=uvloop but uvloop is not installed") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_workers(settings: Settings, *, migrate: bool = False) -> int:
    """Start ``WORKERS`` server processes on one port (``SO_REUSEPORT``), all sharing Redis.

    Keys are loaded (or the development key generated) once, here, before the workers
    start, so every worker signs and verifies with the same keys. SIGTERM/SIGINT are
    forwarded; returns the worst exit status.

    Args:
        settings: the settings; ``server.workers`` processes are started, each one
            ``realtime serve --worker`` on ``server.host`` and ``server.port``.
        migrate: each worker applies pending migrations first (one does; the rest find none).

    Raises:
        SettingsError: ``REDIS_URL`` is not set (memory brokers cannot share messages).
    """
    server, auth = settings.server, settings.auth
    if not (settings.broker.redis_url or settings.broker.redis_cluster_nodes):
        raise SettingsError("--workers > 1 needs REDIS_URL or REDIS_CLUSTER_NODES: each worker is a separate process")
    load_keys(ws_signing_keys=auth.ws_signing_keys, keys_dir=auth.keys_dir)
    argv = [
        sys.executable,
        "-m",
        "realtime",
        "serve",
        "--worker",
        "--workers",
        "1",
        "--host",
        server.host,
        "--port",
        str(server.port),
        *(["--migrate"] if migrate else []),
    ]
    procs = [subprocess.Popen(argv) for _ in range(server.workers)]  # noqa: S603 - our own interpreter and module
    log.info("workers_started", workers=server.workers, pids=[p.pid for p in procs])

    def forward(signum: int, _frame: object) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [proc.wait() for proc in procs]
    return max(abs(code) for code in codes)
