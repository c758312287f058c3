"""Migrations against the real PostgreSQL: fresh, repeat, concurrent (two processes), failure, status."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from db.errors import MigrationError, PendingMigrations
from db.migrate import check_current, load_migrations, migrate, status
from db.pool import connection, prepare
from service.cli import main
from tests.pg import empty_url, free_port, wait_for_port

ALL = [f"{m.version:04d}_{m.name}" for m in load_migrations()]


async def test_fresh_then_repeat(empty_url: str) -> None:
    async with connection(empty_url) as conn:
        before = await status(conn)
        assert [s.applied_at for s in before] == [None] * len(ALL)
        with pytest.raises(PendingMigrations, match="--migrate"):
            await check_current(conn)
        applied = await migrate(conn)
        assert [f"{m.version:04d}_{m.name}" for m in applied] == ALL
        assert await migrate(conn) == []
        await check_current(conn)
        assert all(s.applied_at is not None and not s.modified for s in await status(conn))
        tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
        assert {"users", "api_keys", "dreams", "dream_votes", "sessions", "schema_migrations"} <= tables


async def test_concurrent_in_one_process(empty_url: str) -> None:
    async def run() -> list[int]:
        async with connection(empty_url) as conn:
            return [m.version for m in await migrate(conn)]

    first, second = await asyncio.gather(run(), run())
    assert sorted(first + second) == [m.version for m in load_migrations()]
    assert not (first and second)


def test_two_processes_at_once(empty_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": empty_url}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "realtime", "migrate"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    lines = [line for out, _ in outputs for line in out.decode().splitlines()]
    assert sorted(line for line in lines if line.startswith("applied")) == sorted(f"applied {n}" for n in ALL)
    assert "database is up to date" in lines


def test_cli_status_and_migrate(
    empty_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", empty_url)
    assert main(["migrate", "--status"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{n}\tpending" for n in ALL]
    assert main(["migrate"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"applied {n}" for n in ALL]
    assert main(["migrate"]) == 0
    assert capsys.readouterr().out.strip() == "database is up to date"
    assert main(["migrate", "--status"]) == 0
    assert all("\tapplied " in line for line in capsys.readouterr().out.splitlines())


def test_cli_without_database_url(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert main(["migrate"]) == 2
    assert "DATABASE_URL" in capsys.readouterr().err


async def test_failed_migration_rolls_back(empty_url: str, tmp_path: Path) -> None:
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE a (x int);")
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE b (x int); SELECT * FROM no_such_table;")
    async with connection(empty_url) as conn:
        with pytest.raises(MigrationError, match="0002_bad failed and was rolled back"):
            await migrate(conn, load_migrations(tmp_path))
        assert await conn.fetchval("SELECT to_regclass('a') IS NOT NULL")
        assert not await conn.fetchval("SELECT to_regclass('b') IS NOT NULL")
        assert await conn.fetchval("SELECT array_agg(version) FROM schema_migrations") == [1]
        (tmp_path / "0002_bad.sql").write_text("CREATE TABLE b (x int);")
        assert [m.version for m in await migrate(conn, load_migrations(tmp_path))] == [2]


async def test_edited_migration_is_refused(empty_url: str, tmp_path: Path) -> None:
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE a (x int);")
    async with connection(empty_url) as conn:
        await migrate(conn, load_migrations(tmp_path))
        (tmp_path / "0001_ok.sql").write_text("CREATE TABLE a (x bigint);")
        edited = load_migrations(tmp_path)
        assert [s.modified for s in await status(conn, edited)] == [True]
        with pytest.raises(MigrationError, match="changed since"):
            await migrate(conn, edited)
        with pytest.raises(MigrationError, match="changed since"):
            await check_current(conn, edited)


def test_bad_file_names(tmp_path: Path) -> None:
    (tmp_path / "init.sql").write_text("")
    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        load_migrations(tmp_path)
    (tmp_path / "init.sql").unlink()
    (tmp_path / "0001_a.sql").write_text("")
    (tmp_path / "01_b.sql").write_text("")
    with pytest.raises(MigrationError):
        load_migrations(tmp_path)
    (tmp_path / "01_b.sql").unlink()
    (tmp_path / "00001_b.sql").write_text("")
    with pytest.raises(MigrationError, match="version 1"):
        load_migrations(tmp_path)


async def test_prepare_refuses_or_applies(empty_url: str) -> None:
    with pytest.raises(PendingMigrations):
        await prepare(empty_url, apply=False)
    assert await prepare(empty_url, apply=True) == ALL
    assert await prepare(empty_url, apply=False) == []


def test_serve_refuses_pending_migrations_unless_told(empty_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": empty_url, "LOG_FORMAT": "json", "KEYS_DIR": str(tmp_path / "keys")}
    env.pop("REDIS_URL", None)
    argv = [sys.executable, "-m", "realtime", "serve", "--host", "127.0.0.1", "--port", str(port)]
    refused = subprocess.run(argv, env=env, capture_output=True, timeout=60, check=False)
    assert refused.returncode == 2
    assert "pending migration" in refused.stderr.decode() and "--migrate" in refused.stderr.decode()
    proc = subprocess.Popen([*argv, "--migrate"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert b"migrations_applied" in out


def test_postgres_down_fails_under_ci_and_skips_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.pg

    monkeypatch.setattr(tests.pg, "ADMIN_URL", "postgresql://postgres@127.0.0.1:1/test")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        tests.pg.create_database(migrated=False)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        tests.pg.create_database(migrated=False)


def test_cli_database_unreachable(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/nothing")
    assert main(["users", "list"]) == 2
    assert "cannot connect to the database at DATABASE_URL" in capsys.readouterr().err
