"""FlushScheduler's pacing decision (realtime.send_queue): connections without sockets."""

from __future__ import annotations

import asyncio

from realtime.send_queue import FlushScheduler


class Conn:
    """A connection that records how many times it was written."""

    def __init__(self, name: str) -> None:
        self.id = name
        self.flushed_at = -1e9
        self.writes = 0

    def flush(self) -> int:
        self.writes += 1
        return 1


async def passes(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_frames_for_connections_not_written_lately_are_not_held_back() -> None:
    """Remote control: each frame for another connection. Nothing would merge, so no flush
    waits for the pacing timer, however soon after the previous one."""
    scheduler = FlushScheduler(asyncio.get_running_loop(), interval=0.5)
    try:
        conns = [Conn(f"d{i}") for i in range(5)]
        for conn in conns:
            scheduler.mark(conn)  # type: ignore[arg-type]
            await passes()
            assert conn.writes == 1 and not scheduler.pending
    finally:
        scheduler.close()


async def test_a_connection_getting_a_stream_is_paced() -> None:
    """A second frame for a connection written less than an interval ago waits for the
    paced flush, which then carries everything queued meanwhile."""
    scheduler = FlushScheduler(asyncio.get_running_loop(), interval=0.05)
    try:
        conn = Conn("c")
        scheduler.mark(conn)  # type: ignore[arg-type]
        await passes()
        assert conn.writes == 1
        scheduler.mark(conn)  # type: ignore[arg-type]
        await passes()
        assert conn.writes == 1 and scheduler.pending  # held back
        await asyncio.sleep(0.1)
        assert conn.writes == 2 and not scheduler.pending
    finally:
        scheduler.close()


async def test_pacing_follows_the_majority_of_the_waiting_connections() -> None:
    """Held back when at least half of the connections waiting were written lately."""
    for streaming, fresh, held in ((1, 1, True), (1, 2, False), (3, 1, True)):
        scheduler = FlushScheduler(asyncio.get_running_loop(), interval=0.5)
        try:
            old = [Conn(f"s{i}") for i in range(streaming)]
            for conn in old:
                scheduler.mark(conn)  # type: ignore[arg-type]
            scheduler.flush()
            for conn in old + [Conn(f"f{i}") for i in range(fresh)]:
                scheduler.mark(conn)  # type: ignore[arg-type]
            await passes()
            assert scheduler.pending is held, (streaming, fresh)
        finally:
            scheduler.close()
