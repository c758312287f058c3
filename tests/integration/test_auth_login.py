"""Built-in login with server-side sessions, rate limits, CORS and security headers."""

from __future__ import annotations

import asyncio
from typing import Any

import jwt
import pytest

from db.errors import NotFound
from db.sessions import set_password
from db.users import create_user, delete_user, normalize_email
from service.cli import main
from tests.conftest import AppFactory
from tests.pg import conn, database_url, migrated_url

PASSWORD = "correct horse battery staple"


@pytest.fixture
async def user(conn: Any) -> Any:
    user = await create_user(conn, name="Lu", email="lu@example.com", scopes=["user:read:remote-control"])
    await set_password(conn, user.id, PASSWORD)
    return user


async def login(client: Any, email: str = "LU@example.com", password: str = PASSWORD) -> Any:
    return await client.post("/auth/login", json={"email": email, "password": password})


async def test_login_session_cookie_and_logout(make_client: AppFactory, database_url: str, user: Any) -> None:
    client = await make_client(database_url=database_url, session_domain="example.com")
    resp = await login(client)
    assert resp.status == 200
    body = await resp.json()
    assert body["user"] == {"uuid": user.id, "name": "Lu", "email": "lu@example.com", "role": "user-group"}
    morsel = resp.cookies["realtime_session"]
    assert morsel["httponly"] and morsel["secure"] and morsel["samesite"] == "Lax"
    assert morsel["domain"] == "example.com" and int(morsel["max-age"]) == 1209600
    cookie = {"Cookie": f"realtime_session={morsel.value}"}
    resp = await client.post("/auth/ws", headers=cookie)
    assert resp.status == 200
    claims = jwt.decode((await resp.json())["token"], options={"verify_signature": False})
    assert claims["sub"] == user.id and claims["scope"] == "user:read:remote-control"
    resp = await client.get("/api/v1/dream/my-dreams", headers=cookie)
    assert resp.status == 200
    resp = await client.post("/auth/logout", headers=cookie)
    assert resp.status == 200 and resp.cookies["realtime_session"].value == ""
    assert (await client.post("/auth/ws", headers=cookie)).status == 401
    assert (await client.post("/auth/logout")).status == 200


async def test_development_cookie_is_not_secure(make_client: AppFactory, database_url: str, user: Any) -> None:
    client = await make_client(database_url=database_url, environment="development")
    resp = await login(client)
    assert resp.status == 200 and not resp.cookies["realtime_session"]["secure"]
    assert "Strict-Transport-Security" not in resp.headers


async def test_wrong_email_and_wrong_password_look_the_same(
    make_client: AppFactory, database_url: str, user: Any, conn: Any
) -> None:
    client = await make_client(database_url=database_url)
    bad = [await login(client, password="wrong password"), await login(client, email="nobody@example.com")]
    assert [r.status for r in bad] == [401, 401]
    assert (await bad[0].json()) == (await bad[1].json())
    assert "realtime_session" not in bad[0].cookies
    resp = await client.post("/auth/login", json={"email": "lu@example.com"})
    assert resp.status == 400 and "password" in (await resp.json())["fields"]
    await delete_user(conn, user.id)
    assert (await login(client)).status == 401


async def test_password_change_ends_sessions(make_client: AppFactory, database_url: str, user: Any, conn: Any) -> None:
    client = await make_client(database_url=database_url)
    cookie = {"Cookie": f"realtime_session={(await login(client)).cookies['realtime_session'].value}"}
    assert (await client.post("/auth/ws", headers=cookie)).status == 200
    await set_password(conn, user.id, "another good password")
    assert (await client.post("/auth/ws", headers=cookie)).status == 401
    with pytest.raises(ValueError, match="at least"):
        await set_password(conn, user.id, "short")
    with pytest.raises(NotFound):
        await set_password(conn, "00000000-0000-0000-0000-000000000000", PASSWORD)


