"""Process accounting from ``/proc`` (Linux): CPU time and RSS of a process tree, load average."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import resource
import signal
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def raise_fd_limit() -> int:
    """Raise this process's open-file soft limit to its hard limit; returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def run_bounded(run: Callable[[], T], timeout: float) -> T:
    """``run()`` with a SIGALRM after ``timeout`` seconds (rounded up), main thread only.

    Raises:
        TimeoutError: ``run`` took longer ("the run took longer than --timeout").
    """

    def alarm(signum: int, frame: object) -> None:
        raise TimeoutError("the run took longer than --timeout")

    signal.signal(signal.SIGALRM, alarm)
    signal.alarm(math.ceil(timeout))
    try:
        return run()
    finally:
        signal.alarm(0)


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces: split after its closing parenthesis
    return text[text.rindex(")") + 2 :].split()


def tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


@dataclass(frozen=True)
class Cpu:
    """CPU seconds consumed so far (user, system)."""

    user: float
    system: float

    @property
    def total(self) -> float:
        """User plus system seconds."""
        return self.user + self.system

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(self.user - other.user, self.system - other.system)


def cpu(pids: list[int]) -> Cpu:
    """CPU time of ``pids`` (live processes only; fields 14 and 15 of ``/proc/<pid>/stat``)."""
    user = system = 0.0
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:
            user += int(fields[11]) / _TICKS
            system += int(fields[12]) / _TICKS
    return Cpu(user, system)


def rss_bytes(pids: list[int]) -> int:
    """Resident set size of ``pids`` in bytes (field 24 of ``/proc/<pid>/stat``)."""
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:
            total += int(fields[21]) * _PAGE
    return total


def listen_overflows() -> int:
    """The kernel's count of connections dropped because an accept queue was full
    (``TcpExt ListenOverflows`` in ``/proc/net/netstat``; system-wide)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(table.get("ListenOverflows", 0))
    return 0


Handler = Callable[[dict[str, Any]], Awaitable[Any]]


async def serve_commands(
    pipe: Connection, handlers: Mapping[str, Handler], close: Callable[[], Awaitable[Any]]
) -> None:
    """A generator process's command loop: each ``{"op": ...}`` from ``pipe`` runs its handler
    and its answer goes back; any other op (``close``) runs ``close``, answers and returns."""
    loop = asyncio.get_running_loop()
    while True:
        cmd: dict[str, Any] = await loop.run_in_executor(None, pipe.recv)
        handler = handlers.get(cmd["op"])
        if handler is None:
            pipe.send(await close())
            return
        pipe.send(await handler(cmd))


def run_generator(serve: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """A generator process's entry point: raise the fd limit, use uvloop when it is
    installed, and run ``serve``."""
    raise_fd_limit()
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(serve())
