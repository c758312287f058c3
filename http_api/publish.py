"""``POST /publish``: publish one message for backend services."""

from __future__ import annotations

from aiohttp import web
from marshmallow import Schema, fields

from http_api.appkeys import NODE
from http_api.auth import PUBLISH_SCOPE, authenticate, require_scope
from http_api.body import load_json
from http_api.errors import json_error, json_response
from realtime.errors import BadMessage, BrokerUnavailable
from topics import BadTopic


class PublishRequest(Schema):
    """``{"topic": str, "message": str | any JSON value}``."""

    topic = fields.String(required=True)
    message = fields.Raw(required=True, allow_none=True)


_PUBLISH = PublishRequest()  # a schema instance is reusable; building one deep-copies its fields


async def publish(request: web.Request) -> web.Response:
    """Publish ``message`` on ``topic`` to every instance.

    Needs an API key with the ``realtime:publish`` scope.

    Returns:
        202 ``{"status": "accepted", "topic": str}`` once the broker took it.

    Raises:
        web.HTTPException: 401/403 (auth), 400 (body or topic, naming the field),
            503 (the broker did not take the message: it was not sent).
    """
    principal = await authenticate(request)
    require_scope(principal, PUBLISH_SCOPE)
    body = await load_json(request, _PUBLISH, allow_nul=True)  # messages never touch the database
    try:
        topic = await request.app[NODE].publish(body["topic"], body["message"])
    except BadTopic as exc:
        raise json_error(400, str(exc), fields={"topic": [str(exc)]}) from None
    except BadMessage as exc:
        raise json_error(400, str(exc), fields={"message": [str(exc)]}) from None
    except BrokerUnavailable as exc:
        raise json_error(503, f"message not sent: {exc}") from None
    return json_response({"status": "accepted", "topic": topic}, status=202)
