"""The first ten minutes of a new user: a second server on a taken port, ``realtime listen``
against a server that is down, a malformed ``API_KEYS``, packaging without warnings."""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import IO, Any

import pytest

from realtime.errors import SettingsError
from realtime.settings import parse_api_keys
from service.cli import main
from tests.conftest import AppFactory
from tests.integration.test_console import CHROMIUM_ARGS, chromium_or_skip
from tests.procs import REALTIME, Server, free_port

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def run_realtime(
    args: list[str], cwd: Path, env: dict[str, str], timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "API_KEYS", "WS_SIGNING_KEYS", "KEYS_DIR")}
    return subprocess.run(
        [*REALTIME, *args], cwd=cwd, env={**base, **env}, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_a_second_server_on_a_taken_port_says_so_in_one_line(spawn: type[Server], tmp_path: Path) -> None:
    first = spawn()
    second = run_realtime(
        ["serve", "--host", "127.0.0.1", "--port", str(first.port)],
        tmp_path,
        {"DATABASE_URL": "none", "LOG_FORMAT": "json"},
    )
    assert second.returncode == 2
    assert "Traceback" not in second.stderr + second.stdout
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, second.stderr
    assert f"port {first.port} on 127.0.0.1 is already in use" in errors[0] and "PORT" in errors[0]
    assert first.proc.poll() is None  # the first server is untouched


def readme_blocks(section: str) -> list[tuple[str, str]]:
    """The fenced code blocks (language, text) of the README section titled ``section``."""
    text = README.read_text()
    start = text.index(f"\n## {section}")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```(\w+)\n(.*?)```", text[start:end], re.S)


def run_http_api_block(
    tmp_path: Path, marker: str, readme_port: str, children: str
) -> subprocess.CompletedProcess[str]:
    """Run the README "HTTP API" ``sh`` block containing ``marker`` in bash, in a fresh
    directory beside the venv (only ``readme_port`` changed, to a free one), with a
    ``REDIS_URL`` the block must not use (as a "Try it" shell leaves it); the shell
    variables ``children`` (e.g. ``"$SERVER"``) are killed on the way out, whatever fails.

    Returns:
        The finished bash, text output captured (the test fails when it exits non-zero).
    """
    if shutil.which("curl") is None:
        if os.environ.get("CI"):
            pytest.fail(f"the README's {marker} example needs curl (CI is set: this test must not skip)")
        pytest.skip(f"the README's {marker} example needs curl")
    (block,) = [text for lang, text in readme_blocks("HTTP API") if lang == "sh" and marker in text]
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    script = f"set -e\ntrap 'kill {children} 2>/dev/null || true' EXIT\n" + block.replace(readme_port, str(free_port()))
    env = {k: v for k, v in os.environ.items() if k not in ("API_KEYS", "VIRTUAL_ENV", "PORT")}
    env["PATH"] = ":".join(p for p in env.get("PATH", "").split(":") if not p.startswith(str(ROOT)))
    env["REDIS_URL"] = "redis://127.0.0.1:1/0"  # the block must not use it
    proc = subprocess.run(
        ["bash", "-c", script + "wait\n"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_readme_try_it_runs_pasted_as_is(redis_url: str, channel: str, tmp_path: Path) -> None:
    """Run the README's "Try it" blocks in one bash, in a fresh directory beside the venv.

    Changed on the way: the port (a free one for 4445), the Redis URL and channel (this test's
    own), and the ``sleep 1`` before publishing becomes a wait for the client's RESPONSE.
    """
    for tool in ("curl", "redis-cli"):
        if shutil.which(tool) is None:
            message = f"the README's Try it needs {tool}"
            if os.environ.get("CI"):
                pytest.fail(message + " (CI is set: this test must not skip)")
            pytest.skip(message)
    blocks = [b for b in readme_blocks("Try it") if b[0] != "html"]  # the browser page: test_js_client.py
    (setup_lang, setup), (client_lang, client), (publish_lang, publish) = blocks
    assert (setup_lang, client_lang, publish_lang) == ("sh", "python", "sh")
    assert "sleep 1" in publish and "PUBLISH realtime " in publish and "realtime:admin" in setup
    port = str(free_port())
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    (tmp_path / "client.py").write_text(client.replace("4445", port))
    wait = "for _ in $(seq 100); do grep -q RESPONSE client.out && break; sleep 0.1; done\n"
    publish = publish.replace("python client.py &", "python client.py > client.out &").replace("sleep 1", wait)
    publish = publish.replace("PUBLISH realtime ", f"PUBLISH {channel} ")
    done = "for _ in $(seq 100); do [ $(grep -c MESSAGE client.out) -ge 3 ] && break; sleep 0.1; done\n"
    script = "set -e\n" + setup + publish + done + "kill %2 %1\nwait\ncat client.out\n"
    script = script.replace("4445", port).replace("redis://127.0.0.1:6379/0", redis_url)
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "API_KEYS", "VIRTUAL_ENV", "PORT")}
    env["PATH"] = ":".join(p for p in env.get("PATH", "").split(":") if not p.startswith(str(ROOT)))
    env["REDIS_CHANNEL"] = channel
    proc = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90, check=False
    )
    out = (tmp_path / "client.out").read_text() if (tmp_path / "client.out").exists() else ""
    assert '{"type":"RESPONSE","nonce":"n1","error":""}' in out, proc.stdout + proc.stderr
    assert '"message":"{\\"status\\":\\"processed\\"}"' in out, out
    assert '"message":"{\\"event\\":\\"next\\"}"' in out and '"message":"pause"' in out, out


