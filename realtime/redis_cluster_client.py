"""The Redis Cluster broker's command client: redis-py's ``RedisCluster`` (publications,
control messages, the history library), renewed when the topology changes.

Commands are never retried (``Retry(NoBackoff(), 0)``): a publication is never sent twice.
A renewed client reads its slot cache afresh from the seeds; the old one is closed once the
commands in flight on it had time to finish.
"""

from __future__ import annotations

import asyncio

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from realtime.redis_cluster import Address
from realtime.redis_functions import HistoryFunctions
from realtime.redis_publisher import MAX_CONNECTIONS
from topics import TopicPolicy


class ClusterCommands:
    """One ``RedisCluster`` client at a time and the history library's wrapper on it.

    Attributes:
        client: the current client (``None`` before :meth:`start` and after :meth:`close`).
        functions: the history library called through ``client``.
    """

    def __init__(self, seeds: list[Address], *, channel: str, policy: TopicPolicy, timeout: float) -> None:
        """Args:
        seeds: the startup nodes.
        channel: the data channel (the library's name).
        policy: the topic policy baked into the library.
        timeout: connect and command timeout; also how long a replaced client is kept
            open for the commands in flight on it, seconds.
        """
        self._seeds = seeds
        self._channel = channel
        self._policy = policy
        self._timeout = timeout
        self._closers: set[asyncio.Task[None]] = set()
        self.client: RedisCluster | None = None
        self.functions: HistoryFunctions | None = None

    def start(self) -> None:
        """Create the client (it connects on its first command)."""
        self.client = RedisCluster(
            startup_nodes=[ClusterNode(a.host, a.port) for a in self._seeds],
            retry=Retry(NoBackoff(), 0),  # never send a publication twice
            max_connections=MAX_CONNECTIONS,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
        )
        self.functions = HistoryFunctions(self.client, channel=self._channel, policy=self._policy, sharded=True)

    def renew(self) -> None:
        """A new client for a new topology; the old one is closed ``timeout`` seconds later."""
        old = self.client
        self.start()
        if old is not None:
            task = asyncio.create_task(self._close_later(old), name="redis-cluster-client-close")
            self._closers.add(task)
            task.add_done_callback(self._closers.discard)

    async def _close_later(self, client: RedisCluster) -> None:
        try:
            await asyncio.sleep(self._timeout)
        finally:
            await client.aclose()

    async def close(self) -> None:
        """Close the client and the replaced ones still open."""
        for closer in list(self._closers):
            closer.cancel()
        await asyncio.gather(*self._closers, return_exceptions=True)
        client, self.client = self.client, None
        if client is not None:
            await client.aclose()
