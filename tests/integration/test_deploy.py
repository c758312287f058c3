"""Deployment files agree with the code: Dockerfile, docker-compose.yml, deploy/Caddyfile,
fly.toml, .env.example, the README, the Makefile and the pre-commit configuration.

There is no Docker engine here: the compose file is validated with ``docker-compose config -q``
(Debian's docker-compose, installed by ``.ci/run``), the Dockerfile's HEALTHCHECK command runs
against a real server process, and the committed Caddyfile runs (Debian's caddy) in front of two
real server processes sharing Redis.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
import yaml
from yarl import URL

from keys import KeyStore
from realtime.settings import ENV_NAMES, Settings
from service.app import create_app
from service.cli import main as realtime_main
from tests.conftest import listen, recv
from tests.integration.test_faults import PrivateRedis
from tests.pg import create_database, drop_database
from tests.procs import REALTIME, Server, free_port

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = Settings()
NAMES = list(ENV_NAMES)
#: Variables in .env.example that are not server settings.
EXTRA_ENV = {"REALTIME_URL", "REALTIME_API_KEY", "LB_PORT", "POSTGRES_PASSWORD"}
#: Settings docker-compose.yml does not pass through: it scales by instances, one process each.
NOT_IN_COMPOSE = {"WORKERS"}
SECRETS = {"WS_SIGNING_KEYS", "API_KEYS", "DATABASE_URL", "REDIS_URL", "SENTRY_DSN"}
INSTANCES = ("realtime-1", "realtime-2")


def need_tool(name: str) -> str:
    """The path of ``name``; fails under CI (``.ci/run`` installs it), skips locally."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed (CI is set: .ci/run installs it)")
        pytest.skip(f"{name} is not installed")
    return path


def env_example() -> dict[str, str]:
    """``NAME=value`` lines of .env.example (comments and blank lines skipped)."""
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", name), f".env.example: bad line {line!r}"
            assert name not in values, f".env.example: {name} twice"
            values[name] = value
    return values


def readme_settings() -> list[str]:
    """Variables in the rows of README's "Settings" table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", section, flags=re.MULTILINE)


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def fly() -> dict[str, Any]:
    return tomllib.loads((ROOT / "fly.toml").read_text())


def interpolate(value: object) -> str:
    """Compose's ``${VAR:-default}`` with nothing set: the default."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(value))


def seconds(value: object) -> float:
    """``30``, ``"30s"``, ``"1m30s"`` as seconds."""
    if isinstance(value, int | float):
        return float(value)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(value))
    assert parts, f"not a duration: {value!r}"
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[unit] for n, unit in parts)


def routes(tmp_path: Path) -> set[str]:
    """The paths of the real app's route table."""
    from keys import generate_key

    generate_key(tmp_path / "keys")
    app = create_app(Settings(), key_store=KeyStore.from_directory(tmp_path / "keys"))
    return {r.resource.canonical for r in app.router.routes() if r.resource is not None}


# --- every setting documented everywhere ------------------------------------------------------


def test_every_setting_is_in_env_example_readme_and_compose() -> None:
    documented = {
        ".env.example": set(env_example()),
        "README.md Settings table": set(readme_settings()),
        "docker-compose.yml x-realtime.environment": set(compose()["x-realtime"]["environment"]) | NOT_IN_COMPOSE,
    }
    missing = {where: [n for n in NAMES if n not in names] for where, names in documented.items()}
    assert not any(missing.values()), (
        "each Settings field needs a line in .env.example (at its default), a row in README's Settings "
        f"table and a pass-through in docker-compose.yml (NAME: ${{NAME:-}}); missing: {missing}"
    )
    stale = set(env_example()) - set(NAMES) - EXTRA_ENV
    assert not stale, f".env.example lists variables that are not settings: {sorted(stale)}"
    assert {"REALTIME_URL", "REALTIME_API_KEY"} <= set(env_example())


def test_env_example_is_the_defaults() -> None:
    # copying .env.example to .env changes nothing: every value is the code's default
    assert Settings.from_env(env_example()) == SETTINGS


