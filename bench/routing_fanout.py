"""Redis CPU per ``PUBLISH`` to a channel with k subscribers (the firehose's cost on Redis), paced and saturated.

For each k: a subscriber process opens k raw connections to the private Redis, each
``SUBSCRIBE``\\s to one channel and reads lazily (every 20 ms, so reading costs little and
Redis still writes each publication as it comes); the publisher (:class:`bench.publisher.Publisher`,
paced, the way a backend publishes) sends ``count`` envelopes at ``rate``/s. Redis's process
CPU and ``INFO commandstats`` (``PUBLISH``) over the window give its cost per publication; the
subscribers' byte counts check that every copy was written. :func:`saturated` does the same
with ``redis-benchmark`` publishing as fast as Redis takes it (Redis busy: its per-command
overheads shared by many commands per event-loop pass), and :func:`subscriptions` measures
what one-subscriber channels cost Redis in memory and CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import selectors
import shutil
import socket
import subprocess
import time
import uuid
from multiprocessing.connection import Connection
from typing import Any

import redis

from bench.private_redis import PrivateRedis
from bench.publisher import Publisher
from bench.servers import BenchError


def subscribers(pipe: Connection, port: int, channel: str, k: int) -> None:
    """Process entry point: ``k`` subscriptions to ``channel``; reports ``{"ready"}``, then on
    any message from ``pipe`` the bytes each connection read, and ends."""
    sel = selectors.DefaultSelector()
    socks = []
    command = f"*2\r\n$9\r\nSUBSCRIBE\r\n${len(channel)}\r\n{channel}\r\n".encode()
    for _ in range(k):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(command)
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, [0])
        socks.append(sock)
    pipe.send({"ready": True})
    while not pipe.poll(0.02):
        for key, _ in sel.select(0):
            with contextlib.suppress(BlockingIOError):
                key.data[0] += len(key.fileobj.recv(1 << 20))  # type: ignore[union-attr]
    pipe.recv()
    while sel.select(0.2):  # what is still on its way
        for key, _ in sel.select(0):
            with contextlib.suppress(BlockingIOError):
                key.data[0] += len(key.fileobj.recv(1 << 20))  # type: ignore[union-attr]
    pipe.send({"bytes": [sel.get_key(s).data[0] for s in socks]})
    for sock in socks:
        sock.close()


def _wait_subscribed(client: redis.Redis, channel: str, k: int, timeout: float = 30.0) -> None:
    """Return once ``channel`` has ``k`` subscribers.

    Raises:
        TimeoutError: it did not within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while int(client.pubsub_numsub(channel)[0][1]) < k:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{channel} did not get {k} subscribers")
        time.sleep(0.01)


def step(redis_proc: PrivateRedis, k: int, *, rate: float, count: int, size: int) -> dict[str, Any]:
    """One k: see the module docstring.

    Raises:
        TimeoutError: the subscriber process did not get ready or answer in 30 s.
    """
    channel = f"bench-fanout-{uuid.uuid4().hex[:8]}"
    ctx = multiprocessing.get_context("spawn")
    mine, theirs = ctx.Pipe()
    proc = ctx.Process(target=subscribers, args=(theirs, redis_proc.port, channel, k), daemon=True)
    proc.start()
    try:
        if not mine.poll(30):
            raise TimeoutError("the subscriber process did not get ready")
        mine.recv()
        client = redis.Redis.from_url(redis_proc.url)
        _wait_subscribed(client, channel, k)
        client.config_resetstat()
        cpu0, t0 = redis_proc.cpu(), time.monotonic()
        cmd = {"mode": "redis", "redis_url": redis_proc.url, "channel": channel, "topics": ["channel:update.f"]}
        pub = asyncio.run(Publisher(cmd | {"rate": rate, "count": count, "size": size}).run())
        time.sleep(0.1)  # the last copies are written
        used, wall = redis_proc.cpu() - cpu0, time.monotonic() - t0
        stat = client.info("commandstats").get("cmdstat_publish", {})
        client.close()
        mine.send({})
        if not mine.poll(30):
            raise TimeoutError("the subscriber process did not answer")
        read = mine.recv()["bytes"]
    finally:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.terminate()
    return {
        "k": k,
        "published": pub["published"],
        "redis_cpu_pct": round(100 * used.total / wall, 2),
        "process_us_per_publish": round(1e6 * used.total / max(1, pub["published"]), 2),
        "usec_per_call": float(stat.get("usec_per_call", 0.0)),
        "calls": int(stat.get("calls", 0)),
        "min_bytes_read": min(read, default=0),
    }


def run(redis_proc: PrivateRedis, *, ks: list[int], rate: float, count: int, size: int) -> list[dict[str, Any]]:
    """Every k in ``ks``, in order."""
    return [step(redis_proc, k, rate=rate, count=count, size=size) for k in ks]


