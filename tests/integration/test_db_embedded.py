"""``realtime serve`` without ``DATABASE_URL``: the embedded PostgreSQL (pgserver), in real processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import pytest

from tests.pg import free_port, wait_for_port


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A working directory outside pytest's tmp root.

    As root the embedded server runs as the user ``pgserver``, which must traverse the
    path to ``./.data``; pytest resets its own tmp root to mode 0700 at every session
    start (another concurrent run would lock it out mid-test).
    """
    path = Path(tempfile.mkdtemp(prefix="realtime-embedded-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def start(cwd: Path, port: int, **env: str) -> subprocess.Popen[bytes]:
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "API_KEYS")}
    return subprocess.Popen(
        [sys.executable, "-m", "realtime", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=cwd,
        env={**base, "LOG_FORMAT": "json", "SHUTDOWN_GRACE": "0", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def stop(proc: subprocess.Popen[bytes]) -> list[dict[str, object]]:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode()
    return [orjson.loads(line) for line in out.splitlines() if line.startswith(b"{")]


@pytest.mark.slow
async def test_embedded_database_starts_migrates_and_keeps_data(workdir: Path) -> None:
    port = free_port()
    proc = start(workdir, port)
    try:
        wait_for_port(port, proc, timeout=60)
        async with aiohttp.ClientSession() as http:
            resp = await http.get(f"http://127.0.0.1:{port}/api/v1/dream")
            assert resp.status == 401  # the database routes exist
    finally:
        logs = stop(proc)
    events = {str(e["event"]): e for e in logs}
    assert "embedded_database_started" in events and "migrations_applied" in events
    url = str(events["embedded_database_started"]["url"])
    assert str(workdir / ".data" / "pgdata") in url
    assert (workdir / ".data" / "pgdata" / "PG_VERSION").exists()

    proc = start(workdir, port := free_port())
    try:
        wait_for_port(port, proc, timeout=60)
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("INSERT INTO users (name) VALUES ('kept')")
        finally:
            await conn.close()
    finally:
        logs = stop(proc)
    assert "migrations_applied" not in {e["event"] for e in logs}  # already up to date

    proc = start(workdir, port := free_port())
    try:
        wait_for_port(port, proc, timeout=60)
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT name FROM users") == "kept"
        finally:
            await conn.close()
    finally:
        stop(proc)


def test_embedded_failure_names_database_url(workdir: Path) -> None:
    (workdir / ".data").write_text("not a directory")
    proc = start(workdir, free_port())
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert b"DATABASE_URL is not set and the embedded PostgreSQL could not start" in out


def test_never_embedded_when_database_url_is_set(workdir: Path) -> None:
    proc = start(workdir, free_port(), DATABASE_URL="postgresql://postgres@127.0.0.1:1/nothing")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2 and b"cannot connect to the database at DATABASE_URL" in out
    assert not (workdir / ".data").exists() and b"embedded" not in out


async def test_database_url_none_serves_without_a_database(workdir: Path) -> None:
    port = free_port()
    proc = start(workdir, port, DATABASE_URL="none")
    try:
        wait_for_port(port, proc)
        async with aiohttp.ClientSession() as http:
            assert (await http.get(f"http://127.0.0.1:{port}/api/v1/dream")).status == 404
            assert (await http.get(f"http://127.0.0.1:{port}/health")).status == 200
    finally:
        stop(proc)
    assert not (workdir / ".data").exists()
