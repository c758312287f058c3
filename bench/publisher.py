"""The open-loop publisher process: publishes at a fixed rate through the real path.

Driven over a pipe like :mod:`bench.loadgen`:

- ``{"op": "publish", "mode": "redis"|"topic"|"fcall"|"offsets"|"http", "redis_url", "channel", "url", "api_key",
  "topics": [...], "rate": msgs/s, "count": n, "size": bytes, "local_addr"?}`` publishes ``count``
  messages, round-robin over ``topics``, on the schedule ``i / rate`` seconds from the
  start (late batches catch up; the schedule never waits for deliveries) -> ``{"published",
  "per_topic": {topic: n}, "start_ns", "end_ns", "errors"}``.
- ``{"op": "close"}`` ends the process.

Each message is a string ``~<n>~<monotonic ns at send>~xxx...`` padded to ``size``
bytes, ``n`` counting the messages of its topic from 0; ``redis`` mode publishes the
envelope ``{"topic", "message"}`` on the firehose (``channel``) with redis-py (the
way a backend service does), ``topic`` mode the same envelope on the topic's own channel
(``<channel>:{<topic>}``, per-topic routing), ``fcall`` mode calls the channel's Redis Function
(``FCALL <p>_publish 1 <channel>:{<topic>}:history <topic> <message>``, for topics that keep
history: :mod:`realtime.redis_functions`), ``offsets`` mode publishes the envelope with an
``offset`` (1, 2, ... per topic) and an epoch new to the run, as the Function would but
without keeping history, and ``http`` mode POSTs it to ``/publish``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis


def payload(seq: int, size: int) -> str:
    """The stamped message string of ``seq`` (its number in its topic), padded with ``x`` to ``size`` bytes."""
    head = f"~{seq}~{time.monotonic_ns()}~"
    return head + "x" * max(0, size - len(head))


class Publisher:
    """Publishes one run's messages (see the module docstring)."""

    def __init__(self, cmd: dict[str, Any]) -> None:
        self.cmd = cmd
        self.topics: list[str] = cmd["topics"]
        self.per_topic = dict.fromkeys(self.topics, 0)
        self.errors: list[str] = []

    async def run(self) -> dict[str, Any]:
        """Publish everything on schedule; returns the counts."""
        cmd = self.cmd
        rate, count = float(cmd["rate"]), int(cmd["count"])
        async with self._sink() as sink:
            start = time.monotonic()
            start_ns = time.monotonic_ns()
            sent = 0
            while sent < count:
                due = min(count, int((time.monotonic() - start) * rate) + 1)
                if due > sent:
                    await sink(range(sent, due))
                    sent = due
                delay = start + sent / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            end_ns = time.monotonic_ns()
        return {
            "published": sum(self.per_topic.values()),
            "per_topic": self.per_topic,
            "start_ns": start_ns,
            "end_ns": end_ns,
            "errors": self.errors[:5],
            "error_count": len(self.errors),
        }

    @contextlib.asynccontextmanager
    async def _sink(self) -> Any:
        cmd = self.cmd
        topics, size = self.topics, int(cmd["size"])
        if cmd["mode"] in REDIS_MODES:
            client = aioredis.from_url(cmd["redis_url"])
            add = _redis_adder(cmd["mode"], cmd["channel"])

            async def to_redis(seqs: range) -> None:
                pipe = client.pipeline(transaction=False)
                for seq in seqs:
                    topic = topics[seq % len(topics)]
                    self.per_topic[topic] += 1
                    add(pipe, topic, payload(seq // len(topics), size), self.per_topic[topic])
                await pipe.execute()

            try:
                yield to_redis
            finally:
                await client.aclose()
            return
        source = (cmd["local_addr"], 0) if cmd.get("local_addr") else None
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32, local_addr=source))
        headers = {"Authorization": f"Api-Key {cmd['api_key']}", "Content-Type": "application/json"}
        pending: set[asyncio.Task[None]] = set()

        async def post(seq: int) -> None:
            topic = topics[seq % len(topics)]
            body = orjson.dumps({"topic": topic, "message": payload(seq // len(topics), size)})
            try:
                async with session.post(f"{cmd['url']}/publish", data=body, headers=headers) as resp:
                    if resp.status == 202:
                        self.per_topic[topic] += 1
                    else:
                        self.errors.append(f"{resp.status} {await resp.text()}"[:200])
            except aiohttp.ClientError as exc:
                self.errors.append(repr(exc)[:200])

        async def to_http(seqs: range) -> None:
            for seq in seqs:
                task = asyncio.ensure_future(post(seq))
                pending.add(task)
                task.add_done_callback(pending.discard)

        try:
            yield to_http
            if pending:
                await asyncio.wait(pending, timeout=30)
        finally:
            await session.close()


REDIS_MODES = ("redis", "topic", "fcall", "offsets")
"""Publish modes that go to Redis directly (the others: ``http``)."""

Adder = Callable[[Any, str, str, int], None]
"""Adds one publication to a redis-py pipeline: ``(pipeline, topic, message, offset)``."""


def _redis_adder(mode: str, channel: str) -> Adder:
    """How ``mode`` puts one publication on a pipeline (see the module docstring)."""
    if mode == "fcall":
        from realtime.redis_functions import function_names, history_key

        function = function_names(channel).publish

        def fcall(pipe: Any, topic: str, message: str, offset: int) -> None:
            pipe.fcall(function, 1, history_key(channel, topic), topic, message)

        return fcall
    from realtime.redis_functions import topic_channel

    epoch = uuid.uuid4().hex[:8]

    def publish(pipe: Any, topic: str, message: str, offset: int) -> None:
        envelope: dict[str, object] = {"topic": topic, "message": message}
        if mode == "offsets":
            envelope |= {"offset": offset, "epoch": epoch}
        pipe.publish(topic_channel(channel, topic) if mode == "topic" else channel, orjson.dumps(envelope))

    return publish


async def _serve(pipe: Connection) -> None:
    loop = asyncio.get_running_loop()
    while True:
        cmd: dict[str, Any] = await loop.run_in_executor(None, pipe.recv)
        if cmd["op"] != "publish":
            pipe.send({})
            return
        pipe.send(await Publisher(cmd).run())


def main(pipe: Connection) -> None:
    """Process entry point: serve commands from ``pipe`` until ``close``."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(_serve(pipe))
