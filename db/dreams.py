"""Dreams (e-dream compatible) and their votes.

Rows are returned as plain dicts keyed by column name, plus ``user_name`` (the owner's
name). Column names in dynamic SQL always come from :data:`COLUMNS`, never from input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from db.errors import NotFound
from db.users import parse_uuid

STATUSES = ("none", "queue", "processing", "failed", "processed")
#: Columns a request may set (through the REST schemas).
COLUMNS = frozenset(
    {
        "name", "description", "status", "media_type", "video", "original_video", "thumbnail", "filmstrip",
        "processed_video_size", "processed_video_frames", "processed_video_fps", "processed_media_width",
        "processed_media_height", "render_duration", "activity_level", "feature_rank", "nsfw", "hidden",
        "ccby_license", "source_url", "md5", "prompt", "error",
    }
)  # fmt: skip
_WITH_OWNER = "SELECT d.*, u.name AS user_name FROM d JOIN users u ON u.id = d.user_id"


def _assignments(values: Mapping[str, Any], start: int) -> tuple[str, list[Any]]:
    names = sorted(values)
    unknown = set(names) - COLUMNS
    if unknown:
        raise ValueError(f"not dream columns: {', '.join(sorted(unknown))}")
    return ", ".join(f"{n} = ${i}" for i, n in enumerate(names, start)), [values[n] for n in names]


async def create_dream(conn: Any, user_id: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """Insert a dream owned by ``user_id``; returns its row."""
    names = sorted(values)
    if set(names) - COLUMNS:
        raise ValueError("not dream columns")
    cols = ", ".join(["user_id", *names])
    params = ", ".join(f"${i}" for i in range(1, len(names) + 2))
    row = await conn.fetchrow(
        f"WITH d AS (INSERT INTO dreams ({cols}) VALUES ({params}) RETURNING *) {_WITH_OWNER}",  # noqa: S608
        parse_uuid(user_id),
        *[values[n] for n in names],
    )
    return dict(row)


async def get_dream(conn: Any, dream_uuid: str) -> dict[str, Any]:
    """The dream ``dream_uuid`` (not deleted).

    Raises:
        NotFound: no such dream, or it is deleted.
    """
    row = await conn.fetchrow(
        f"WITH d AS (SELECT * FROM dreams WHERE uuid = $1 AND deleted_at IS NULL) {_WITH_OWNER}",  # noqa: S608
        parse_uuid(dream_uuid),
    )
    if row is None:
        raise NotFound(f"no dream {dream_uuid}")
    return dict(row)


async def list_dreams(
    conn: Any,
    *,
    take: int,
    skip: int,
    status: str | None = None,
    owner_id: str | None = None,
    viewer_id: str | None = None,
    see_hidden: bool = False,
) -> tuple[list[dict[str, Any]], int]:
    """Dreams, newest first, and how many match in all.

    Args:
        conn: an asyncpg connection.
        take: page size.
        skip: rows to skip.
        status: only this status.
        owner_id: only this owner's dreams.
        viewer_id: hidden dreams of this user are included.
        see_hidden: include every hidden dream (admins).
    """
    where: list[str] = ["deleted_at IS NULL"]
    args: list[Any] = []
    if status is not None:
        args.append(status)
        where.append(f"status = ${len(args)}")
    if owner_id is not None:
        args.append(parse_uuid(owner_id))
        where.append(f"user_id = ${len(args)}")
    if not see_hidden:
        args.append(parse_uuid(viewer_id) if viewer_id else None)
        where.append(f"(NOT hidden OR user_id = ${len(args)})")
    cond = " AND ".join(where)
    count = await conn.fetchval(f"SELECT count(*) FROM dreams WHERE {cond}", *args)  # noqa: S608
    rows = await conn.fetch(
        f"WITH d AS (SELECT * FROM dreams WHERE {cond} ORDER BY created_at DESC, uuid "  # noqa: S608
        f"LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}) {_WITH_OWNER} ORDER BY d.created_at DESC, d.uuid",
        *args,
        take,
        skip,
    )
    return [dict(r) for r in rows], int(count)


async def update_dream(conn: Any, dream_uuid: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """Set ``values`` on a dream (``updated_at`` too); ``status = 'processed'`` also sets ``processed_at``.

    Raises:
        NotFound: no such dream, or it is deleted.
    """
    sets, args = _assignments(values, 2)
    extra = ", processed_at = now()" if values.get("status") == "processed" else ""
    sets = f"{sets}, " if sets else ""
    row = await conn.fetchrow(
        f"WITH d AS (UPDATE dreams SET {sets}updated_at = now(){extra} "  # noqa: S608
        f"WHERE uuid = $1 AND deleted_at IS NULL RETURNING *) {_WITH_OWNER}",
        parse_uuid(dream_uuid),
        *args,
    )
    if row is None:
        raise NotFound(f"no dream {dream_uuid}")
    return dict(row)


async def delete_dream(conn: Any, dream_uuid: str) -> dict[str, Any]:
    """Soft-delete a dream; returns its row.

    Raises:
        NotFound: no such dream, or it is already deleted.
    """
    row = await conn.fetchrow(
        "WITH d AS (UPDATE dreams SET deleted_at = now(), updated_at = now() "  # noqa: S608
        f"WHERE uuid = $1 AND deleted_at IS NULL RETURNING *) {_WITH_OWNER}",
        parse_uuid(dream_uuid),
    )
    if row is None:
        raise NotFound(f"no dream {dream_uuid}")
    return dict(row)


async def vote(conn: Any, dream_uuid: str, user_id: str, value: int) -> dict[str, Any]:
    """Record a user's vote (``1`` up, ``-1`` down, ``0`` removes it) and recount.

    One vote per user per dream: a new vote replaces the old one. Call inside a transaction.

    Raises:
        NotFound: no such dream, or it is deleted.
    """
    dream = parse_uuid(dream_uuid)
    exists = await conn.fetchval("SELECT 1 FROM dreams WHERE uuid = $1 AND deleted_at IS NULL FOR UPDATE", dream)
    if exists is None:
        raise NotFound(f"no dream {dream_uuid}")
    user = parse_uuid(user_id)
    if value == 0:
        await conn.execute("DELETE FROM dream_votes WHERE dream_uuid = $1 AND user_id = $2", dream, user)
    else:
        await conn.execute(
            "INSERT INTO dream_votes (dream_uuid, user_id, vote) VALUES ($1, $2, $3) "
            "ON CONFLICT (dream_uuid, user_id) DO UPDATE SET vote = EXCLUDED.vote, created_at = now()",
            dream,
            user,
            value,
        )
    row = await conn.fetchrow(
        "WITH c AS (SELECT count(*) FILTER (WHERE vote = 1) AS up, count(*) FILTER (WHERE vote = -1) AS down "  # noqa: S608
        "FROM dream_votes WHERE dream_uuid = $1), d AS (UPDATE dreams SET upvotes = c.up, downvotes = c.down, "
        f"updated_at = now() FROM c WHERE uuid = $1 RETURNING dreams.*) {_WITH_OWNER}",
        dream,
    )
    return dict(row)
