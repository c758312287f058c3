"""The unit tier's guard: a test under ``tests/unit`` that opens a socket, resolves a name or
starts a process fails at once, so the tier stays pure (no Redis, PostgreSQL, servers or
subprocesses) and fast. Such a test belongs in ``tests/integration``.

The shared fixtures of ``tests/conftest.py`` (``key_store``, ``make_settings``) apply here too;
the ones that need a service (``make_client``, ``redis_url``, ``spawn``) fail under this guard.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable
from typing import Any, NoReturn

import pytest


class IOInUnitTest(AssertionError):
    """A unit test tried to do I/O that belongs in the integration tier."""


def _refuse(what: str) -> Callable[..., NoReturn]:
    def refuse(*args: Any, **kwargs: Any) -> NoReturn:
        raise IOInUnitTest(f"a unit test may not {what}: move it to tests/integration")

    return refuse


@pytest.fixture(autouse=True)
def no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse sockets (connect, bind, name lookups) and subprocesses for the test's duration.

    asyncio's ``open_connection``, ``create_connection``, ``create_server`` and
    ``create_subprocess_exec`` all come down to these calls; the event loop's own socketpair
    (its self-pipe) needs neither connect nor bind and still works.
    """
    monkeypatch.setattr(socket.socket, "connect", _refuse("connect a socket"))
    monkeypatch.setattr(socket.socket, "connect_ex", _refuse("connect a socket"))
    monkeypatch.setattr(socket.socket, "bind", _refuse("bind a socket"))
    monkeypatch.setattr(socket, "getaddrinfo", _refuse("resolve a name"))
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("start a process"))
