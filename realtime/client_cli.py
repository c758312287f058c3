"""``realtime listen``: the client SDK (:mod:`realtime.client`) as a command."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import orjson

from realtime.client import ClientError, RealtimeClient


async def listen_command(
    url: str,
    topics: list[str],
    *,
    api_key: str = "",
    scope: str | None = None,
    since: Mapping[str, tuple[int, str]] | None = None,
    client_info: Mapping[str, Any] | None = None,
    out: TextIO | None = None,
) -> int:
    """``realtime listen``: print every event as one JSON line until SIGINT/SIGTERM.

    Lines: ``{"type":"MESSAGE","topic":"...","message":"..."}`` (plus ``"offset"`` and
    ``"epoch"`` on topics with history), or ``{"type":"GAP"|"AUTH_REVOKED"|"RECONNECTED",
    "topics":[...]}`` (a GAP also has ``"reason"``), or on topics with ``join_leave``
    ``{"type":"JOIN"|"LEAVE","topic":"...","user":"..."|null,"client":"...","info":{...}}``
    (``client_info``: this listener's own info, shown in presence). ``since``: resume these topics after
    these positions (``{topic: (offset, epoch)}``, from earlier MESSAGE lines): the server
    first sends what its history holds after them. Status goes to stderr, one line each:
    listening, and every failed or lost connection with the delay before the next try
    (``not listening: ClientConnectorError: Cannot connect to host ... (URL); retrying in 1.2 s``).

    Returns:
        0 when stopped by a signal, 2 when the LISTEN or the token was refused or ``since``
        names a topic not in ``topics``.
    """
    stray = sorted(set(since or {}) - set(topics))
    if stray:
        print(f"error: --since names topics not listened to: {' '.join(stray)}", file=sys.stderr)
        return 2
    out = out or sys.stdout
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    assert task is not None
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, task.cancel)

    def report(reason: str, delay: float) -> None:
        print(f"not listening: {reason} ({url}); retrying in {delay:.1f} s", file=sys.stderr, flush=True)

    try:
        async with RealtimeClient(
            url, topics, api_key=api_key or None, scope=scope, on_retry=report, since=since, client_info=client_info
        ) as client:
            print(f"listening to {' '.join(topics)} on {url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
            async for event in client:
                out.write(orjson.dumps(event.to_dict()).decode() + "\n")
                out.flush()
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except asyncio.CancelledError:
        task.uncancel()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return 0