def read_line(stream: IO[str], timeout: float) -> str:
    """The next line of a child's pipe, or ``""`` when none comes within ``timeout`` seconds."""
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline() if ready else ""


def test_realtime_listen_says_what_failed_and_when_it_retries(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    proc = subprocess.Popen(
        [*REALTIME, "listen", "dream:update.x", "--url", f"http://127.0.0.1:{port}"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    try:
        lines = [read_line(proc.stderr, 10) for _ in range(2)]  # the first at once, the second after ~1 s
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=10)
        proc.stderr.close()
    for line in lines:
        assert line.startswith("not listening: ") and f"127.0.0.1:{port}" in line, lines
        assert re.search(r"; retrying in \d+\.\d s$", line.strip()), lines
    assert code == 0


async def test_redis_connect_failed_names_host_and_port(spawn: type[Server]) -> None:
    port = free_port()  # no Redis there
    server = spawn(env={"REDIS_URL": f"redis://:secret-password@127.0.0.1:{port}/0"})
    for _ in range(100):
        lines = [json.loads(line) for line in server.log.read_text().splitlines() if "redis_connect_failed" in line]
        if lines:
            break
        await asyncio.sleep(0.05)
    assert lines, server.log.read_text()
    assert lines[0]["host"] == "127.0.0.1" and lines[0]["port"] == port
    assert "secret-password" not in server.log.read_text()


def test_malformed_api_keys_says_where(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    secret = "a-secret-key-0123456789"
    text = f'[{{"userId": 7,\n  "apiKey": "{secret}"\n  "scopes": []}}]'  # a comma missing after the key
    with pytest.raises(SettingsError) as caught:
        parse_api_keys(text)
    assert (
        str(caught.value) == "API_KEYS is not valid JSON: line 3, column 3: unexpected character, expected ',' or '}'"
    )
    monkeypatch.setenv("API_KEYS", text)
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    assert main(["publish", "dream:update.a", "x"]) == 2
    err = capsys.readouterr().err
    assert "line 3, column 3" in err and secret not in err


#: This machine's pip configuration names local indexes that may be absent; not the project's.
PIP_CONFIG_NOISE = re.compile(r"^WARNING: Location '.*' is ignored: it is neither a file nor a directory\.$")


@pytest.mark.slow
def test_packaging_prints_no_warnings(tmp_path: Path) -> None:
    """``pip install -e .`` and ``pip wheel .`` print no setuptools warnings, and the wheel
    carries the migrations and the static files."""
    src = tmp_path / "src"
    for name in ("pyproject.toml", "README.md"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, src / name)
    for package in ("topics", "keys", "realtime", "http_api", "db", "service"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    runs = [
        [*pip, "install", "-q", "--no-deps", "--ignore-installed", "-e", ".", "--prefix", str(tmp_path / "prefix")],
        [*pip, "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), "."],
    ]
    for argv in runs:
        done = subprocess.run(argv, cwd=src, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr
        noise = [line for line in (done.stdout + done.stderr).splitlines() if line and not PIP_CONFIG_NOISE.match(line)]
        assert noise == [], "\n".join(noise)
    (wheel,) = (tmp_path / "dist").glob("realtime_pubsub-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"db/migrations/0001_identities.sql", "http_api/static/console.js", "http_api/static/console.html"} <= names
    assert "service/cli.py" in names  # the composition root, where the `realtime` script points
    assert "realtime/settings/environment.py" in names  # subpackages are listed one by one


def linked(html: str) -> list[str]:
    """Every ``href`` and ``src`` of a page."""
    return re.findall(r'(?:href|src)="([^"]*)"', html)


async def test_index_links_to_the_console_docs_and_health(make_client: AppFactory) -> None:
    client = await make_client()
    resp = await client.get("/")
    assert resp.status == 200 and resp.content_type == "text/html"
    assert "script-src" not in resp.headers["Content-Security-Policy"]  # no script at all
    links = linked(await resp.text())
    assert {"/console", "/api/v1/api-docs", "/health", "/ready"} <= set(links)
    for link in links:
        if link.startswith("/"):
            assert (await client.get(link)).status == 200, link
        else:
            assert link == "data:,", link  # nothing from elsewhere


async def test_api_docs_are_served_from_here(make_client: AppFactory) -> None:
    client = await make_client()
    resp = await client.get("/api/v1/api-docs")
    assert resp.status == 200
    csp = resp.headers["Content-Security-Policy"]
    assert "http" not in csp and "script-src 'self';" in csp
    html = await resp.text()
    assert "http://" not in html and "https://" not in html
    assets = [link for link in linked(html) if link.startswith("api-docs/")]
    assert sorted(assets) == ["api-docs/api-docs.js", "api-docs/swagger-ui-bundle.js", "api-docs/swagger-ui.css"]
    for asset in assets:
        got = await client.get(f"/api/v1/{asset}")
        assert got.status == 200, asset
        assert got.content_type == ("text/css" if asset.endswith(".css") else "text/javascript")
        assert len(await got.read()) > 100
    assert "validatorUrl: null" in await (await client.get("/api/v1/api-docs/api-docs.js")).text()


async def test_api_docs_render_offline_in_chromium(make_client: AppFactory) -> None:
    chromium = chromium_or_skip()
    from playwright.async_api import async_playwright, expect

    client = await make_client()
    own = str(client.make_url("/"))
    elsewhere: list[str] = []
    errors: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = await browser.new_page()

            async def offline(route: Any) -> None:  # the network is this server only
                if route.request.url.startswith(own) or route.request.url.startswith("data:"):
                    await route.continue_()
                else:
                    elsewhere.append(route.request.url)
                    await route.abort()

            await page.route("**/*", offline)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            await page.goto(str(client.make_url("/api/v1/api-docs")))
            await expect(page.locator(".opblock").first).to_be_visible(timeout=15000)
            assert await page.locator(".opblock").count() >= 5
            await expect(page.locator(".info .title")).to_contain_text("realtime")
        finally:
            await browser.close()
    assert elsewhere == [] and errors == []


def test_a_skip_says_why_without_rs(tmp_path: Path) -> None:
    (tmp_path / "test_probe.py").write_text(
        "import pytest\n\n\ndef test_needs_caddy():\n    pytest.skip('caddy is not installed')\n\n\n"
        "def test_fine():\n    pass\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.skip_summary", "-p", "no:cacheprovider", "test_probe.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 skipped: caddy is not installed" in done.stdout, done.stdout
