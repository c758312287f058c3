"""An asyncio client for the realtime server, following the Twitch PubSub client rules.

    async with RealtimeClient("http://localhost:4444", ["remote-control:command.7"], api_key=KEY) as client:
        async for event in client:
            if event.type == "MESSAGE":
                print(event.topic, event.message)

What it does for you:

- gets a WS token from ``POST /auth/ws`` with an API key (or from your ``token_provider``
  coroutine) and refreshes it ``refresh_margin`` seconds before it expires, re-LISTENing with
  the new token so the topics never lapse;
- sends ``PING`` every ``ping_interval`` seconds (plus up to ``ping_jitter``) and reconnects if
  no ``PONG`` arrives within ``pong_timeout``;
- reconnects after any disconnect with capped, jittered exponential backoff
  (``backoff_initial``, doubling, at most ``backoff_max``), and at once on ``RECONNECT``;
- LISTENs again after every reconnect, then yields a ``RECONNECTED`` event. On topics with
  history (policy ``history_size > 0``) nothing is lost: the client keeps the last
  ``(offset, epoch)`` it saw per topic (:attr:`RealtimeClient.positions`), sends it as
  ``since`` in that LISTEN, and the server sends what was missed before the live stream; a
  publication seen twice is dropped (:attr:`RealtimeClient.duplicates_dropped`). Publications
  on topics without history made while disconnected are lost: refetch state;
- yields ``GAP`` with a ``reason``: ``broker_reconnected`` (the server lost its broker link;
  topics without history may have missed publications: refetch) or ``history_lost`` (history
  could not cover the hole: another epoch, too old, or no history; only live publications
  follow: refetch); and ``AUTH_REVOKED`` (those topics stopped; they are dropped from the
  client's set with their positions; call :meth:`RealtimeClient.listen` again to retry);
- resumes from saved positions: ``RealtimeClient(url, topics, since=saved_positions)``;
- presence (README "Presence"): ``client_info`` (a small JSON object, such as a device
  name) goes with every LISTEN and is what others see of this connection;
  :meth:`RealtimeClient.presence` asks who listens to a topic; on topics whose rule has
  ``join_leave`` it yields ``JOIN`` and ``LEAVE`` events (``topic``, ``user``, ``client``,
  ``info``), this connection's own ``JOIN`` included.

- stops (raising :class:`Disconnected` from the iterator) when the server closes with a code
  after which reconnecting would fail the same way (:data:`realtime.disconnect.DISCONNECTS`).

Errors (:mod:`realtime.client_events`): :class:`ClientError` (root, a
:class:`realtime.errors.RealtimeError`) > :class:`ListenRefused` (the server answered a LISTEN
with an error code), :class:`PresenceRefused` (the same for a PRESENCE), :class:`TokenRefused`
(``/auth/ws`` refused the credentials: 401/403) and :class:`Disconnected`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Self

import aiohttp
import orjson

from realtime.backoff import backoff_delay
from realtime.client_events import (
    PRESENCE_EVENTS,
    ClientError,
    Disconnected,
    Event,
    ListenRefused,
    PresenceRefused,
    TokenRefused,
)
from realtime.client_positions import Position, Positions, message_position
from realtime.client_tokens import fetch_token, refresh_deadline, token_expiry
from realtime.disconnect import should_reconnect
from realtime.presence import check_client_info

__all__ = [
    "ClientError",
    "Disconnected",
    "Event",
    "ListenRefused",
    "Position",
    "PresenceRefused",
    "RealtimeClient",
    "TokenProvider",
    "TokenRefused",
    "backoff_delay",
    "refresh_deadline",
    "token_expiry",
]

TokenProvider = Callable[[], Awaitable[str]]
"""A coroutine function returning a WS token (a JWT whose ``exp`` schedules the refresh)."""


#: LISTEN refusals that may pass later (a rate limit, a user slot in use, a server fault):
#: while (re)connecting they are retried with backoff instead of ending the client.
TRANSIENT_REFUSALS = frozenset({"ERR_RATELIMIT", "ERR_SERVER"})


class _Reconnect(ClientError):
    """The connection must be replaced (closed, RECONNECT, no PONG, a LISTEN refused for
    now). Raised to a caller of :meth:`RealtimeClient.listen` whose request was cut short;
    its topics are LISTENed again on reconnect."""

    def __init__(self, reason: str = "the connection was lost; the topics are LISTENed again on reconnect") -> None:
        super().__init__(reason)


def _describe(exc: BaseException) -> str:
    """One line saying what failed: ``"ClientConnectorError: Cannot connect to host ..."``."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class RealtimeClient:
    """A reconnecting LISTEN client; iterate it for :class:`Event` objects.

    Args:
        url: the server's base URL (``http://host:4444``; ``https`` for TLS), or several
            instances' URLs: each reconnect (after RECONNECT or a failure) tries the next one,
            so a client moves to another instance while one is deployed.
        topics: the topics to LISTEN to.
        api_key: an API key for ``/auth/ws`` (``Authorization: Api-Key``).
        token_provider: or a coroutine function returning a WS token.
        scope: narrow the token to these scopes (space-separated; ``api_key`` only).
        ping_interval: seconds between PINGs (Twitch: at least every 5 minutes).
        ping_jitter: up to this many seconds added to each interval.
        pong_timeout: reconnect if no PONG within this many seconds.
        backoff_initial: first reconnect delay, seconds (doubles per failure).
        backoff_max: the largest reconnect delay, seconds.
        refresh_margin: fetch a new token this many seconds before the current one expires
            (at most half its lifetime).
        response_timeout: seconds to wait for the RESPONSE to a LISTEN.
        queue_size: events buffered for the caller; when full, reading from the server
            pauses (and a server may close a client that stops reading: 4008).
        on_retry: called before each backoff wait with what failed (one line: the error,
            or that the connection closed) and the wait in seconds; not called for an
            immediate reconnect after RECONNECT. Default: nothing is reported.
        since: positions to resume from, ``{topic: (offset, epoch)}`` (for example a
            previous client's :attr:`positions`, saved): sent with the LISTEN that names the
            topic, so the server first sends what was published after it.
        client_info: a small JSON object describing this client (``{"device": "tv"}``), sent
            with every LISTEN: what others see of this connection in presence and in
            ``JOIN``/``LEAVE`` (on topics that keep presence; never put secrets in it).

    Attributes:
        reconnects: connections made after the first.
        url: the URL of the current (or next) connection.

    Raises:
        ValueError: no URL, a ``since`` entry is not an offset from 0 to 2**53 - 1 and an epoch
            of 1 to 64 characters, or ``client_info`` is not a JSON object of at most 512
            bytes nested at most 3 deep (the server's limits:
            :func:`realtime.presence.check_client_info`).
    """

    def __init__(
        self,
        url: str | Sequence[str],
        topics: Iterable[str] = (),
        *,
        api_key: str | None = None,
        token_provider: TokenProvider | None = None,
        scope: str | None = None,
        ping_interval: float = 240.0,
        ping_jitter: float = 30.0,
        pong_timeout: float = 10.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 120.0,
        refresh_margin: float = 60.0,
        response_timeout: float = 10.0,
        queue_size: int = 1000,
        on_retry: Callable[[str, float], None] | None = None,
        since: Mapping[str, tuple[int, str]] | None = None,
        client_info: Mapping[str, Any] | None = None,
    ) -> None:
        self._urls = [u.rstrip("/") for u in ([url] if isinstance(url, str) else url)]
        if not self._urls:
            raise ValueError("RealtimeClient needs a URL")
        self.url = self._urls[0]
        self.topics: list[str] = list(dict.fromkeys(topics))
        self._api_key = api_key
        self._provider = token_provider
        self._scope = scope
        self._ping = (ping_interval, ping_jitter, pong_timeout)
        self._backoff = (backoff_initial, backoff_max)
        self._refresh_margin = refresh_margin
        self._response_timeout = response_timeout
        self._events: asyncio.Queue[Event | BaseException | None] = asyncio.Queue(queue_size)
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._token: tuple[str, float | None] | None = None  # (token, expires at)
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._nonces = itertools.count(1)
        self._pong = asyncio.Event()
        self._ready: asyncio.Future[None] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._closed = False
        self._on_retry = on_retry
        self._positions = Positions(since)
        self._announce: dict[str, Event] = {}  # LISTEN nonce -> event to yield on its RESPONSE
        self._client_info = None if client_info is None else check_client_info(dict(client_info))
        self.reconnects = 0

    @property
    def positions(self) -> dict[str, Position]:
        """The ``(offset, epoch)`` of the last MESSAGE yielded per topic with history (a
        copy; save it after handling an event to resume later with ``since=``). Starts as
        ``since``. A GAP keeps a topic's position until the next MESSAGE replaces it;
        UNLISTEN, AUTH_REVOKED and a MESSAGE without offset (no history) forget it."""
        return self._positions.snapshot()

    @property
    def duplicates_dropped(self) -> int:
        """MESSAGEs not yielded because their offset was not past the topic's known position
        in the same epoch (sent again by a recovery that overlapped the live stream)."""
        return self._positions.duplicates_dropped

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        item = await self._events.get()
        if item is None:
            self._events.put_nowait(None)  # stay exhausted
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        if item.offset is not None and item.epoch is not None:
            self._positions.yielded(item.topic, Position(item.offset, item.epoch))
        return item

    async def start(self) -> None:
        """Connect and LISTEN; returns once the first LISTEN succeeded (retrying connection
        failures with backoff for as long as it takes: wrap in a timeout if needed).

        Raises:
            ListenRefused: the server refused the topics.
            TokenRefused: ``/auth/ws`` refused the credentials.
        """
        self._http = aiohttp.ClientSession()
        self._ready = asyncio.get_running_loop().create_future()
        self._runner = asyncio.create_task(self._run())
        try:
            await self._ready
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the connection and stop; iteration ends after the buffered events."""
        self._closed = True
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()
        with contextlib.suppress(asyncio.QueueFull):
            self._events.put_nowait(None)

    async def listen(self, topics: Iterable[str]) -> None:
        """Add topics (kept across reconnects).

        Raises:
            ListenRefused: the server refused them (none were added).
            ClientError: not connected right now (they are LISTENed on reconnect).
        """
        new = [t for t in topics if t not in self.topics]
        if not new:
            return
        self.topics.extend(new)
        try:
            await self._listen(self._require_ws(), new)
        except ListenRefused:
            self.topics = [t for t in self.topics if t not in new]
            raise

    async def unlisten(self, topics: Iterable[str]) -> None:
        """Remove topics.

        Raises:
            ClientError: not connected (they are simply not LISTENed on reconnect).
        """
        gone = [t for t in topics if t in self.topics]
        self.topics = [t for t in self.topics if t not in gone]
        self._positions.forget(gone)
        if gone:
            await self._request(self._require_ws(), "UNLISTEN", {"topics": gone})

    async def presence(self, topic: str) -> dict[str, Any]:
        """Who listens to ``topic`` now, on every instance (README "Presence"). Anyone who may
        LISTEN to the topic may ask (and a token with ``realtime:presence``); the topic's rule
        must keep presence. This client's token is sent, if it has one.

        Returns:
            The RESPONSE's ``data``: ``{"connections": int, "users": int, "clients":
            [{"user": str | None, "client": str, "info": dict}, ...]}`` (``users`` counts
            distinct non-null users; ``clients`` is sorted by client id and absent when
            there are more than the server's ``PRESENCE_MAX_CLIENTS``: the counts stay exact).

        Raises:
            PresenceRefused: the server refused (``.code``: ``ERR_BADAUTH``, ``ERR_BADTOPIC``,
                ``ERR_RATELIMIT``, ...).
            ClientError: not connected right now, or the connection was lost before the answer.
            TokenRefused: ``/auth/ws`` refused the credentials.
        """
        reply = await self._request_with_token(self._require_ws(), "PRESENCE", {"topic": topic})
        if reply.get("error"):
            raise PresenceRefused(str(reply["error"]), str(reply.get("error_description", "")), topic)
        data = reply.get("data")
        if not isinstance(data, dict):
            raise ClientError(f"the server answered PRESENCE without data ({topic})")
        return data

    def _require_ws(self) -> aiohttp.ClientWebSocketResponse:
        if self._ws is None or self._ws.closed:
            raise ClientError("not connected right now; the topics will be LISTENed on reconnect")
        return self._ws

    # -- connection loop -------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while not self._closed:
            immediate, reason = False, "the connection closed"
            try:
                immediate = await self._connect_once()
                attempt = 0
            except (TokenRefused, ListenRefused, Disconnected) as exc:
                self._fail(exc)
                return
            except (aiohttp.ClientError, OSError, TimeoutError, _Reconnect) as exc:
                reason = _describe(exc)
            except Exception as exc:  # noqa: BLE001 - a bug must reach the caller, not hang the iterator
                self._fail(exc)
                return
            if self._closed:
                return
            if immediate:  # RECONNECT: go now, with a little jitter against reconnect storms
                delay = random.uniform(0, self._backoff[0] / 2)
            else:
                delay = backoff_delay(attempt, *self._backoff)
                attempt += 1
                if self._on_retry is not None:
                    self._on_retry(reason, delay)
            await asyncio.sleep(delay)
            self.reconnects += 1
            self.url = self._urls[self.reconnects % len(self._urls)]

    async def _connect_once(self) -> bool:
        """One connection's life. Returns ``True`` to reconnect at once (RECONNECT)."""
        assert self._http is not None
        ws = await self._http.ws_connect(self.url + "/ws", autoping=True, heartbeat=None)
        self._ws = ws
        tasks: list[asyncio.Task[None]] = []
        reader = asyncio.create_task(self._read(ws))
        reconnected = self._ready is not None and self._ready.done()
        try:
            if self.topics:
                # RECONNECTED is yielded by the reader on the RESPONSE, before what it recovers
                announce = Event("RECONNECTED", topics=tuple(self.topics)) if reconnected else None
                try:
                    await self._listen(ws, list(self.topics), announce)
                except ListenRefused as exc:
                    if exc.code not in TRANSIENT_REFUSALS:
                        raise
                    raise _Reconnect(str(exc)) from None  # e.g. a reconnect storm's token-check budget
            tasks = [asyncio.create_task(self._pinger(ws)), asyncio.create_task(self._refresher(ws))]
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
            now = await reader
            if not now and not should_reconnect(ws.close_code):
                raise Disconnected(ws.close_code or 0)
            return now
        finally:
            for task in (*tasks, reader):
                task.cancel()
            await asyncio.gather(*tasks, reader, return_exceptions=True)
            await ws.close()
            self._ws = None
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(_Reconnect())
            self._pending.clear()

    def _fail(self, exc: BaseException) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(exc)
            return
        with contextlib.suppress(asyncio.QueueFull):
            self._events.put_nowait(exc)
            self._events.put_nowait(None)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> bool:
        """Read frames until the connection ends; ``True`` if the server sent RECONNECT.
        Frames that are not what the protocol says are ignored."""
        async for msg in ws:
            try:
                data = orjson.loads(msg.data) if msg.type is aiohttp.WSMsgType.TEXT else {}
            except orjson.JSONDecodeError:
                continue
            if not isinstance(data, dict):
                continue
            if data.get("type") == "RECONNECT":
                return True
            event = self._on_frame(data)
            if event is not None:
                await self._events.put(event)
        return False

    def _on_frame(self, data: dict[str, Any]) -> Event | None:
        """Handle one server frame; returns the event to yield, if any."""
        kind, body = data.get("type"), data.get("data")
        body = body if isinstance(body, dict) else {}
        if kind == "MESSAGE":
            return self._on_message(body)
        if kind == "PONG":
            self._pong.set()
        elif kind == "RESPONSE":
            return self._on_response(data)
        elif kind in PRESENCE_EVENTS:
            return _presence_event(str(kind), body)
        elif kind in ("GAP", "AUTH_REVOKED"):
            topics = tuple(str(t) for t in body.get("topics", ()) if isinstance(t, str))
            if kind == "AUTH_REVOKED":
                self.topics = [t for t in self.topics if t not in topics]
                self._positions.forget(topics)
                self._token = None  # expired or revoked: the next LISTEN gets a new one
                return Event("AUTH_REVOKED", topics=topics)
            self._positions.gap(topics)
            reason = body.get("reason")
            return Event("GAP", topics=topics, reason=reason if isinstance(reason, str) else None)
        return None

    def _on_message(self, body: dict[str, Any]) -> Event | None:
        """A MESSAGE's event; ``None`` for a malformed one or a duplicate (an offset not past
        the topic's known position in the same epoch), which is counted and dropped."""
        topic, message = body.get("topic"), body.get("message")
        if not isinstance(topic, str) or not isinstance(message, str):
            return None
        position = message_position(body)
        if position is None:  # a topic without history: a position given for it is useless
            self._positions.forget([topic])
            return Event("MESSAGE", topic=topic, message=message)
        # one in flight after its UNLISTEN is yielded but leaves no position behind
        if not self._positions.accept(topic, position, track=topic in self.topics):
            return None
        return Event("MESSAGE", topic=topic, message=message, offset=position.offset, epoch=position.epoch)

    def _on_response(self, data: dict[str, Any]) -> Event | None:
        """Answer the request with this nonce; returns the event announced for its success."""
        nonce = str(data.get("nonce", ""))
        future = self._pending.pop(nonce, None)
        announce = self._announce.pop(nonce, None)
        if future is not None and not future.done():
            future.set_result(data)
        return None if data.get("error") else announce

    async def _pinger(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        interval, jitter, timeout = self._ping
        while True:
            await asyncio.sleep(interval + random.uniform(0, jitter))
            self._pong.clear()
            await ws.send_str('{"type":"PING"}')
            try:
                await asyncio.wait_for(self._pong.wait(), timeout)
            except TimeoutError:
                await ws.close(code=4000, message=b"no PONG")  # ends the reader: reconnect
                return

    async def _refresher(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Before the token expires, fetch a new one and LISTEN again with it (a newer grant
        replaces the old one: the topics never lapse). On failure, reconnect."""
        while True:
            expires = self._token[1] if self._token else None
            if expires is None:
                return
            left = expires - time.time()
            await asyncio.sleep(max(0.0, left - min(self._refresh_margin, left / 2)))
            self._token = None
            try:
                if self.topics:
                    await self._listen(ws, list(self.topics))
                else:
                    await self._current_token()
            except (ClientError, _Reconnect, aiohttp.ClientError, OSError, TimeoutError):
                await ws.close(code=4000, message=b"token refresh failed")
                return

    # -- requests --------------------------------------------------------------------

    async def _listen(
        self, ws: aiohttp.ClientWebSocketResponse, topics: list[str], announce: Event | None = None
    ) -> None:
        """LISTEN, with ``since`` for those topics whose position is known; ``announce`` is
        yielded when (and as soon as) the server accepts it."""
        data: dict[str, Any] = {"topics": topics}
        since = self._positions.since(topics)
        if since:
            data["since"] = since
        if self._client_info is not None:
            data["client_info"] = self._client_info
        reply = await self._request_with_token(ws, "LISTEN", data, announce)
        if reply.get("error"):
            raise ListenRefused(str(reply["error"]), str(reply.get("error_description", "")))

    async def _request_with_token(
        self, ws: aiohttp.ClientWebSocketResponse, kind: str, data: dict[str, Any], announce: Event | None = None
    ) -> dict[str, Any]:
        """``kind`` with the current token (if any) as ``auth_token``; after ``ERR_BADAUTH``
        once more with a fresh token. Returns the last RESPONSE."""
        token = await self._current_token()
        if token is not None:
            data["auth_token"] = token
        reply = await self._request(ws, kind, data, announce)
        if reply.get("error") == "ERR_BADAUTH" and token is not None:
            self._token = None  # maybe expired or revoked: one retry with a fresh token
            data["auth_token"] = await self._current_token()
            reply = await self._request(ws, kind, data, announce)
        return reply

    async def _request(
        self, ws: aiohttp.ClientWebSocketResponse, kind: str, data: dict[str, Any], announce: Event | None = None
    ) -> dict[str, Any]:
        nonce = f"c{next(self._nonces)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[nonce] = future
        if announce is not None:
            self._announce[nonce] = announce
        await ws.send_str(orjson.dumps({"type": kind, "nonce": nonce, "data": data}).decode())
        try:
            return await asyncio.wait_for(future, self._response_timeout)
        except TimeoutError:
            raise _Reconnect() from None
        finally:
            self._pending.pop(nonce, None)
            self._announce.pop(nonce, None)

    async def _current_token(self) -> str | None:
        if self._token is not None:
            return self._token[0]
        if self._provider is not None:
            token = await self._provider()
            self._token = (token, token_expiry(token))
        elif self._api_key is not None:
            assert self._http is not None
            self._token = await fetch_token(self._http, self.url, self._api_key, self._scope)
        else:
            return None
        return self._token[0]


def _presence_event(kind: str, body: dict[str, Any]) -> Event | None:
    """A ``JOIN`` or ``LEAVE`` frame's event; ``None`` for a malformed one."""
    topic, user, client, info = body.get("topic"), body.get("user"), body.get("client"), body.get("info")
    if not isinstance(topic, str) or not isinstance(client, str):
        return None
    user = user if isinstance(user, str) else None
    return Event(kind, topic=topic, user=user, client=client, info=info if isinstance(info, dict) else {})