async def test_rate_limited_per_account_and_per_ip(make_client: AppFactory, database_url: str, user: Any) -> None:
    client = await make_client(database_url=database_url, login_attempts_per_account=3, login_attempts_per_ip=5)
    assert [(await login(client, password="nope")).status for _ in range(3)] == [401, 401, 401]
    resp = await login(client)  # even the right password: the account is locked for now
    assert resp.status == 429 and int(resp.headers["Retry-After"]) > 0
    assert (await resp.json())["error"] == "too_many_requests"
    assert (await login(client, email="other@example.com")).status == 401  # 5th attempt from this IP
    assert (await login(client, email="third@example.com")).status == 429  # over the per-IP limit


async def test_successful_logins_do_not_count(make_client: AppFactory, database_url: str, user: Any) -> None:
    client = await make_client(database_url=database_url, login_attempts_per_account=3, login_attempts_per_ip=3)
    assert [(await login(client)).status for _ in range(6)] == [200] * 6  # many devices, all fine
    assert [(await login(client, password="nope")).status for _ in range(3)] == [401, 401, 401]
    assert (await login(client)).status == 429  # three failures used the budget


async def test_a_look_alike_email_is_the_same_account_for_the_limit(
    make_client: AppFactory, database_url: str, conn: Any
) -> None:
    # PostgreSQL's lower() makes U+0130 (capital I with a dot) "i", Python's makes it "i" +
    # U+0307: with one on each side, this address logged in as alice past her limit
    alice = await create_user(conn, name="Alice", email="Alice@Example.com", scopes=[])
    await set_password(conn, alice.id, PASSWORD)
    assert alice.email == "alice@example.com"  # stored normalized
    client = await make_client(database_url=database_url, login_attempts_per_account=2, login_attempts_per_ip=50)
    assert [(await login(client, "alice@example.com", "nope")).status for _ in range(2)] == [401, 401]
    for variant in ("alice@example.com", "ALICE@EXAMPLE.COM", "al\u0130ce@example.com", "\uff41lice@example.com"):
        assert (await login(client, variant)).status in (401, 429), variant  # never 200: locked or not alice
    assert normalize_email("\uff21LICE@example.com") == "alice@example.com"  # fullwidth: NFKC
    assert (await login(client, "\uff41lice@example.com")).status == 429  # the same account, so the same limit


def test_normalize_email_is_idempotent() -> None:
    for raw in ("Alice@Example.com", "al\u0130ce@x", "STRASSE@x", "stra\u00dfe@x", "\ufb01@x", "\u212b@x"):
        once = normalize_email(raw)
        assert normalize_email(once) == once and once == once.casefold()
    assert normalize_email("stra\u00dfe@x") == normalize_email("STRASSE@x")


async def test_a_limited_address_does_not_spend_the_account(
    make_client: AppFactory, database_url: str, user: Any
) -> None:
    client = await make_client(
        database_url=database_url,
        login_attempts_per_account=3,
        login_attempts_per_ip=2,
        client_ip_header="X-Forwarded-For",
    )

    async def attempt(ip: str, right: bool = False) -> int:
        body = {"email": "lu@example.com", "password": PASSWORD if right else "nope"}
        return (await client.post("/auth/login", json=body, headers={"X-Forwarded-For": ip})).status

    assert [await attempt("203.0.113.1") for _ in range(2)] == [401, 401]
    assert [await attempt("203.0.113.1") for _ in range(20)] == [429] * 20  # refused by the address limit
    assert await attempt("198.51.100.7", right=True) == 200  # the account kept its last attempt


async def test_rows_stored_before_normalization_still_log_in(
    make_client: AppFactory, database_url: str, user: Any, conn: Any
) -> None:
    await conn.execute("UPDATE users SET email = 'Lu@Example.COM' WHERE id = $1::uuid", user.id)
    client = await make_client(database_url=database_url)
    assert (await login(client, "lu@example.com")).status == 200
    # case folding is not lower(): a stored 'ß' is found by the spelling typed
    await conn.execute("UPDATE users SET email = 'Straße@Example.com' WHERE id = $1::uuid", user.id)
    assert (await login(client, "straße@example.com")).status == 200


