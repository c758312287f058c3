"""``realtime history``, called as ``main([...])`` against a real server process."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from service.cli import main
from tests import procs
from tests.conftest import API_KEYS_JSON, OTHER_KEY, PUBLISHER_KEY, USER_KEY
from tests.integration.test_onboarding import run_http_api_block


@pytest.fixture(autouse=True)
def no_env_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REALTIME_URL", "REALTIME_API_KEY", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)


def lines(text: str) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in text.splitlines()]


def test_history_through_a_server(spawn: type[procs.Server], capsys: pytest.CaptureFixture[str]) -> None:
    server = spawn(env={"API_KEYS": API_KEYS_JSON})
    via = ["--url", server.url]
    for message in ("next", "pause", '{"event":"like"}'):
        assert main(["publish", "remote-control:command.7", message, *via, "--api-key", PUBLISHER_KEY]) == 0
    capsys.readouterr()
    assert main(["history", "remote-control:command.7", *via, "--api-key", USER_KEY]) == 0
    out, err = capsys.readouterr()
    assert lines(out) == [
        {"offset": 1, "message": "next"},
        {"offset": 2, "message": "pause"},
        {"offset": 3, "message": '{"event":"like"}'},
    ]
    status = dict(item.split("=", 1) for item in err.split())
    assert status["topic"] == "remote-control:command.7" and status["offset"] == "3"
    assert status["first"] == "1" and status["count"] == "3" and status["epoch"]
    # one page after another: --since the last offset printed
    assert (
        main(["history", "remote-control:command.7", *via, "--api-key", USER_KEY, "--since", "1", "--limit", "1"]) == 0
    )
    out, err = capsys.readouterr()
    assert lines(out) == [{"offset": 2, "message": "pause"}] and "count=1" in err and "note:" not in err


def test_history_refusals_through_a_server(spawn: type[procs.Server], capsys: pytest.CaptureFixture[str]) -> None:
    server = spawn(env={"API_KEYS": API_KEYS_JSON})
    via = ["--url", server.url]
    assert main(["history", "remote-control:command.7", *via, "--api-key", OTHER_KEY]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: 403") and "not yours" in err
    assert main(["history", "channel:update.1", *via, "--api-key", USER_KEY]) == 1
    assert "error: 404" in capsys.readouterr().err
    assert main(["history", "dream:update.a", *via]) == 1  # no key
    assert "error: 401" in capsys.readouterr().err
    assert main(["history", "dream:update.a", *via, "--api-key", USER_KEY]) == 0  # public
    out, err = capsys.readouterr()
    assert out == "" and "offset=0" in err


def test_history_server_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{procs.free_port()}"
    assert main(["history", "dream:update.a", "--url", url, "--api-key", USER_KEY]) == 1
    assert "error: cannot read" in capsys.readouterr().err


def test_history_without_url_or_redis_explains(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["history", "dream:update.a"]) == 2
    assert "REDIS_URL" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["history", "nope.1"], "malformed topic"),
        (["history", "dream:update.a", "--limit", "5000"], "--limit is at most 1000"),
    ],
)
def test_history_usage_errors(argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--url", "http://127.0.0.1:1"]) == 2
    assert expected in capsys.readouterr().err


@pytest.mark.parametrize("value", ["-1", "x", "1.5"])
def test_history_bad_since_is_a_usage_error(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["history", "dream:update.a", "--since", value])
    assert exc.value.code == 2 and "non-negative integer" in capsys.readouterr().err


def test_history_from_redis_checks_the_policy_first(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # never contacted
    assert main(["history", "channel:update.1"]) == 2
    assert "keeps no history" in capsys.readouterr().err
    assert main(["history", "dream:unknown.1"]) == 2
    assert "unknown topic name" in capsys.readouterr().err


def test_history_from_unreachable_redis_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{procs.free_port()}/0")
    assert main(["history", "dream:update.a"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ")


def test_readme_history_example_runs_pasted_as_is(tmp_path: Path) -> None:
    """The README's ``GET /history`` block, in bash, in a fresh directory beside the venv
    (only its port changed), with ``REDIS_URL`` set as a "Try it" shell leaves it; the
    server is killed on the way out, whatever fails."""
    proc = run_http_api_block(tmp_path, "/history/", "4446", "$SERVER")
    out = proc.stdout
    assert '"kind":"memory"' in out
    assert '"publications":[{"offset":1,"message":"next"},{"offset":2,"message":"pause"}]' in out, out
    assert '"first":1,"publications":[{"offset":2,"message":"pause"}]' in out, out
    assert '{"offset":1,"message":"next"}\n{"offset":2,"message":"pause"}\n' in out, out
    assert "topic=remote-control:command.7 offset=2" in proc.stderr, proc.stderr