# --- Dockerfile --------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[str]]:
    """Instructions (continuation lines joined) per stage."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def instruction(stage: list[str], name: str) -> list[str]:
    return [line.split(None, 1)[1] for line in stage if line.split(None, 1)[0].upper() == name]


def test_dockerfile_multi_stage_non_root_and_runtime_only() -> None:
    builder, final = dockerfile_stages()
    assert re.fullmatch(r"FROM python:\$\{PYTHON_VERSION\}-slim AS builder", builder[0])
    assert final[0] == "FROM python:${PYTHON_VERSION}-slim"
    assert "ARG PYTHON_VERSION=3.11" in (ROOT / "Dockerfile").read_text()
    assert any("pip wheel" in cmd for cmd in instruction(builder, "RUN"))
    # the final stage installs the builder's wheels and copies no source
    assert not instruction(final, "COPY")
    installs = [cmd for cmd in instruction(final, "RUN") if "pip install" in cmd]
    assert len(installs) == 1 and "from=builder" in installs[0] and "--no-index" in installs[0]
    # production runs on uvloop (EVENT_LOOP=auto picks it): the extra is built and installed
    assert any('pip wheel --wheel-dir /wheels ".[uvloop]"' in cmd for cmd in instruction(builder, "RUN"))
    assert '"realtime-pubsub[uvloop]"' in installs[0]
    (user,) = instruction(final, "USER")
    assert user.split(":")[0] not in ("root", "0")


def test_dockerfile_runtime_contract() -> None:
    final = dockerfile_stages()[-1]
    assert instruction(final, "STOPSIGNAL") == ["SIGTERM"]
    assert instruction(final, "EXPOSE") == [str(SETTINGS.server.port)]
    (cmd,) = instruction(final, "CMD")
    assert orjson.loads(cmd) == ["realtime", "serve"]  # exec form: the server is PID 1 and gets SIGTERM
    assert not instruction(final, "ENTRYPOINT")
    assert "migrate" not in cmd
    (health,) = instruction(final, "HEALTHCHECK")
    assert "/health" in health and "urllib" in health and "curl" not in health
    env = " ".join(instruction(final, "ENV"))
    assert f"PORT={SETTINGS.server.port}" in env and "KEYS_DIR=" in env


def healthcheck_command() -> str:
    (health,) = instruction(dockerfile_stages()[-1], "HEALTHCHECK")
    return health.split(" CMD ", 1)[1]


def run_healthcheck(port: int) -> int:
    env = {**os.environ, "PORT": str(port), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(["sh", "-c", healthcheck_command()], env=env, capture_output=True, timeout=10).returncode


def test_dockerfile_healthcheck_command_against_a_real_server(tmp_path: Path) -> None:
    # the image has `python`; here the venv's python stands in for it
    server = Server(tmp_path, {"SHUTDOWN_GRACE": "0", "DATABASE_URL": "none"})
    try:
        assert run_healthcheck(server.port) == 0
    finally:
        assert server.stop() == 0
    assert run_healthcheck(server.port) != 0


def test_dockerignore_keeps_secrets_out_and_the_packages_in() -> None:
    patterns = [
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for secret in (".env", "keys.d", "*.pem", ".git", ".venv"):
        assert secret in patterns, f".dockerignore must exclude {secret}"
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    for needed in ("pyproject.toml", "README.md", *packages):
        assert needed not in patterns, f".dockerignore excludes {needed}, which `pip wheel .` needs"


# --- fly.toml ----------------------------------------------------------------------------------


def test_fly_toml_agrees_with_the_code(tmp_path: Path) -> None:
    config = fly()
    env = config["env"]
    service = config["http_service"]
    assert int(env["PORT"]) == service["internal_port"] == SETTINGS.server.port
    assert service["force_https"] is True
    assert Settings.from_env(env)  # every [env] value parses and validates
    assert not SECRETS & set(env), "secrets go to `fly secrets set`, never to fly.toml"
    assert config["kill_signal"] == "SIGTERM"
    assert seconds(config["kill_timeout"]) > SETTINGS.server.shutdown_grace
    (check,) = service["checks"]  # routing: only ready machines get new clients
    assert check["path"] in routes(tmp_path) and check["path"] == "/ready"
    alive = config["checks"]["alive"]  # liveness, for `fly checks list`
    assert alive["path"] in routes(tmp_path) and alive["path"] == "/health"
    assert alive["type"] == "http" and alive["port"] == service["internal_port"]
    concurrency = service["concurrency"]
    assert concurrency["type"] == "connections"
    assert 0 < concurrency["soft_limit"] < concurrency["hard_limit"]
    assert (ROOT / config["build"]["dockerfile"]).is_file()
    assert config["metrics"]["port"] == int(env.get("METRICS_PORT", 0) or SETTINGS.server.port)
    assert config["metrics"]["port"] != service["internal_port"], "/metrics has no auth: keep it off the public port"


def test_fly_release_command_is_a_real_subcommand() -> None:
    command = fly()["deploy"]["release_command"]
    assert command == "realtime migrate"
    with pytest.raises(SystemExit) as exc:
        realtime_main([*command.split()[1:], "--help"])
    assert exc.value.code == 0


def test_fly_toml_explains_every_secret() -> None:
    text = (ROOT / "fly.toml").read_text()
    for name in SECRETS:
        assert re.search(rf"^#.*fly secrets set {name}=", text, flags=re.MULTILINE), f"fly.toml: say how to set {name}"
    assert "rediss://" in text  # Upstash on Fly is TLS


# --- docker-compose.yml and the load balancer --------------------------------------------------


def docker_compose(*args: str) -> subprocess.CompletedProcess[str]:
    binary = need_tool("docker-compose")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    command = [binary, "-f", str(ROOT / "docker-compose.yml"), *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_docker_compose_config_is_valid() -> None:
    result = docker_compose("config", "-q")
    assert result.returncode == 0, result.stderr


def test_compose_with_env_example_gives_valid_settings() -> None:
    # `cp .env.example .env`: compose's own interpolation of the example, then our parser
    result = docker_compose("--env-file", str(ROOT / ".env.example"), "config")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    for name in INSTANCES:
        env = {k: str(v) for k, v in services[name]["environment"].items()}
        settings = Settings.from_env(env)
        assert settings.broker.redis_url == "redis://redis:6379/0" and settings.server.port == SETTINGS.server.port


def test_compose_wiring(tmp_path: Path) -> None:
    services = compose()["services"]
    assert services["migrate"]["command"] == ["realtime", "migrate"]
    assert "pgdata" in compose()["volumes"]
    assert any(v.startswith("pgdata:") for v in services["postgres"]["volumes"])
    for name in INSTANCES:
        service = services[name]
        depends = service["depends_on"]
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["keys"]["condition"] == "service_completed_successfully"
        env = {k: interpolate(v) for k, v in service["environment"].items()}
        settings = Settings.from_env(env)
        assert settings.server.port == SETTINGS.server.port
        assert settings.broker.redis_url == "redis://redis:6379/0"
        assert settings.database.url.endswith("@postgres:5432/realtime")
        assert f"keys:{settings.auth.keys_dir}" in service["volumes"]  # one key for both instances
        assert seconds(service["stop_grace_period"]) > SETTINGS.server.shutdown_grace
        assert service.get("stop_signal", "SIGTERM") == "SIGTERM"
        health = " ".join(service["healthcheck"]["test"])
        assert f"127.0.0.1:{settings.server.port}/health" in health
        assert "migrate" not in str(service.get("command", ""))
    assert "/health" in routes(tmp_path)


def test_compose_load_balancer_round_robin_without_stickiness() -> None:
    lb = compose()["services"]["lb"]
    assert lb["image"].startswith("caddy:")
    (mount,) = lb["volumes"]
    source, target = mount.split(":")[:2]
    assert target == "/etc/caddy/Caddyfile"
    caddyfile = (ROOT / source).read_text()
    assert {n: lb["depends_on"][n]["condition"] for n in INSTANCES} == dict.fromkeys(INSTANCES, "service_healthy")
    for name in INSTANCES:
        assert f"{name}:{SETTINGS.server.port}" in caddyfile
    assert re.search(r"^\s*lb_policy round_robin$", caddyfile, flags=re.MULTILINE)
    assert re.search(r"^\s*health_uri /ready$", caddyfile, flags=re.MULTILINE)
    assert "cookie" not in caddyfile and "ip_hash" not in caddyfile and "client_ip_hash" not in caddyfile
    assert lb["ports"] == ["${LB_PORT:-8080}:8080"]


def compose_command(service: str) -> list[str]:
    """A compose service's command as the container runs it (``$$`` is compose's ``$``)."""
    return [part.replace("$$", "$") for part in compose()["services"][service]["command"]]


def test_compose_one_shots_then_servers_without_docker(tmp_path: Path) -> None:
    # compose's keys and migrate commands, run here against the real PostgreSQL, then a server
    url = create_database(migrated=False)
    keys_dir = tmp_path / "signing-keys"  # not "keys": `python -m` would import it as the package
    keys_dir.mkdir()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "KEYS_DIR": str(keys_dir)}
    env |= {"DATABASE_URL": url, "REDIS_URL": "", "WS_SIGNING_KEYS": ""}
    try:
        for _ in range(2):  # the second run finds the key and does nothing
            subprocess.run(compose_command("keys"), env=env, check=True, capture_output=True, timeout=30)
        (pem,) = keys_dir.glob("*.pem")
        # servers never migrate implicitly: with migrations pending they refuse to start
        serve = [*REALTIME, "serve", "--host", "127.0.0.1", "--port", str(free_port())]
        refused = subprocess.run(serve, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert refused.returncode != 0 and "migrat" in refused.stdout + refused.stderr
        subprocess.run(compose_command("migrate"), env=env, check=True, capture_output=True, timeout=60)
        server = Server(tmp_path, {"DATABASE_URL": url, "KEYS_DIR": str(keys_dir), "SHUTDOWN_GRACE": "0"})
        try:
            assert run_healthcheck(server.port) == 0
            with urllib.request.urlopen(server.url + "/.well-known/jwks.json", timeout=5) as resp:  # noqa: S310
                (key,) = orjson.loads(resp.read())["keys"]
            assert pem.stem.endswith(key["kid"])  # the key made by the one-shot `keys` service
        finally:
            assert server.stop() == 0
    finally:
        drop_database(url)


# --- the committed Caddyfile, live, in front of two real servers --------------------------------


def start_caddy(tmp_path: Path, upstreams: list[Server]) -> tuple[subprocess.Popen[bytes], int]:
    binary = need_tool("caddy")
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path / "caddy-config"),
        "XDG_DATA_HOME": str(tmp_path / "caddy-data"),
        "LB_PORT": str(port),
        "REALTIME_UPSTREAMS": " ".join(f"127.0.0.1:{s.port}" for s in upstreams),
    }
    with (tmp_path / "caddy.log").open("wb") as log:
        proc = subprocess.Popen(
            [binary, "run", "--config", str(ROOT / "deploy" / "Caddyfile"), "--adapter", "caddyfile"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return proc, port


async def wait_http_ok(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("load balancer did not start: " + log.read_text())


@pytest.mark.slow
async def test_caddyfile_round_robins_websockets_and_fails_over(
    spawn: type[Server], redis_url: str, channel: str, tmp_path: Path
) -> None:
    (tmp_path / "keys.d").mkdir()
    generate = [*REALTIME, "keys", "generate", "--dir", str(tmp_path / "keys.d")]
    await asyncio.to_thread(subprocess.run, generate, check=True, capture_output=True)
    env = {
        "REDIS_URL": redis_url,
        "REDIS_CHANNEL": channel,
        "SHUTDOWN_GRACE": "5",
        "CLIENT_IP_HEADER": "X-Forwarded-For",
        "DATABASE_URL": "none",  # the realtime core only: no embedded PostgreSQL
    }
    a, b = spawn(env=env), spawn(env=env)
    caddy, port = start_caddy(tmp_path, [a, b])
    redis = aioredis.from_url(redis_url)
    try:
        lb = f"http://127.0.0.1:{port}"
        await wait_http_ok(lb + "/health", caddy, tmp_path / "caddy.log")
        await through_the_balancer(lb, redis, channel, a)
        # A got its SIGTERM above; a second one during its teardown would kill it, so just wait
        assert await asyncio.to_thread(a.proc.wait, 20) == 0
    finally:
        await redis.aclose()
        caddy.send_signal(signal.SIGTERM)
        caddy.wait(timeout=10)


async def through_the_balancer(lb: str, redis: aioredis.Redis, channel: str, a: Server) -> None:
    topic = "channel:update.lb"

    async def publish(text: str) -> None:
        await redis.publish(channel, orjson.dumps({"topic": topic, "message": text}))

    async with aiohttp.ClientSession() as http:
        first, second = await http.ws_connect(lb + "/ws"), await http.ws_connect(lb + "/ws")
        for ws in (first, second):
            assert (await listen(ws, [topic]))["error"] == ""
        await publish("one")
        for ws in (first, second):
            assert (await recv(ws))["data"]["message"] == "one"
        # round robin: the two connections are on different instances, so stopping A sends
        # RECONNECT to exactly one of them
        a.proc.send_signal(signal.SIGTERM)
        got = await asyncio.gather(next_frame(first, 1.5), next_frame(second, 1.5))
        assert sorted(map(str, got)) == sorted([str({"type": "RECONNECT"}), "None"]), got
        moved, stayed = (first, second) if got[0] else (second, first)
        await moved.close()
        # the client reconnects through the same balancer and lands on B (A no longer accepts)
        again = await http.ws_connect(lb + "/ws")
        assert (await listen(again, [topic]))["error"] == ""
        await publish("two")
        for ws in (again, stayed):
            assert (await recv(ws))["data"]["message"] == "two"
            await ws.close()


async def next_frame(ws: aiohttp.ClientWebSocketResponse, timeout: float) -> dict[str, Any] | None:
    """The next JSON frame, or None if nothing arrives within ``timeout`` seconds."""
    try:
        return await recv(ws, timeout)
    except TimeoutError:
        return None


async def kid_of(http: aiohttp.ClientSession, url: str) -> str:
    """The signing key id an instance publishes (each test instance has its own key)."""
    async with http.get(url + "/.well-known/jwks.json") as resp:
        assert resp.status == 200
        (key,) = (await resp.json())["keys"]
        kid: str = key["kid"]
        return kid


@pytest.mark.slow
async def test_caddyfile_routes_by_readiness_and_hides_metrics(
    spawn: type[Server], redis_url: str, channel: str, tmp_path: Path
) -> None:
    # A is subscribed to Redis; B's Redis is down, so B is live (/health) but not ready (/ready)
    common = {"REDIS_CHANNEL": channel, "SHUTDOWN_GRACE": "0", "CLIENT_IP_HEADER": "X-Forwarded-For"}
    private = PrivateRedis(tmp_path)
    for name in ("a", "b", "r"):
        (tmp_path / name).mkdir()
    a = spawn(tmp_path / "a", {**common, "REDIS_URL": redis_url})
    b = spawn(tmp_path / "b", {**common, "REDIS_URL": private.url})
    caddy, port = start_caddy(tmp_path, [a, b])
    lb = f"http://127.0.0.1:{port}"
    redis = aioredis.from_url(redis_url)
    try:
        async with aiohttp.ClientSession() as http:
            kid_a, kid_b = await kid_of(http, a.url), await kid_of(http, b.url)
            assert kid_a != kid_b
            async with http.get(b.url + "/health") as live, http.get(b.url + "/ready") as ready:
                assert (live.status, ready.status) == (200, 503)
            await wait_http_ok(lb + "/health", caddy, tmp_path / "caddy.log")
            # round robin over the ready instance only: ten answers in a row from A
            deadline = time.monotonic() + 15
            streak = 0
            while streak < 10:
                assert time.monotonic() < deadline, "the load balancer kept routing to an unready instance"
                streak = streak + 1 if await kid_of(http, lb) == kid_a else 0
            # so every WebSocket lands where publications are delivered
            clients = [await http.ws_connect(lb + "/ws") for _ in range(4)]
            for ws in clients:
                assert (await listen(ws, ["channel:update.ready"]))["error"] == ""
            await redis.publish(channel, orjson.dumps({"topic": "channel:update.ready", "message": "hi"}))
            for ws in clients:
                assert (await recv(ws))["data"]["message"] == "hi"
                await ws.close()
            # /metrics is served by the instance, never through the public load balancer
            async with http.get(a.url + "/metrics") as resp:
                assert resp.status == 200 and b"realtime_connections" in await resp.read()
            for path in ("/metrics", "/metrics/", "/metrics?format=text", "/METRICS", "/%6detrics", "//metrics"):
                async with http.get(URL(lb + path, encoded=True)) as resp:
                    body = await resp.read()
                    assert resp.status == 404 and b"realtime_" not in body, (path, resp.status)
            # once B subscribes it is ready, and the balancer sends it clients again
            private.start()
            deadline = time.monotonic() + 20
            while await kid_of(http, lb) != kid_b:
                assert time.monotonic() < deadline, "a ready instance got no traffic"
                await asyncio.sleep(0.1)
    finally:
        await redis.aclose()
        private.stop()
        caddy.send_signal(signal.SIGTERM)
        caddy.wait(timeout=10)


# --- developer habits --------------------------------------------------------------------------


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][a-z0-9-]*):", text, flags=re.MULTILINE))


def test_makefile_targets_are_documented_in_the_readme() -> None:
    targets = makefile_targets()
    assert {"install", "run", "test", "lint", "format"} <= targets
    readme = (ROOT / "README.md").read_text()
    undocumented = sorted(t for t in targets if f"make {t}" not in readme)
    assert not undocumented, f"README must mention each make target: {undocumented}"


def test_pre_commit_runs_ruff_and_mypy_like_make_lint() -> None:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    repos = {repo["repo"]: repo for repo in config["repos"]}
    ruff = repos["https://github.com/astral-sh/ruff-pre-commit"]
    assert [hook["id"] for hook in ruff["hooks"]] == ["ruff-check", "ruff-format"]
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    (pin,) = [d for d in dev if d.startswith("ruff")]
    minor = re.search(r">=(\d+\.\d+)", pin)
    assert minor and ruff["rev"].startswith(f"v{minor.group(1)}."), f"ruff-pre-commit rev {ruff['rev']} vs {pin}"
    (mypy,) = repos["local"]["hooks"]
    assert mypy["id"] == "mypy" and mypy["entry"] == ".venv/bin/mypy" and mypy["pass_filenames"] is False