async def test_set_password_cli(
    database_url: str, user: Any, conn: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    answers = iter(["a new password", "a new password", "one", "two"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    assert await asyncio.to_thread(main, ["users", "set-password", user.id]) == 0
    assert capsys.readouterr().out.strip().endswith("password set")
    assert await asyncio.to_thread(main, ["users", "set-password", user.id]) == 2
    assert "differ" in capsys.readouterr().err
    row = await conn.fetchrow("SELECT password_hash FROM users WHERE id = $1::uuid", user.id)
    assert row["password_hash"].startswith("$argon2id$")


async def test_cors_and_security_headers(make_client: AppFactory, database_url: str) -> None:
    client = await make_client(database_url=database_url, cors_origins="https://app.example https://b.example")
    for path in ("/health", "/nope", "/api/v1/dream"):
        resp = await client.get(path, headers={"Origin": "https://app.example"})
        assert resp.headers["X-Content-Type-Options"] == "nosniff" and resp.headers["X-Frame-Options"] == "DENY"
        assert "Strict-Transport-Security" in resp.headers and "Content-Security-Policy" in resp.headers
        assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert resp.headers["Access-Control-Allow-Credentials"] == "true" and "Origin" in resp.headers["Vary"]
    resp = await client.get("/health", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in resp.headers and resp.headers["X-Frame-Options"] == "DENY"
    resp = await client.options(
        "/auth/ws",
        headers={"Origin": "https://b.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization"},
    )  # fmt: skip
    assert resp.status == 204 and resp.headers["Access-Control-Allow-Origin"] == "https://b.example"
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
    resp = await client.options(
        "/auth/ws", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert resp.status == 204 and "Access-Control-Allow-Origin" not in resp.headers


async def test_headers_without_a_database(make_client: AppFactory) -> None:
    client = await make_client()
    resp = await client.get("/health")
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert (await client.post("/auth/login", json={"email": "a", "password": "b"})).status == 404


async def test_cookie_requests_from_other_sites_are_refused(
    make_client: AppFactory, database_url: str, user: Any
) -> None:
    client = await make_client(database_url=database_url, cors_origins="https://app.example")
    cookie = f"realtime_session={(await login(client)).cookies['realtime_session'].value}"
    own = f"{client.server.host}:{client.server.port}"
    for host, origin, status in (
        (None, "https://evil.example", 403),
        (None, "https://app.example", 200),
        (None, "http://app.example", 403),  # a listed host, but not its scheme
        (None, f"http://{own}", 200),  # loopback: the scheme the request came with
        (None, f"https://{own}", 403),
        ("rt.example.com", "https://rt.example.com", 200),  # the Secure cookie only travels over HTTPS (a TLS proxy)
        ("rt.example.com", "http://rt.example.com", 403),  # our host over plain HTTP: another origin
        ("rt.example.com", "https://rt.example.com:8443", 403),  # another port
        (None, None, 200),
    ):
        headers = {"Cookie": cookie} | ({"Origin": origin} if origin else {}) | ({"Host": host} if host else {})
        resp = await client.post("/auth/ws", headers=headers)
        assert resp.status == status, (host, origin)
    resp = await client.get("/auth/ws", headers={"Cookie": cookie, "Origin": "https://evil.example"})
    assert resp.status == 200  # a GET changes nothing; CORS keeps the answer from the other site


async def test_development_origin_is_the_request_scheme(make_client: AppFactory, database_url: str, user: Any) -> None:
    client = await make_client(database_url=database_url, environment="development")
    cookie = f"realtime_session={(await login(client)).cookies['realtime_session'].value}"
    for origin, status in (("http://rt.test:80", 200), ("HTTP://RT.TEST:80", 200), ("https://rt.test:80", 403)):
        resp = await client.post("/auth/ws", headers={"Cookie": cookie, "Origin": origin, "Host": "rt.test:80"})
        assert resp.status == status, origin
