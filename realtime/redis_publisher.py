"""Publishing to Redis: redis-py's ``redis.asyncio`` client, used for ``PUBLISH`` (and the
history library's ``FCALL``, :mod:`realtime.redis_functions`).

A ``PUBLISH`` is never retried: one that reached Redis before its reply was lost would be
sent twice, or answered 503 though delivered. Every failure becomes
:class:`realtime.BrokerUnavailable` (the message was not sent, as far as we know).
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from realtime.errors import BrokerUnavailable

MAX_CONNECTIONS = 64
"""Most connections the publishing client opens to Redis; more commands in flight wait."""


class RedisPublisher:
    """One lazily created ``redis.asyncio`` client that publishes payloads on channels."""

    __slots__ = ("_client", "_timeout", "_url")

    def __init__(self, url: str, *, timeout: float = 2.0) -> None:
        """Args:
        url: ``redis://``, ``rediss://`` or ``unix://`` URL.
        timeout: connect and per-command timeout, seconds.
        """
        self._url = url
        self._timeout = timeout
        self._client: aioredis.Redis | None = None

    @property
    def started(self) -> bool:
        """``True`` between :meth:`start` and :meth:`close`."""
        return self._client is not None

    @property
    def client(self) -> aioredis.Redis:
        """The client (it never retries a command; its timeouts are ``timeout``).

        Raises:
            BrokerUnavailable: not started.
        """
        if self._client is None:
            raise BrokerUnavailable("broker is not started")
        return self._client

    def start(self) -> None:
        """Create the client (it connects on the first publish)."""
        if self._client is None:
            # a blocking pool: past MAX_CONNECTIONS commands in flight (a reconnect storm's
            # reads of history, a burst of /publish) wait up to ``timeout`` for a connection
            # instead of failing at once with MaxConnectionsError (redis-py's default pool)
            pool = aioredis.BlockingConnectionPool.from_url(
                self._url,
                max_connections=MAX_CONNECTIONS,
                timeout=self._timeout,
                socket_connect_timeout=self._timeout,
                socket_timeout=self._timeout,
                # never retry a PUBLISH (see the module docstring). A PING before a command
                # on a connection idle for 5 s catches most dead connections first.
                retry=Retry(NoBackoff(), 0),
                health_check_interval=5,
            )
            self._client = aioredis.Redis.from_pool(pool)  # closes the pool with the client

    async def publish(self, channel: str, payload: bytes) -> None:
        """``PUBLISH channel payload``.

        Raises:
            BrokerUnavailable: not started, or Redis did not take it (down, timeout, refused).
        """
        if self._client is None:
            raise BrokerUnavailable("broker is not started")
        try:
            await self._client.publish(channel, payload)
        except (RedisError, OSError, TimeoutError) as exc:
            raise BrokerUnavailable(f"redis unavailable: {type(exc).__name__}") from None

    async def close(self) -> None:
        """Close the client's connections."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None
