"""The unit tier's guard (``tests/unit/conftest.py``) refuses sockets and processes."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

import pytest

from tests.unit.conftest import IOInUnitTest


def test_sockets_and_processes_are_refused() -> None:
    with pytest.raises(IOInUnitTest, match="resolve a name"):
        socket.create_connection(("localhost", 6379), timeout=1)
    with socket.socket() as sock, pytest.raises(IOInUnitTest, match="connect a socket"):
        sock.connect(("127.0.0.1", 6379))
    with socket.socket() as sock, pytest.raises(IOInUnitTest, match="bind a socket"):
        sock.bind(("127.0.0.1", 0))
    with pytest.raises(IOInUnitTest, match="start a process"):
        subprocess.run([sys.executable, "-c", "pass"], check=False)


async def test_asyncio_connections_servers_and_processes_are_refused() -> None:
    with pytest.raises(IOInUnitTest):
        await asyncio.open_connection("127.0.0.1", 6379)
    with pytest.raises(IOInUnitTest):
        await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    with pytest.raises(IOInUnitTest):
        await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await asyncio.sleep(0)  # the event loop itself still runs
