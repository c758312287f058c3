"""``realtime migrate``, ``realtime users`` and ``realtime apikeys``.

Secrets (API keys) are printed once on stdout and never logged.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import getpass
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from db.apikeys import create_api_key, parse_duration, revoke_api_key
from db.errors import DatabaseError
from db.migrate import migrate, status
from db.pool import connection
from db.users import ROLES, USER, create_user, delete_user, list_users
from topics import BadScope, parse_scopes


def add_migrate_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``realtime migrate``."""
    parser.add_argument("--status", action="store_true", help="list migrations and whether each is applied")


def add_users_arguments(parser: argparse.ArgumentParser) -> None:
    """Sub-commands of ``realtime users``."""
    sub = parser.add_subparsers(dest="users_command", required=True)
    create = sub.add_parser("create", help="create a user; prints its uuid")
    create.add_argument("--name", required=True)
    create.add_argument("--email")
    create.add_argument("--role", choices=ROLES, default=USER)
    create.add_argument(
        "--scope",
        action="append",
        dest="scopes",
        help="a scope for the user's WS tokens (repeat; default DEFAULT_USER_SCOPES)",
    )
    sub.add_parser("list", help="list active users")
    setpw = sub.add_parser("set-password", help="set a user's login password (prompted)")
    setpw.add_argument("user_id", metavar="UUID")
    delete = sub.add_parser("delete", help="soft-delete a user: their keys and sessions stop working")
    delete.add_argument("user_id", metavar="UUID")


def add_apikeys_arguments(parser: argparse.ArgumentParser) -> None:
    """Sub-commands of ``realtime apikeys``."""
    sub = parser.add_subparsers(dest="apikeys_command", required=True)
    create = sub.add_parser("create", help="create an API key; prints it once")
    create.add_argument("--user", required=True, metavar="UUID")
    create.add_argument("--scope", action="append", dest="scopes", help="a scope (repeat; default: the user's scopes)")
    create.add_argument("--expires-in", help="lifetime such as 30d, 12h, 45m (default: never)")
    revoke = sub.add_parser("revoke", help="revoke an API key")
    revoke.add_argument("key_id", metavar="ID")


def run(
    args: argparse.Namespace,
    database_url: str,
    default_scopes: str,
    *,
    on_revoked: Callable[[str], Awaitable[None]] | None = None,
) -> int:
    """Run ``migrate``, ``users`` or ``apikeys``; returns the exit status.

    Args:
        args: the parsed arguments.
        database_url: ``DATABASE_URL``.
        default_scopes: ``DEFAULT_USER_SCOPES`` (space-separated).
        on_revoked: awaited with a user id after ``apikeys revoke`` or ``users delete``,
            to end that user's WS tokens on running servers.
    """
    if not database_url:
        print(
            "error: DATABASE_URL is not set (e.g. postgresql://user@host:5432/dbname; for the embedded "
            "database of `realtime serve`, the url in its embedded_database_started log line)",
            file=sys.stderr,
        )
        return 2
    commands: dict[str, Callable[[Any, argparse.Namespace, str], Awaitable[int]]] = {
        "migrate": _migrate,
        "users": functools.partial(_users, on_revoked=on_revoked),
        "apikeys": functools.partial(_apikeys, on_revoked=on_revoked),
    }
    try:
        return asyncio.run(_with_connection(database_url, commands[args.command], args, default_scopes))
    except (DatabaseError, ValueError, BadScope) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


async def _with_connection(
    url: str, command: Callable[[Any, argparse.Namespace, str], Awaitable[int]], args: argparse.Namespace, scopes: str
) -> int:
    async with connection(url) as conn:
        return await command(conn, args, scopes)


async def _migrate(conn: Any, args: argparse.Namespace, _scopes: str) -> int:
    if args.status:
        for s in await status(conn):
            state = "pending" if s.applied_at is None else f"applied {s.applied_at.isoformat(timespec='seconds')}"
            print(f"{s.version:04d}_{s.name}\t{state}{'  (MODIFIED since applied)' if s.modified else ''}")
        return 0
    applied = await migrate(conn)
    for m in applied:
        print(f"applied {m.version:04d}_{m.name}")
    if not applied:
        print("database is up to date")
    return 0


async def _users(
    conn: Any,
    args: argparse.Namespace,
    default_scopes: str,
    *,
    on_revoked: Callable[[str], Awaitable[None]] | None = None,
) -> int:
    if args.users_command == "create":
        scopes = parse_scopes(args.scopes if args.scopes is not None else default_scopes)
        user = await create_user(conn, name=args.name, email=args.email, role=args.role, scopes=scopes)
        print(user.id)
        return 0
    if args.users_command == "set-password":
        return await _set_password(conn, args.user_id)
    if args.users_command == "delete":
        await delete_user(conn, args.user_id)
        print(f"deleted {args.user_id}")
        if on_revoked is not None:
            await on_revoked(args.user_id)
        return 0
    for u in await list_users(conn):
        print(f"{u.id}\t{u.role}\t{u.name}\t{u.email or '-'}\t{' '.join(sorted(u.scopes)) or '-'}")
    return 0


async def _set_password(conn: Any, user_id: str) -> int:
    from db.sessions import set_password

    password = getpass.getpass("new password: ")
    if password != getpass.getpass("again: "):
        print("error: the passwords differ", file=sys.stderr)
        return 2
    await set_password(conn, user_id, password)
    print("password set")
    return 0


async def _apikeys(
    conn: Any,
    args: argparse.Namespace,
    _scopes: str,
    *,
    on_revoked: Callable[[str], Awaitable[None]] | None = None,
) -> int:
    if args.apikeys_command == "revoke":
        key = await revoke_api_key(conn, args.key_id)
        print(f"revoked {key.id}")
        if on_revoked is not None:
            await on_revoked(key.user_id)
        return 0
    expires = parse_duration(args.expires_in) if args.expires_in else None
    scopes = parse_scopes(args.scopes) if args.scopes is not None else None
    key, secret = await create_api_key(conn, user_id=args.user, scopes=scopes, expires_in=expires)
    print(f"id: {key.id}", file=sys.stderr)
    print(f"scopes: {' '.join(sorted(key.scopes)) or '-'}", file=sys.stderr)
    print("the key below is shown only once; store it now:", file=sys.stderr)
    print(secret)
    return 0
