"""``/api/v1/dream``: dreams, their status and votes (e-dream compatible).

Every change is made in a transaction that publishes the dream's public JSON on
``dream:update.<uuid>`` (status changes also on ``dream:job:progress.<uuid>``) before it
commits: if the broker does not take the message the change is rolled back and the
caller gets a 503, so a 2xx always means "saved and announced".
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from db import dreams as repo
from db.users import ADMIN, CREATOR
from http_api.appkeys import DATABASE, NODE
from http_api.auth import authenticate
from http_api.envelope import enveloped, fail, ok, read_body, validate
from http_api.principal import Principal
from http_api.schemas import (
    DreamCreateSchema,
    DreamListQuerySchema,
    DreamUpdateSchema,
    FailedSchema,
    ProcessedSchema,
    ProcessingSchema,
    dump_dream,
)
from realtime.errors import BadMessage, BrokerUnavailable
from topics import BadTopic

STATUS_SCOPE = "dream:write:status"
_STATUS_SCHEMAS = {"processing": ProcessingSchema, "processed": ProcessedSchema, "failed": FailedSchema}
_VOTES = {"upvote": 1, "downvote": -1, "unvote": 0}


def is_admin(principal: Principal) -> bool:
    """The caller is a database user with the ``admin-group`` role."""
    return principal.db_user and principal.role == ADMIN


def _may_edit(principal: Principal, row: dict[str, Any]) -> bool:
    return is_admin(principal) or (principal.db_user and str(row["user_id"]) == principal.user_id)


def _require_db_user(principal: Principal) -> None:
    if not principal.db_user:
        raise fail(403, "Action not allowed: this needs a user account, not a configured API key.")


@asynccontextmanager
async def _changing(request: web.Request) -> AsyncIterator[Any]:
    async with request.app[DATABASE].acquire() as conn, conn.transaction():
        yield conn


async def _announce(request: web.Request, row: dict[str, Any], *, progress: bool = False) -> dict[str, Any]:
    public = dump_dream(row)
    topics = [f"dream:update.{public['uuid']}"] + ([f"dream:job:progress.{public['uuid']}"] if progress else [])
    # dream topics are public: a hidden dream announces only that it changed, not its content
    announced = {k: public.get(k) for k in _HIDDEN_FIELDS} if row["hidden"] else public
    try:
        for topic in topics:
            await request.app[NODE].publish(topic, announced)
    except BadMessage as exc:
        raise fail(400, f"The dream cannot be published: {exc}") from None
    except (BadTopic, BrokerUnavailable):
        raise fail(503, "The realtime broker is unavailable; nothing was changed.") from None
    return public


_HIDDEN_FIELDS = ("uuid", "hidden", "updated_at", "deleted_at")


def _view(principal: Principal, row: dict[str, Any]) -> dict[str, Any]:
    return dump_dream(row, admin=is_admin(principal))


@enveloped
async def list_dreams(request: web.Request) -> web.Response:
    """``GET /api/v1/dream?status=&take=&skip=&userUUID=``: ``{dreams, count}``, newest first."""
    principal = await authenticate(request)
    query = validate(DreamListQuerySchema(), dict(request.query.items()))
    owner = query.get("user_uuid")
    return await _list(request, principal, query, None if owner is None else str(owner))


@enveloped
async def my_dreams(request: web.Request) -> web.Response:
    """``GET /api/v1/dream/my-dreams``: the caller's dreams (hidden ones included)."""
    principal = await authenticate(request)
    _require_db_user(principal)
    query = validate(DreamListQuerySchema(only=("status", "take", "skip")), dict(request.query.items()))
    return await _list(request, principal, query, principal.user_id)


async def _list(request: web.Request, principal: Principal, query: dict[str, Any], owner: str | None) -> web.Response:
    async with request.app[DATABASE].acquire() as conn:
        rows, count = await repo.list_dreams(
            conn,
            take=query["take"],
            skip=query["skip"],
            status=query.get("status"),
            owner_id=owner,
            viewer_id=principal.user_id if principal.db_user else None,
            see_hidden=is_admin(principal),
        )
    return ok({"dreams": [_view(principal, r) for r in rows], "count": count})


@enveloped
async def get_dream(request: web.Request) -> web.Response:
    """``GET /api/v1/dream/{uuid}``: hidden dreams are 404 unless the caller owns them or is an admin."""
    principal = await authenticate(request)
    async with request.app[DATABASE].acquire() as conn:
        row = await repo.get_dream(conn, request.match_info["uuid"])
    if row["hidden"] and not _may_edit(principal, row):
        raise fail(404)
    return ok({"dream": _view(principal, row)})


@enveloped
async def create_dream(request: web.Request) -> web.Response:
    """``POST /api/v1/dream`` (creators and admins): 201 ``{dream}``."""
    principal = await authenticate(request)
    if not principal.db_user or principal.role not in (CREATOR, ADMIN):
        raise fail(403)
    body = await read_body(request, DreamCreateSchema())
    async with _changing(request) as conn:
        row = await repo.create_dream(conn, principal.user_id, body)
        await _announce(request, row)
    return ok({"dream": _view(principal, row)}, status=201)


@enveloped
async def update_dream(request: web.Request) -> web.Response:
    """``PUT /api/v1/dream/{uuid}`` (owner or admin; ``featureRank`` admins only)."""
    principal = await authenticate(request)
    body = await read_body(request, DreamUpdateSchema())
    if "feature_rank" in body and not is_admin(principal):
        raise fail(403)
    async with _changing(request) as conn:
        row = await repo.get_dream(conn, request.match_info["uuid"])
        if not _may_edit(principal, row):
            raise fail(403)
        row = await repo.update_dream(conn, request.match_info["uuid"], body)
        await _announce(request, row)
    return ok({"dream": _view(principal, row)})


@enveloped
async def delete_dream(request: web.Request) -> web.Response:
    """``DELETE /api/v1/dream/{uuid}`` (owner or admin): soft delete."""
    principal = await authenticate(request)
    async with _changing(request) as conn:
        row = await repo.get_dream(conn, request.match_info["uuid"])
        if not _may_edit(principal, row):
            raise fail(403)
        row = await repo.delete_dream(conn, request.match_info["uuid"])
        await _announce(request, row)
    return ok({"dream": _view(principal, row)}, message="Dream deleted.")


@enveloped
async def set_status(request: web.Request) -> web.Response:
    """``POST /api/v1/dream/{uuid}/status/{status}`` (admins, or keys with ``dream:write:status``)."""
    principal = await authenticate(request)
    if not (is_admin(principal) or STATUS_SCOPE in principal.scopes):
        raise fail(403)
    status = request.match_info["status"]
    body = await read_body(request, _STATUS_SCHEMAS[status](), optional=status != "failed")
    values = {**body, "status": status, **({"error": None} if status != "failed" else {})}
    async with _changing(request) as conn:
        row = await repo.update_dream(conn, request.match_info["uuid"], values)
        await _announce(request, row, progress=True)
    return ok({"dream": _view(principal, row)})


@enveloped
async def vote(request: web.Request) -> web.Response:
    """``PUT /api/v1/dream/{uuid}/upvote|downvote|unvote``: one vote per user."""
    principal = await authenticate(request)
    _require_db_user(principal)
    async with _changing(request) as conn:
        row = await repo.get_dream(conn, request.match_info["uuid"])
        if row["hidden"] and not _may_edit(principal, row):
            raise fail(404)
        row = await repo.vote(conn, request.match_info["uuid"], principal.user_id, _VOTES[request.match_info["vote"]])
        await _announce(request, row)
    return ok({"dream": _view(principal, row)})
