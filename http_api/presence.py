"""``GET /presence/{topic}`` and ``GET /presence/{topic}/stats``: who listens to a topic.

Only topics whose policy rule keeps presence (``presence = true``; by default
``remote-control:command``) have one. Presence is cluster-wide: every instance writes its
own connections' entries to the broker (:mod:`realtime.presence`), so any instance answers
for all of them. Who may read, as for ``GET /history/{topic}``
(:func:`http_api.history.check_access`): a caller holding ``realtime:presence`` (any
topic), or one that may LISTEN to the topic (the rule's scope, and for ``target = "self"``
a topic whose target is its own user id; a public topic needs only authentication).

An entry is ``{"user": <token sub or null>, "client": "<instance>.<connection>", "info":
{...}}``: ``info`` is what the connection's LISTEN sent as ``client_info`` (and its address
only when the operator set ``PRESENCE_SHOW_ADDRESS``); never a token.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from marshmallow import Schema, fields

from http_api.api_error import ApiError
from http_api.appkeys import NODE
from http_api.auth import PRESENCE_SCOPE, authenticate
from http_api.errors import json_response
from http_api.history import check_access
from realtime.errors import BrokerUnavailable
from realtime.presence import PresenceSnapshot
from topics import BadTopic


class PresenceClientSchema(Schema):
    """One listening connection: ``{"user", "client", "info"}``."""

    user = fields.String(allow_none=True, metadata={"description": "the sub of its WS token; null: anonymous"})
    client = fields.String(metadata={"description": "<instance id>.<connection id>: random, never an address"})
    info = fields.Dict(metadata={"description": "the client_info of its LISTEN ({} without one)"})


class PresenceStatsSchema(Schema):
    """200 of ``GET /presence/{topic}/stats``: the counts only."""

    topic = fields.String()
    connections = fields.Integer(metadata={"description": "listening connections on every instance, exact"})
    users = fields.Integer(metadata={"description": "distinct users among them (anonymous ones not counted)"})


class PresenceSchema(PresenceStatsSchema):
    """200 of ``GET /presence/{topic}``: the counts and, up to ``PRESENCE_MAX_CLIENTS``, the list."""

    clients = fields.List(
        fields.Nested(PresenceClientSchema),
        metadata={"description": "sorted by client; left out when there are more than PRESENCE_MAX_CLIENTS"},
    )


async def read_presence(request: web.Request) -> web.Response:
    """Read a topic's presence: counts and the listening connections.

    Returns:
        200 ``{"topic": str, "connections": int, "users": int, "clients": [{"user": str |
        None, "client": str, "info": {...}}, ...]}`` (``clients`` left out beyond
        ``PRESENCE_MAX_CLIENTS``) with ``Cache-Control: no-store``.

    Raises:
        AuthError: 401; 403 (the topic's scope missing, named in ``missing_scopes``, or
            someone else's ``self`` topic).
        ApiError: 400 (``topic``), 404 (the topic's rule keeps no presence), 503 (the
            broker could not be read).
    """
    return await _answer(request, counts_only=False)


async def read_presence_stats(request: web.Request) -> web.Response:
    """Read a topic's presence counts only (O(1) however many listen).

    Returns:
        200 ``{"topic": str, "connections": int, "users": int}`` with ``Cache-Control: no-store``.

    Raises:
        AuthError: 401; 403 (as :func:`read_presence`).
        ApiError: 400 (``topic``), 404 (no presence), 503 (the broker could not be read).
    """
    return await _answer(request, counts_only=True)


async def _answer(request: web.Request, *, counts_only: bool) -> web.Response:
    principal = await authenticate(request)
    node = request.app[NODE]
    try:
        parsed, rule = node.policy.check(request.match_info["topic"])
    except BadTopic as exc:
        raise ApiError(400, str(exc), fields={"topic": [str(exc)]}) from None
    if not rule.presence:
        raise ApiError(404, f"topic {parsed.topic} keeps no presence (its rule's presence is off)")
    check_access(principal, parsed, rule, any_topic=PRESENCE_SCOPE)
    try:
        snapshot = await node.presence.read(parsed.topic, rule, counts_only=counts_only)
    except BrokerUnavailable as exc:
        raise ApiError(503, f"presence not read: {exc}") from None
    return json_response(dump_presence(parsed.topic, snapshot), headers={"Cache-Control": "no-store"})


def dump_presence(topic: str, snapshot: PresenceSnapshot) -> dict[str, Any]:
    """The JSON body of a presence read (see :class:`PresenceSchema`): ``topic`` then
    :meth:`PresenceSnapshot.as_data`."""
    return {"topic": topic, **snapshot.as_data()}
