"""``/api/v1/remote-control``: send a remote-control event to every device of the caller
(``POST``), and see which devices listen (``GET .../devices``)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from http_api.api_error import ApiError
from http_api.appkeys import NODE
from http_api.auth import authenticate
from http_api.body import load_json
from http_api.envelope import ok
from http_api.schemas import RemoteControlSchema
from realtime.errors import BadMessage, BrokerUnavailable
from topics import BadTopic

TOPIC_NAME = "remote-control:command"
"""The topic name of remote control; a user's devices LISTEN to ``<TOPIC_NAME>.<user id>``."""


async def remote_control(request: web.Request) -> web.Response:
    """Publish ``{"event": ..., "uuid"?, "frameNumber"?, ...}`` on ``remote-control:command.<user id>``.

    The user id is the caller's: the ``sub`` of their WS tokens, so every device of that
    user LISTENing on its own topic receives the event, and nobody else does.

    Returns:
        202 envelope whose ``data`` is the event as published.

    Raises:
        AuthError: 401.
        ApiError: 400 (unknown event or bad fields), 503 (the broker did not take it: it
            was not sent).
    """
    principal = await authenticate(request)
    body = await load_json(request, RemoteControlSchema())
    try:
        await request.app[NODE].publish(f"{TOPIC_NAME}.{principal.user_id}", body)
    except BadTopic:
        raise ApiError(400, "This caller's user id cannot be a topic target.") from None
    except BadMessage as exc:
        raise ApiError(400, str(exc)) from None
    except BrokerUnavailable:
        raise ApiError(503, "The realtime broker is unavailable; the command was not sent.") from None
    return ok(body, status=202, message="Command sent.")


async def remote_control_devices(request: web.Request) -> web.Response:
    """How many of the caller's devices listen on ``remote-control:command.<user id>``, on
    every instance: those a ``POST /api/v1/remote-control`` reaches now.

    Only the caller's own topic (the user id is the caller's, as for the ``POST``); from
    the topic's presence (:mod:`http_api.presence`), without a token or an address.

    Returns:
        200 envelope whose ``data`` is ``{"connections": int, "users": int, "devices":
        [{"client": str, "info": {...}}, ...]}`` (``devices`` left out beyond
        ``PRESENCE_MAX_CLIENTS``; the counts stay exact), ``Cache-Control: no-store``.

    Raises:
        AuthError: 401.
        ApiError: 400 (the caller's user id cannot be a topic target), 404 (the topic
            policy keeps no presence for remote control), 503 (the broker could not be read).
    """
    principal = await authenticate(request)
    node = request.app[NODE]
    try:
        parsed, rule = node.policy.check(f"{TOPIC_NAME}.{principal.user_id}")
    except BadTopic:
        raise ApiError(400, "This caller's user id cannot be a topic target.") from None
    if not rule.presence:
        raise ApiError(404, f"This server's topic policy keeps no presence for {TOPIC_NAME}.")
    try:
        snapshot = await node.presence.read(parsed.topic, rule)
    except BrokerUnavailable:
        raise ApiError(503, "The realtime broker is unavailable; the devices could not be read.") from None
    data: dict[str, Any] = {"connections": snapshot.connections, "users": snapshot.users}
    if snapshot.clients is not None:
        data["devices"] = [{"client": c["client"], "info": c["info"]} for c in snapshot.clients]
    count = snapshot.connections
    response = ok(data, message=f"{count} device{'' if count == 1 else 's'} listening.")
    response.headers["Cache-Control"] = "no-store"
    return response