def subscriptions(redis_proc: PrivateRedis, channels: int, batch: int = 512) -> dict[str, Any]:
    """What ``channels`` one-subscriber channels cost Redis: memory (``used_memory`` growth)
    and CPU per ``SUBSCRIBE``d channel, the way an instance subscribes (``batch`` channels
    per command, as ``realtime/topic_subscriptions.py`` does), then per ``UNSUBSCRIBE``d one.
    """
    client = redis.Redis.from_url(redis_proc.url)
    sock = socket.create_connection(("127.0.0.1", redis_proc.port))
    try:
        base = int(client.info("memory")["used_memory"])
        names = [f"bench-subs:{{channel:update.u{i}}}" for i in range(channels)]
        cpu0, t0 = redis_proc.cpu(), time.monotonic()
        _send_batches(sock, "SUBSCRIBE", names, batch)
        sub_cpu, sub_wall = redis_proc.cpu() - cpu0, time.monotonic() - t0
        grown = int(client.info("memory")["used_memory"]) - base
        cpu0 = redis_proc.cpu()
        _send_batches(sock, "UNSUBSCRIBE", names, batch)
        unsub_cpu = redis_proc.cpu() - cpu0
    finally:
        sock.close()
        client.close()
    return {
        "channels": channels,
        "bytes_per_channel": round(grown / channels, 1),
        "subscribe_us_per_channel": round(1e6 * sub_cpu.total / channels, 2),
        "unsubscribe_us_per_channel": round(1e6 * unsub_cpu.total / channels, 2),
        "subscribe_wall_s": round(sub_wall, 3),
    }


def _send_batches(sock: socket.socket, verb: str, names: list[str], batch: int) -> None:
    """``verb`` ``names`` in commands of ``batch`` channels; returns once every reply came
    (each named channel gets one reply, ending with its subscription count)."""
    for start in range(0, len(names), batch):
        part = names[start : start + batch]
        command = [f"*{len(part) + 1}\r\n${len(verb)}\r\n{verb}\r\n"]
        command += [f"${len(n)}\r\n{n}\r\n" for n in part]
        sock.sendall("".join(command).encode())
        _read_replies(sock, len(part))


def _read_replies(sock: socket.socket, count: int) -> None:
    """Read until ``count`` (un)subscribe replies arrived (each is a 3-element push)."""
    seen, data = 0, b""
    while seen < count:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("redis closed the connection")
        data += chunk
        seen = data.count(b"*3\r\n")


def saturated(redis_proc: PrivateRedis, k: int, *, requests: int, clients: int, size: int) -> dict[str, Any]:
    """Redis CPU per ``PUBLISH`` when busy: ``redis-benchmark`` sends ``requests`` PUBLISHes
    from ``clients`` connections (one command in flight each, no pipelining) to a channel with
    ``k`` subscribers (:func:`subscribers`), as fast as Redis takes them.

    Raises:
        BenchError: ``redis-benchmark`` is missing or failed.
        TimeoutError: the subscriber process did not get ready or answer in 30 s.
    """
    binary = shutil.which("redis-benchmark")
    if binary is None:
        raise BenchError("redis-benchmark is not installed")
    channel = f"bench-sat-{uuid.uuid4().hex[:8]}"
    ctx = multiprocessing.get_context("spawn")
    mine, theirs = ctx.Pipe()
    proc = ctx.Process(target=subscribers, args=(theirs, redis_proc.port, channel, k), daemon=True)
    proc.start()
    try:
        if not mine.poll(30):
            raise TimeoutError("the subscriber process did not get ready")
        mine.recv()
        with redis.Redis.from_url(redis_proc.url) as client:
            _wait_subscribed(client, channel, k)
        argv = [binary, "-p", str(redis_proc.port), "-c", str(clients), "-n", str(requests), "-q"]
        argv += ["PUBLISH", channel, "x" * size]
        cpu0, t0 = redis_proc.cpu(), time.monotonic()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)  # noqa: S603
        used, wall = redis_proc.cpu() - cpu0, time.monotonic() - t0
        if done.returncode != 0:
            raise BenchError(f"redis-benchmark failed: {done.stderr[-300:]}")
        mine.send({})
        if not mine.poll(30):
            raise TimeoutError("the subscriber process did not answer")
        read = mine.recv()["bytes"]
    finally:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.terminate()
    return {
        "k": k,
        "requests": requests,
        "per_s": round(requests / wall),
        "redis_cpu_pct": round(100 * used.total / wall, 1),
        "process_us_per_publish": round(1e6 * used.total / requests, 2),
        "min_bytes_read": min(read, default=0),
    }
