"""The command line in Redis Cluster mode (``REDIS_CLUSTER_NODES``): ``realtime publish``,
``realtime history`` and a revocation (``realtime apikeys revoke``), each run as a
subprocess against a real 3-master/3-replica cluster, heard by an instance on it."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import orjson

from db.apikeys import create_api_key
from db.users import create_user
from tests.conftest import AppFactory, auth, listen, recv, ws_token
from tests.integration.test_cluster import HISTORY_TOPIC, broker_of, instances
from tests.pg import conn, database_url, migrated_url  # noqa: F401 - fixtures
from tests.procs import REALTIME
from tests.redis_cluster import LocalCluster


async def run_cli(*argv: str, cluster: LocalCluster, **env: str) -> tuple[int, str, str]:
    """``python -m realtime ARGV`` with ``REDIS_CLUSTER_NODES`` (one seed) and no ``REDIS_URL``."""
    proc = await asyncio.create_subprocess_exec(
        *REALTIME,
        *argv,
        env={**os.environ, "REDIS_URL": "", "REDIS_CLUSTER_NODES": cluster.seeds[-1], **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_publish_and_history_from_the_command_line(make_client: AppFactory, redis_cluster: LocalCluster) -> None:
    (app,) = await instances(make_client, redis_cluster, 1)
    plain = "channel:update.cli"
    async with app.ws_connect("/ws") as ws:
        assert (await listen(ws, [HISTORY_TOPIC, plain], await ws_token(app)))["error"] == ""
        code, out, err = await run_cli("publish", HISTORY_TOPIC, "kept", cluster=redis_cluster)
        assert code == 0, err
        assert out.startswith(f"published to {HISTORY_TOPIC} (offset 1, epoch ")
        frame = await recv(ws)
        assert (frame["type"], frame["data"]["message"], frame["data"]["offset"]) == ("MESSAGE", "kept", 1)
        code, out, err = await run_cli("publish", "--json", plain, '{"n": 1}', cluster=redis_cluster)
        assert (code, out) == (0, f"published to {plain}\n"), err
        assert (await recv(ws))["data"] == {"topic": plain, "message": '{"n":1}'}
    code, out, err = await run_cli("history", HISTORY_TOPIC, cluster=redis_cluster)
    assert code == 0, err
    assert [orjson.loads(line) for line in out.splitlines()] == [{"offset": 1, "message": "kept"}]
    assert err.startswith(f"topic={HISTORY_TOPIC} offset=1 epoch=")
    assert broker_of(app).stats.received == 2


async def test_a_revocation_from_the_command_line_reaches_the_instances(
    make_client: AppFactory,
    redis_cluster: LocalCluster,
    conn: Any,  # noqa: F811 - the fixture
    database_url: str,  # noqa: F811 - the fixture
) -> None:
    user = await create_user(conn, name="Cleo", scopes=["user:read:remote-control"])
    key, secret = await create_api_key(conn, user_id=user.id)
    nodes = ",".join(redis_cluster.seeds[:2])
    app = await make_client(redis_cluster_nodes=nodes, redis_probe_interval=0, database_url=database_url)
    topic = f"remote-control:command.{user.id}"
    resp = await app.post("/auth/ws", headers=auth(secret))
    assert resp.status == 200, await resp.text()
    token = (await resp.json())["token"]
    async with app.ws_connect("/ws") as ws:
        assert (await listen(ws, [topic], token))["error"] == ""
        code, _, err = await run_cli("apikeys", "revoke", str(key.id), cluster=redis_cluster, DATABASE_URL=database_url)
        assert code == 0, err
        assert "every running server" in err
        assert await recv(ws) == {"type": "AUTH_REVOKED", "data": {"topics": [topic]}}


async def test_presence_from_the_command_line(make_client: AppFactory, redis_cluster: LocalCluster) -> None:
    (app,) = await instances(make_client, redis_cluster, 1)
    topic = "remote-control:command.7"  # the default policy keeps presence on it
    async with app.ws_connect("/ws") as ws:
        await ws.send_json(
            {
                "type": "LISTEN",
                "nonce": "l",
                "data": {"topics": [topic], "auth_token": await ws_token(app), "client_info": {"device": "tv"}},
            }
        )
        assert (await recv(ws))["error"] == ""
        for _ in range(100):  # the entry is written with the next batch
            code, out, err = await run_cli("presence", topic, cluster=redis_cluster)
            assert code == 0, err
            body = orjson.loads(out)
            if body["connections"]:
                break
            await asyncio.sleep(0.05)
        assert (body["connections"], body["users"]) == (1, 1)
        assert body["clients"][0]["info"] == {"device": "tv"} and body["clients"][0]["user"] == "7"
        code, out, err = await run_cli("presence", "--stats", topic, cluster=redis_cluster)
        assert (code, orjson.loads(out)) == (0, {"topic": topic, "connections": 1, "users": 1}), err
