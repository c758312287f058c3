"""What publishing into history costs: the Redis Function against a plain ``PUBLISH``.

On a :class:`bench.private_redis.PrivateRedis` with the channel's library loaded
(:func:`realtime.redis_functions.library_code`, one topic name keeping ``history_size``
publications) and one subscriber on the channel (``redis-cli SUBSCRIBE``, output thrown
away, so ``PUBLISH`` has someone to write to), one asyncio publisher (redis-py with hiredis)
sends stamped messages of ``size`` bytes to one topic:

- ``sequential``: one call at a time, each awaited (round trips per second);
- ``pipelined``: batches of ``batch`` calls in one pipeline.

Each way runs once with ``FCALL <p>_publish`` and once with ``PUBLISH`` of the envelope the
Function publishes (``{"topic", "message", "offset", "epoch"}``), the two interleaved. Redis
CPU per call is read from ``INFO commandstats`` (``usec_per_call`` of ``fcall`` and
``publish`` after ``CONFIG RESETSTAT``: the time Redis spent executing the command, its
inner calls included) and, as a check, from ``/proc`` (the whole redis-server process per
call: reading, parsing, replying and the subscriber's write included).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from typing import Any

import orjson
import redis.asyncio as aioredis

from bench.private_redis import PrivateRedis
from bench.publisher import payload
from realtime.redis_functions import function_names, history_key, library_code
from topics.policy import policy_from_mapping

TOPIC = "bench:hist.p"


class _Caller:
    """Makes one publication of a kind (``fcall`` or ``publish``) on a client or pipeline."""

    def __init__(self, kind: str, channel: str) -> None:
        self.kind = kind
        self.channel = channel
        self.function = function_names(channel).publish
        self.key = history_key(channel, TOPIC)

    def add(self, target: Any, seq: int, size: int) -> Any:
        """Call (or queue, on a pipeline) publication ``seq``; returns the awaitable or pipeline."""
        message = payload(seq, size)
        if self.kind == "fcall":
            return target.fcall(self.function, 1, self.key, TOPIC, message)
        envelope = {"topic": TOPIC, "message": message, "offset": seq + 1, "epoch": "18f3a9c2e4d5b6a7"}
        return target.publish(self.channel, orjson.dumps(envelope))


async def _run_one(url: str, caller: _Caller, *, count: int, batch: int, size: int) -> dict[str, Any]:
    """``count`` publications, awaited one by one (``batch`` 1) or pipelined in ``batch``es."""
    client = aioredis.from_url(url)
    try:
        await client.config_resetstat()
        start = time.monotonic()
        if batch <= 1:
            for seq in range(count):
                await caller.add(client, seq, size)
        else:
            for first in range(0, count, batch):
                pipe = client.pipeline(transaction=False)
                for seq in range(first, min(count, first + batch)):
                    caller.add(pipe, seq, size)
                await pipe.execute()
        elapsed = time.monotonic() - start
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    row = stats.get(f"cmdstat_{caller.kind}", {})
    return {
        "kind": caller.kind,
        "batch": batch,
        "count": count,
        "elapsed_s": round(elapsed, 4),
        "per_s": round(count / elapsed, 1),
        "calls_counted": int(row.get("calls", 0)),
        "redis_usec_per_call": float(row.get("usec_per_call", 0.0)),
    }


def _measure(redis_proc: PrivateRedis, caller: _Caller, *, count: int, batch: int, size: int) -> dict[str, Any]:
    cpu0 = redis_proc.cpu()
    row = asyncio.run(_run_one(redis_proc.url, caller, count=count, batch=batch, size=size))
    used = redis_proc.cpu() - cpu0
    row["redis_process_us_per_call"] = round(1e6 * used.total / count, 2)
    return row


def run(*, reps: int, sequential: int, pipelined: int, batch: int, size: int, history_size: int) -> dict[str, Any]:
    """Scenario 1 (see the module docstring); every rep runs each kind and way once,
    interleaved (the order alternates between reps).

    Returns:
        ``{"runs": [row, ...], "history_size", "size"}``, each row with ``kind``,
        ``batch``, ``per_s``, ``redis_usec_per_call``, ``redis_process_us_per_call``, ``rep``.
    """
    channel = "bench_hist_publish"
    policy = policy_from_mapping({"topics": {"bench:hist": {"history_size": history_size, "history_ttl": 600}}})
    rows: list[dict[str, Any]] = []
    with PrivateRedis() as redis_proc:
        sync = redis_proc.url
        subscriber = _subscribe(redis_proc.port, channel)
        try:
            asyncio.run(_load(sync, library_code(channel, policy)))
            for rep in range(reps):
                kinds = ["fcall", "publish"] if rep % 2 == 0 else ["publish", "fcall"]
                for kind in kinds:
                    caller = _Caller(kind, channel)
                    for way, count in ((1, sequential), (batch, pipelined)):
                        rows.append(_measure(redis_proc, caller, count=count, batch=way, size=size) | {"rep": rep})
        finally:
            if subscriber is not None:
                subscriber.terminate()
                subscriber.wait(timeout=5)
    return {"runs": rows, "history_size": history_size, "size": size, "subscribers": 1 if subscriber else 0}


async def _load(url: str, code: str) -> None:
    client = aioredis.from_url(url)
    try:
        await client.function_load(code, replace=True)
    finally:
        await client.aclose()


def _subscribe(port: int, channel: str) -> subprocess.Popen[bytes] | None:
    """One subscriber on ``channel`` (``redis-cli``; ``None`` if it is not installed)."""
    binary = shutil.which("redis-cli")
    if binary is None:
        return None
    proc = subprocess.Popen(  # noqa: S603 - fixed command line
        [binary, "-p", str(port), "SUBSCRIBE", channel], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(0.2)  # subscribed before the first publication
    return proc
