"""The ``realtime`` and ``python -m keys`` command lines, called as functions and processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from keys import KeyStore
from keys.cli import main as keys_main
from service.cli import main


def test_keys_generate_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = str(tmp_path / "k")
    assert main(["keys", "generate", "--dir", directory]) == 0
    first = capsys.readouterr().out.strip()
    assert main(["keys", "generate", "--dir", directory]) == 0
    second = capsys.readouterr().out.strip()
    store = KeyStore.from_directory(directory)
    assert store.signing_key.kid == second and {k.kid for k in store.keys} == {first, second}
    assert main(["keys", "list", "--dir", directory]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[0] == "KID"
    assert lines[1].startswith(second) and lines[1].endswith("yes")
    assert lines[2].startswith(first) and lines[2].endswith("no")
    for pem in Path(directory).glob("*.pem"):
        assert pem.stat().st_mode & 0o777 == 0o600


def test_keys_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KEYS_DIR", str(tmp_path / "env-keys"))
    assert keys_main(["generate"]) == 0
    kid = capsys.readouterr().out.strip()
    assert KeyStore.from_directory(tmp_path / "env-keys").signing_key.kid == kid


def test_keys_list_empty_dir_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "list", "--dir", str(tmp_path)]) == 1
    assert "no signing key" in capsys.readouterr().err


def test_python_dash_m_keys(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "keys", "generate", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert KeyStore.from_directory(tmp_path).signing_key.kid == out.stdout.strip()


def test_publish_without_redis_url_explains(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("REALTIME_URL", raising=False)
    assert main(["publish", "dream:update.1", "hi"]) == 2
    assert "REDIS_URL" in capsys.readouterr().err


def test_publish_bad_topic(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    assert main(["publish", "nope.1", "hi"]) == 2
    assert "malformed topic" in capsys.readouterr().err


def test_publish_bad_json(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["publish", "--json", "dream:update.1", "{nope"]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_bad_setting_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PORT", "eighty")
    assert main(["serve"]) == 2
    assert "PORT" in capsys.readouterr().err
