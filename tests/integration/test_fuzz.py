"""Hostile input: fuzz a real server over real sockets (hypothesis). The protocol core alone:
tests/unit/test_fuzz.py, whose frame strategies this reuses."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keys import KeyStore
from service.app import create_app
from tests.conftest import make_settings
from tests.unit.test_fuzz import FRAMES


class ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def server_port(key_store: KeyStore) -> Iterator[int]:
    """The real app served by its own event loop in a thread, on a loopback port."""
    loop = asyncio.new_event_loop()
    app = create_app(make_settings(max_frame_bytes=16384, connect_rate_per_ip=0), key_store=key_store)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port: int = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield port
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


async def exchange(port: int, frames: list[Any]) -> list[Any]:
    outcomes: list[Any] = []
    async with aiohttp.ClientSession() as http, http.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
        for frame in frames:
            if isinstance(frame, bytes):
                await ws.send_bytes(frame)
            else:
                await ws.send_str(frame)
            msg = await ws.receive(timeout=5)
            if msg.type is aiohttp.WSMsgType.TEXT:
                reply = orjson.loads(msg.data)
                assert reply["type"] in ("PONG", "RESPONSE"), reply
                outcomes.append(reply.get("error", "PONG"))
            else:  # only an oversized frame may close the socket, and only with 1009
                assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1009, (msg.type, msg.data)
                outcomes.append(1009)
                break
        else:
            await ws.send_str('{"type":"PING"}')
            assert orjson.loads((await ws.receive(timeout=5)).data) == {"type": "PONG"}
    return outcomes


@pytest.mark.slow
@given(frames=st.lists(FRAMES, min_size=1, max_size=8))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_real_server_survives_random_frames(server_port: int, frames: list[Any]) -> None:
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    try:
        asyncio.run(exchange(server_port, frames))
        # the process stays healthy for the next client
        assert asyncio.run(exchange(server_port, ['{"type":"PING"}'])) == ["PONG"]
    finally:
        logging.getLogger().removeHandler(errors)
    assert errors.records == [], [r.getMessage() for r in errors.records]
