"""``GET /history/{topic}``: read what a topic's history still holds.

Only topics whose policy rule keeps history (``history_size > 0``) have one. A caller reads
a topic if it may LISTEN to it (the rule's scope, and for ``target = "self"`` a topic whose
target is its own user id; a public topic needs only authentication), or holds
``realtime:history`` (any topic).

Paging: ``publications`` come oldest first, after offset ``since``; ask again with
``since`` set to the last one's offset until a page comes back empty (or its last offset
equals ``offset``). An ``epoch`` that changes between pages means the history was reset:
start again from ``since=0``. ``first > since + 1`` means the publications between fell
out of history (too many since, or expired).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from marshmallow import Schema, ValidationError, fields, validate

from http_api.api_error import ApiError, AuthError, AuthReason
from http_api.appkeys import NODE
from http_api.auth import HISTORY_SCOPE, authenticate
from http_api.body import validate as load_query
from http_api.errors import json_response
from http_api.principal import Principal
from realtime.errors import BrokerUnavailable, NoHistory
from realtime.history import MAX_OFFSET, HistoryPage
from topics import BadTopic, ParsedTopic, TopicRule

MAX_LIMIT = 1000
"""Most publications one page may ask for (``limit``); the rule's ``history_size`` caps it too."""
DEFAULT_LIMIT = 100


class _Count(fields.Integer):
    """A non-negative integer written in ASCII digits only (no sign, space, ``_`` or ``.``)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if not (isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 16):
            raise ValidationError("must be a non-negative integer")
        return int(value)


class HistoryQuery(Schema):
    """Query string of ``GET /history/{topic}``: ``since`` (default 0), ``limit`` (default 100)."""

    since = _Count(
        load_default=0,
        validate=validate.Range(min=0, max=MAX_OFFSET),
        metadata={"description": "return the publications after this offset (0: all history holds)"},
    )
    limit = _Count(
        load_default=DEFAULT_LIMIT,
        validate=validate.Range(min=0, max=MAX_LIMIT),
        metadata={"description": "at most this many (also at most the topic's history_size); 0: the position only"},
    )


class PublicationSchema(Schema):
    """One kept publication: ``{"offset": int, "message": str}``."""

    offset = fields.Integer(metadata={"description": "1 for the topic's first publication in this epoch, then +1"})
    message = fields.String(metadata={"description": "the text clients got as data.message"})


class HistorySchema(Schema):
    """200 of ``GET /history/{topic}``."""

    topic = fields.String()
    offset = fields.Integer(metadata={"description": "the topic's last offset (0: nothing published in this epoch)"})
    epoch = fields.String(metadata={"description": "changes whenever the topic's history was lost or reset"})
    first = fields.Integer(metadata={"description": "the oldest offset history holds (offset + 1 when it holds none)"})
    publications = fields.List(fields.Nested(PublicationSchema), metadata={"description": "oldest first"})


_QUERY = HistoryQuery()  # a schema instance is reusable; building one deep-copies its fields


async def read_history(request: web.Request) -> web.Response:
    """Read a topic's history: the publications after ``since``, oldest first.

    Returns:
        200 ``{"topic": str, "offset": int, "epoch": str, "first": int,
        "publications": [{"offset": int, "message": str}, ...]}`` with
        ``Cache-Control: no-store``.

    Raises:
        AuthError: 401; 403 (the topic's scope missing, named in ``missing_scopes``, or
            someone else's ``self`` topic).
        ApiError: 400 (``topic``, ``since`` or ``limit``, naming the field), 404 (the
            topic's rule keeps no history), 503 (the broker could not be read).
    """
    principal = await authenticate(request)
    query = load_query(_QUERY, dict(request.query.items()))
    node = request.app[NODE]
    try:
        parsed, rule = node.policy.check(request.match_info["topic"])
    except BadTopic as exc:
        raise ApiError(400, str(exc), fields={"topic": [str(exc)]}) from None
    if not rule.has_history:
        raise ApiError(404, f"topic {parsed.topic} keeps no history (its rule's history_size is 0)")
    check_access(principal, parsed, rule)
    try:
        _, _, page = await node.history(parsed.topic, since=query["since"], limit=query["limit"])
    except NoHistory as exc:  # the check above makes it unlikely; kept for a policy read twice
        raise ApiError(404, str(exc)) from None
    except BrokerUnavailable as exc:
        raise ApiError(503, f"history not read: {exc}") from None
    return json_response(dump_page(parsed.topic, page), headers={"Cache-Control": "no-store"})


def check_access(principal: Principal, parsed: ParsedTopic, rule: TopicRule, *, any_topic: str = HISTORY_SCOPE) -> None:
    """Allow the scope ``any_topic`` (``realtime:history``; ``realtime:presence`` for
    ``GET /presence``), or whoever may LISTEN to the topic.

    Raises:
        AuthError: 403, naming the missing scope, or saying the topic is not the caller's.
    """
    if any_topic in principal.scopes:
        return
    if rule.scope is not None and rule.scope not in principal.scopes:
        message = f"reading topic {parsed.topic} needs the scope {rule.scope} (or {any_topic})"
        raise AuthError(AuthReason.FORBIDDEN, message, missing_scopes=[rule.scope])
    if rule.target == "self" and parsed.target != str(principal.user_id):
        message = f"topic {parsed.topic} is not yours: its target must be your user id (or use {any_topic})"
        raise AuthError(AuthReason.FORBIDDEN, message)


def dump_page(topic: str, page: HistoryPage) -> dict[str, Any]:
    """The JSON body of a history page (see :class:`HistorySchema`)."""
    return {
        "topic": topic,
        "offset": page.offset,
        "epoch": page.epoch,
        "first": page.first,
        "publications": [{"offset": p.offset, "message": p.message} for p in page.publications],
    }
