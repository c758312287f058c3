"""``POST /api/v1/remote-control``: send a remote-control event to every device of the caller."""

from __future__ import annotations

from aiohttp import web

from http_api.appkeys import NODE
from http_api.auth import authenticate
from http_api.envelope import enveloped, fail, ok, read_body
from http_api.schemas import RemoteControlSchema
from realtime.errors import BadMessage, BrokerUnavailable
from topics import BadTopic


@enveloped
async def remote_control(request: web.Request) -> web.Response:
    """Publish ``{"event": ..., "uuid"?, "frameNumber"?, ...}`` on ``remote-control:command.<user id>``.

    The user id is the caller's: the ``sub`` of their WS tokens, so every device of that
    user LISTENing on its own topic receives the event, and nobody else does.

    Returns:
        202 envelope whose ``data`` is the event as published.

    Raises:
        web.HTTPException: 401, 400 (unknown event or bad fields), 503 (the broker did not
            take it: it was not sent).
    """
    principal = await authenticate(request)
    body = await read_body(request, RemoteControlSchema())
    try:
        await request.app[NODE].publish(f"remote-control:command.{principal.user_id}", body)
    except BadTopic:
        raise fail(400, "This caller's user id cannot be a topic target.") from None
    except BadMessage as exc:
        raise fail(400, str(exc)) from None
    except BrokerUnavailable:
        raise fail(503, "The realtime broker is unavailable; the command was not sent.") from None
    return ok(body, status=202, message="Command sent.")
