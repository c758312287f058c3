"""Hostile clients against a real server process: token-check floods, revocation floods,
and the user slot an UNLISTEN frees (issue 14)."""

from __future__ import annotations

import base64
import os

import aiohttp
import jwt
import orjson
from aiohttp import WSMsgType

from tests.conftest import API_KEYS_JSON, OTHER_KEY, auth, listen, recv, server_token
from tests.procs import Server

TOPIC = "remote-control:command.7"
ADMIN_KEY = "admin-key-0123456789abcdef"
EXTRA_USERS = [(f"u{i}", f"user-{i}-key-0123456789abcdef") for i in range(3)]
KEYS_JSON = orjson.dumps(
    [
        *orjson.loads(API_KEYS_JSON),
        {"userId": "ops", "apiKey": ADMIN_KEY, "scopes": ["realtime:revoke"]},
        *({"userId": user, "apiKey": key, "scopes": []} for user, key in EXTRA_USERS),
    ]
).decode()


def forged(real: str) -> str:
    """``real`` with another (random) ES256 signature: a real ``kid``, so it costs a full check."""
    head, body, _ = real.split(".")
    return f"{head}.{body}.{base64.urlsafe_b64encode(os.urandom(64)).rstrip(b'=').decode()}"


async def errors(ws: aiohttp.ClientWebSocketResponse, tokens: list[str]) -> list[str]:
    return [(await listen(ws, [TOPIC], t, nonce=str(i)))["error"] for i, t in enumerate(tokens)]


async def test_a_failed_token_is_not_checked_twice_and_checks_have_a_budget(
    spawn: type[Server], http: aiohttp.ClientSession
) -> None:
    env = {
        "API_KEYS": API_KEYS_JSON,
        "TOKEN_CHECK_BURST_PER_CONNECTION": "3",
        "TOKEN_CHECK_RATE_PER_CONNECTION": "0.01",
    }
    server = spawn(env={**env, "MAX_BAD_TOKENS_PER_CONNECTION": "0"})
    real = await server_token(http, server)
    bad = forged(real)
    async with http.ws_connect(server.url + "/ws") as ws:
        # the same forged token 12 times: one check, then refused from memory (no budget spent)
        assert await errors(ws, [bad] * 12) == ["ERR_BADAUTH"] * 12
        # two more checks left in this connection's budget (burst 3), then ERR_RATELIMIT unchecked
        replies = [await listen(ws, [TOPIC], forged(real)) for _ in range(3)]
        assert [r["error"] for r in replies] == ["ERR_BADAUTH", "ERR_BADAUTH", "ERR_RATELIMIT"]
        assert "token checks" in replies[2]["error_description"]
    async with http.ws_connect(server.url + "/ws") as ws:  # a new connection, a new budget
        assert await errors(ws, [real]) == [""]
        assert await errors(ws, [real] * 5) == [""] * 5  # a verified token costs no check


async def test_checks_have_a_budget_per_address(spawn: type[Server], http: aiohttp.ClientSession) -> None:
    server = spawn(env={"API_KEYS": API_KEYS_JSON, "TOKEN_CHECK_BURST_PER_IP": "4", "TOKEN_CHECK_RATE_PER_IP": "0.01"})
    real = await server_token(http, server)
    results = []
    for _ in range(3):
        async with http.ws_connect(server.url + "/ws") as ws:
            results += await errors(ws, [forged(real), forged(real)])
    assert results == ["ERR_BADAUTH"] * 4 + ["ERR_RATELIMIT"] * 2


async def test_a_connection_that_keeps_failing_is_closed_with_4003(
    spawn: type[Server], http: aiohttp.ClientSession
) -> None:
    server = spawn(env={"API_KEYS": API_KEYS_JSON, "MAX_BAD_TOKENS_PER_CONNECTION": "3"})
    real = await server_token(http, server)
    async with http.ws_connect(server.url + "/ws") as ws:
        assert await errors(ws, [forged(real), real, forged(real), forged(real)]) == [
            "ERR_BADAUTH",
            "",
            "ERR_BADAUTH",
            "ERR_BADAUTH",
        ]
        assert (await listen(ws, [TOPIC], forged(real)))["error"] == "ERR_BADAUTH"  # the third in a row
        msg = await ws.receive(timeout=3)  # the reply came first, then the close
        assert msg.type is WSMsgType.CLOSE and msg.data == 4003 and msg.extra == "too many invalid tokens"
    lines = [orjson.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]
    assert [line["event"] for line in lines].count("ws_closed_for_bad_tokens") == 1


async def test_unlisten_of_the_last_user_topic_frees_the_user_slot(
    spawn: type[Server], http: aiohttp.ClientSession
) -> None:
    server = spawn(env={"API_KEYS": API_KEYS_JSON, "MAX_CONNECTIONS_PER_USER": "1"})
    real = await server_token(http, server)
    async with http.ws_connect(server.url + "/ws") as first, http.ws_connect(server.url + "/ws") as second:
        assert (await listen(first, [TOPIC, "dream:update.a"], real))["error"] == ""
        assert (await listen(second, [TOPIC], real))["error"] == "ERR_RATELIMIT"
        await first.send_str(orjson.dumps({"type": "UNLISTEN", "nonce": "u", "data": {"topics": [TOPIC]}}).decode())
        assert await recv(first) == {"type": "RESPONSE", "nonce": "u", "error": ""}
        assert (await listen(second, [TOPIC], real))["error"] == ""  # the slot went with the topic
        assert (await listen(first, [TOPIC], real))["error"] == "ERR_RATELIMIT"


async def revoke(http: aiohttp.ClientSession, server: Server, key: str, **body: str) -> int:
    async with http.post(server.url + "/auth/ws/revoke", json=body, headers=auth(key)) as resp:
        return resp.status


async def test_revocations_cannot_be_flushed_and_a_full_table_says_so(
    spawn: type[Server], http: aiohttp.ClientSession
) -> None:
    """An administrator's revocation outlives any number of users' revocations: users may hold
    MAX_REVOCATIONS_PER_USER each and fill the table up to its reserve, then are refused."""
    server = spawn(env={"API_KEYS": KEYS_JSON, "MAX_REVOCATIONS": "10", "MAX_REVOCATIONS_PER_USER": "3"})
    victim = await server_token(http, server)
    jti = jwt.decode(victim, options={"verify_signature": False})["jti"]
    assert await revoke(http, server, ADMIN_KEY, jti=jti) == 202
    assert [await revoke(http, server, OTHER_KEY, jti=f"x{i}") for i in range(4)] == [202, 202, 202, 429]
    statuses = [await revoke(http, server, key, jti=f"y{i}") for _, key in EXTRA_USERS for i in range(2)]
    assert statuses == [202] * 5 + [503]  # 1 + 3 + 5 = 9: the last tenth is for administrators
    async with http.post(server.url + "/auth/ws/revoke", json={"jti": "z"}, headers=auth(EXTRA_USERS[2][1])) as resp:
        assert resp.status == 503 and "revocation table is full" in (await resp.json())["message"]
    assert await revoke(http, server, ADMIN_KEY, jti="admin-2") == 202  # the reserve
    async with http.ws_connect(server.url + "/ws") as ws:
        reply = await listen(ws, [TOPIC], victim)
        assert reply["error"] == "ERR_BADAUTH" and "revoked" in reply["error_description"]
    lines = [orjson.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]
    assert any(line["event"] == "revocation_refused" and "full" in line["reason"] for line in lines)
