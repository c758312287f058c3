"""The JavaScript client's presence (``clientInfo``, ``presence()``, ``join``/``leave``) in Node
against the real app in process: the bundle the server serves
(``http_api/static/realtime-client.js``) with the ``ws`` package of ``clients/js`` (installed
by ``make test-js``). Cheaper than a browser; tests/integration/test_js_client.py covers the
browser."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import orjson
import pytest

from tests.conftest import USER_KEY, AppFactory
from tests.integration.test_client_presence import ROOM

ROOT = Path(__file__).resolve().parents[2]
JS = ROOT / "clients/js"
BUNDLE = ROOT / "http_api/static/realtime-client.js"

SCRIPT = """
import WebSocket from "ws";
const [bundle, url, key, ROOM] = process.argv.slice(1);
const { RealtimeClient, PresenceError } = await import(bundle);
const until = async (pred) => {
  for (let i = 0; i < 500 && !pred(); i += 1) await new Promise((resolve) => setTimeout(resolve, 10));
};
const tokenProvider = async () => {
  const resp = await fetch(url + "/auth/ws", { method: "POST", headers: { Authorization: `Api-Key ${key}` } });
  const body = await resp.json();
  return { token: body.token, expiresIn: body.expires_in };
};
const out = { joins: [], leaves: [] };
const ann = new RealtimeClient({ url, WebSocket, tokenProvider: null, clientInfo: { nick: "ann" } });
ann.on("join", (e) => out.joins.push(e));
ann.on("leave", (e) => out.leaves.push(e));
await ann.listen([ROOM]);
const bob = new RealtimeClient({ url, WebSocket, tokenProvider, clientInfo: { nick: "bob" } });
await bob.listen([ROOM]);
await until(() => out.joins.length === 2);
out.presence = await bob.presence(ROOM);
bob.close();
await until(() => out.leaves.length === 1);
out.after = await ann.presence(ROOM);
out.refused = await ann.presence("channel:update.a").then(
  () => null,
  (e) => ({ code: e.code, typed: e instanceof PresenceError }),
);
ann.close();
console.log(JSON.stringify(out));
"""


async def test_the_js_client_in_node_sees_presence(make_client: AppFactory, chat_policy: str) -> None:
    node = shutil.which("node")
    if node is None or not (JS / "node_modules/ws").is_dir():
        pytest.skip("needs node and clients/js/node_modules (make test-js)")
    server = await make_client(topics_file=chat_policy)
    url = str(server.make_url("")).rstrip("/")
    proc = await asyncio.create_subprocess_exec(
        node, "--input-type=module", "-e", SCRIPT, BUNDLE.as_uri(), url, USER_KEY, ROOM,
        cwd=JS, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    result = orjson.loads(out)
    ann, bob = result["joins"]  # ann's own JOIN, then bob's
    assert (ann["topic"], ann["user"], ann["info"]) == (ROOM, None, {"nick": "ann"})
    assert (bob["topic"], bob["user"], bob["info"]) == (ROOM, "7", {"nick": "bob"})
    assert result["leaves"] == [bob]
    entries = sorted(({k: v for k, v in e.items() if k != "topic"} for e in (ann, bob)), key=lambda e: e["client"])
    assert result["presence"] == {"connections": 2, "users": 1, "clients": entries}
    assert result["after"] == {"connections": 1, "users": 0, "clients": [e for e in entries if e["user"] is None]}
    assert result["refused"] == {"code": "ERR_BADTOPIC", "typed": True}
