"""Sentry: unhandled errors are reported with release and environment, and never carry secrets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sentry_sdk
from aiohttp import web
from aiohttp.test_utils import TestClient
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from keys import KeyStore
from service.app import create_app
from service.sentry import FILTERED, init_sentry, release
from tests.conftest import USER_KEY, make_settings

DSN = "https://public@sentry.invalid/1"
JWT = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiI3In0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
DB_KEY = "rtk_0123456789abcdefghijklmnopqrstuvwxyzABCDE"


class CaptureTransport(Transport):
    """Keeps every event in memory instead of sending it."""

    events: list[dict[str, Any]] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        event = envelope.get_event()
        if event is not None:
            CaptureTransport.events.append(event)


@pytest.fixture
def captured() -> Iterator[list[dict[str, Any]]]:
    CaptureTransport.events = []
    yield CaptureTransport.events
    sentry_sdk.get_client().close()
    sentry_sdk.init()  # back to a disabled client for the other tests


async def boom(request: web.Request) -> web.Response:
    api_key = USER_KEY  # a local variable: Sentry records frame locals
    raise RuntimeError(f"failed with token {JWT} for key {api_key} and {DB_KEY}")


async def test_unhandled_error_is_reported_without_secrets(
    aiohttp_client: Any, key_store: KeyStore, captured: list[dict[str, Any]], tmp_path: Path
) -> None:
    settings = make_settings(sentry_dsn=DSN, sentry_environment="staging")
    assert init_sentry(settings, transport=CaptureTransport)
    app = create_app(settings, key_store=key_store)
    app.router.add_get("/boom", boom)
    client: TestClient[web.Request, web.Application] = await aiohttp_client(app)
    resp = await client.get(
        f"/boom?token={JWT}&apiKey=abc123secretvalue&page=2",
        headers={"Authorization": f"Api-Key {USER_KEY}", "Cookie": "realtime_session=s3cr3t-cookie-value"},
    )
    assert resp.status == 500
    assert (await resp.json())["error"] == "internal"  # still a JSON 500, never a traceback
    sentry_sdk.flush(timeout=2)
    assert len(captured) == 1, captured
    event = captured[0]
    assert event["release"] == release() != "realtime-pubsub@unknown"
    assert event["environment"] == "staging"
    assert event["exception"]["values"][-1]["type"] == "RuntimeError"
    text = orjson.dumps(event).decode()
    for secret in (USER_KEY, JWT, DB_KEY, "abc123secretvalue", "s3cr3t-cookie-value"):
        assert secret not in text, secret
    assert FILTERED in text
    assert "page=2" in text  # harmless context survives
