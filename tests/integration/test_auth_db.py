"""Database users and API keys: the Api-Key path, scopes, expiry, revocation, and the CLI."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import jwt
import pytest

from db.apikeys import create_api_key, list_api_keys, parse_duration, revoke_api_key
from db.errors import Conflict, NotFound
from db.pool import connection
from db.users import ADMIN, create_user, delete_user, get_user, list_users, provision_external
from service.cli import main
from tests.conftest import USER_KEY, AppFactory, auth
from tests.pg import conn, create_database, database_url, drop_database, migrated_url

RC = "user:read:remote-control"
PRED = "channel:read:predictions"


async def token_claims(client: Any, key: str, scope: str | None = None) -> tuple[int, dict[str, Any]]:
    params = {"scope": scope} if scope is not None else {}
    resp = await client.post("/auth/ws", headers=auth(key), params=params)
    body = await resp.json()
    if resp.status != 200:
        return resp.status, body
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    return 200, claims


async def test_db_key_issues_token_for_the_user_uuid(make_client: AppFactory, database_url: str, conn: Any) -> None:
    user = await create_user(conn, name="Ana", email="ana@example.com", scopes=[RC, PRED])
    _, secret = await create_api_key(conn, user_id=user.id)
    client = await make_client(database_url=database_url)
    status, claims = await token_claims(client, secret)
    assert status == 200 and claims["sub"] == user.id
    assert claims["scope"] == f"{PRED} {RC}"
    status, claims = await token_claims(client, secret, scope=RC)
    assert status == 200 and claims["scope"] == RC
    (key,) = await list_api_keys(conn, user.id)
    assert key.last_used_at is not None


async def test_scopes_are_user_grant_intersected_with_key(
    make_client: AppFactory, database_url: str, conn: Any
) -> None:
    user = await create_user(conn, name="Bo", scopes=[RC])
    _, secret = await create_api_key(conn, user_id=user.id, scopes=[RC, PRED, "realtime:publish"])
    client = await make_client(database_url=database_url)
    status, claims = await token_claims(client, secret)
    assert claims["scope"] == RC
    status, body = await token_claims(client, secret, scope=PRED)
    assert status == 403 and body["missing_scopes"] == [PRED]
    resp = await client.post("/publish", json={"topic": "dream:update.a", "message": 1}, headers=auth(secret))
    assert resp.status == 403
    await conn.execute("UPDATE users SET scopes = $1 WHERE id = $2::uuid", [RC, "realtime:publish"], user.id)
    resp = await client.post("/publish", json={"topic": "dream:update.a", "message": 1}, headers=auth(secret))
    assert resp.status == 202


async def test_expired_revoked_deleted_and_unknown_keys_are_refused(
    make_client: AppFactory, database_url: str, conn: Any
) -> None:
    user = await create_user(conn, name="Cy", scopes=[RC])
    expired, expired_secret = await create_api_key(conn, user_id=user.id, expires_in=timedelta(hours=1))
    revoked, revoked_secret = await create_api_key(conn, user_id=user.id)
    _, live_secret = await create_api_key(conn, user_id=user.id)
    client = await make_client(database_url=database_url)
    assert (await token_claims(client, expired_secret))[0] == 200
    await conn.execute("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1::uuid", expired.id)
    await revoke_api_key(conn, revoked.id)
    for secret in (expired_secret, revoked_secret, live_secret[:-1] + "x", "rtk_unknown", "short"):
        status, body = await token_claims(client, secret)
        assert status == 401 and body["error"] == "unauthorized", secret
    assert (await token_claims(client, live_secret))[0] == 200
    await delete_user(conn, user.id)
    assert (await token_claims(client, live_secret))[0] == 401


async def test_env_keys_still_work_with_a_database(make_client: AppFactory, database_url: str) -> None:
    client = await make_client(database_url=database_url)
    status, claims = await token_claims(client, USER_KEY)
    assert status == 200 and claims["sub"] == "7"


async def test_users_repository(conn: Any) -> None:
    user = await create_user(conn, name="Di", email="Di@Example.com", role=ADMIN, scopes=[RC])
    with pytest.raises(Conflict):
        await create_user(conn, name="Other", email="di@example.com", scopes=[])
    with pytest.raises(ValueError, match="role"):
        await create_user(conn, name="X", role="root", scopes=[])
    assert (await get_user(conn, user.id)).role == ADMIN
    with pytest.raises(NotFound):
        await get_user(conn, "not-a-uuid")
    ext = await provision_external(
        conn, issuer="https://idp", subject="s1", name="E", email="di@example.com", scopes=[RC]
    )
    again = await provision_external(conn, issuer="https://idp", subject="s1", name="E2", email=None, scopes=[])
    assert ext.id == again.id and ext.email is None and ext.role == "user-group" and ext.scopes == {RC}
    await delete_user(conn, user.id)
    assert [u.id for u in await list_users(conn)] == [ext.id]
    again_di = await create_user(conn, name="Di again", email="di@example.com", scopes=[])  # the email is free again
    await delete_user(conn, again_di.id)
    assert len(await list_users(conn, include_deleted=True)) == 3
    with pytest.raises(NotFound):
        await create_api_key(conn, user_id=user.id)


def test_parse_duration() -> None:
    assert parse_duration("30d") == timedelta(days=30)
    assert parse_duration("90") == timedelta(seconds=90)
    assert parse_duration("2w") == timedelta(weeks=2)
    for bad in ("", "0", "-1d", "3y", "d"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


async def test_cli_users_and_apikeys(
    make_client: AppFactory,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.delenv("DEFAULT_USER_SCOPES", raising=False)

    async def run(*argv: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(main, list(argv))
        captured = capsys.readouterr()
        lines = [line for line in captured.out.splitlines() if "[info" not in line]  # app logs share stdout
        return code, "\n".join(lines).strip(), captured.err

    code, user_id, _ = await run(
        "users", "create", "--name", "Eve", "--email", "eve@example.com", "--role", "creator-group"
    )
    assert code == 0 and len(user_id) == 36
    code, out, _ = await run("users", "list")
    assert out == f"{user_id}\tcreator-group\tEve\teve@example.com\t{RC}"
    assert (await run("users", "create", "--name", "Dup", "--email", "EVE@example.com"))[0] == 2
    assert (await run("users", "create", "--name", "Bad", "--scope", "NOT A SCOPE"))[0] == 2
    code, secret, err = await run("apikeys", "create", "--user", user_id, "--expires-in", "30d")
    assert code == 0 and secret.startswith("rtk_") and secret not in err and "shown only once" in err
    key_id = err.split("id: ")[1].split()[0]
    client = await make_client(database_url=database_url)
    assert (await token_claims(client, secret))[0] == 200
    assert (await run("apikeys", "revoke", key_id))[:2] == (0, f"revoked {key_id}")
    assert (await token_claims(client, secret))[0] == 401
    assert (await run("apikeys", "revoke", "00000000-0000-0000-0000-000000000000"))[0] == 2
    assert (await run("apikeys", "create", "--user", user_id, "--expires-in", "soon"))[0] == 2
    assert (await run("apikeys", "create", "--user", "nobody"))[0] == 2
    _, live, _ = await run("apikeys", "create", "--user", user_id)
    assert (await token_claims(client, live))[0] == 200
    assert (await run("users", "delete", user_id))[:2] == (0, f"deleted {user_id}")
    assert (await token_claims(client, live))[0] == 401
    assert (await run("users", "list"))[1] == ""
    assert (await run("users", "delete", user_id))[0] == 2


async def test_database_outage_is_503_and_env_keys_keep_working(make_client: AppFactory) -> None:
    url = await asyncio.to_thread(create_database, migrated=True)
    try:
        async with connection(url) as c:
            user = await create_user(c, name="Ola", scopes=[RC])
            _, secret = await create_api_key(c, user_id=user.id)
        client = await make_client(database_url=url)
        assert (await token_claims(client, secret))[0] == 200
    finally:
        await asyncio.to_thread(drop_database, url)
    status, body = await token_claims(client, secret)
    assert status == 503 and body["error"] == "unavailable"
    assert (await token_claims(client, USER_KEY))[0] == 200
    resp = await client.get("/api/v1/dream", headers=auth(USER_KEY))
    envelope = await resp.json()
    assert resp.status == 503 and envelope["errorCode"] == "SERVICE_UNAVAILABLE" and envelope["success"] is False
    resp = await client.post("/auth/login", json={"email": "a@example.com", "password": "whatever1"})
    assert resp.status == 503
