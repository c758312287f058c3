"""Benchmark peer: python-socketio AsyncServer (aiohttp) + AsyncRedisManager, rooms as topics.

Runs in its own venv (bench/.venv-peers), never in the project's. Relays the benchmark's
Redis channel (envelope ``{"topic", "message"}``) to the topic's room with ``sio.emit``,
which AsyncRedisManager sends through Redis to every instance, this one included.

Usage: sio_server.py PORT REDIS_URL CHANNEL
"""

from __future__ import annotations

import asyncio
import json
import sys

import redis.asyncio as aioredis
import socketio
from aiohttp import web


def build(redis_url: str, channel: str) -> web.Application:
    mgr = socketio.AsyncRedisManager(redis_url, channel=channel + "-sio")
    sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=mgr)
    app = web.Application()
    sio.attach(app)

    @sio.on("listen")
    async def listen(sid: str, topics: list[str]) -> bool:
        for topic in topics:
            await sio.enter_room(sid, topic)
        return True

    async def relay() -> None:
        client = aioredis.from_url(redis_url)
        pubsub = client.pubsub()
        await pubsub.subscribe(channel)
        async for msg in pubsub.listen():
            if msg["type"] == "message":
                env = json.loads(msg["data"])
                await sio.emit("message", {"topic": env["topic"], "message": env["message"]}, room=env["topic"])

    async def start(app: web.Application):  # type: ignore[no-untyped-def]
        task = asyncio.get_running_loop().create_task(relay())
        yield
        task.cancel()

    app.cleanup_ctx.append(start)
    return app


if __name__ == "__main__":
    port, url, chan = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    web.run_app(build(url, chan), host="127.0.0.1", port=port, print=None)
