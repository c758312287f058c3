"""The pacing timer (:class:`realtime.timer.PreciseTimer`) on asyncio and uvloop, with a
timerfd and on the ``call_at`` fallback. Correctness only: when it fires relative to its
deadline (never before it, with a timerfd), replacement, cancel, fd lifetime."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable

import pytest
import uvloop

import realtime.timer
from realtime.timer import PreciseTimer

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Callable[[], Awaitable[None]]], None]:
    def runner(main: Callable[[], Awaitable[None]]) -> None:
        with asyncio.Runner(loop_factory=LOOPS[request.param]) as r:
            r.run(main())  # type: ignore[arg-type]

    return runner


@pytest.fixture(params=["timerfd", "fallback"])
def precise(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    if request.param == "fallback":
        monkeypatch.setattr(realtime.timer, "_TIMERFD", None)
    elif realtime.timer._TIMERFD is None:
        pytest.skip("no timerfd on this platform")
    return request.param == "timerfd"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_fires_once_at_its_time(run: Callable[..., None], precise: bool) -> None:
    async def main() -> None:
        timer = PreciseTimer(asyncio.get_running_loop())
        assert timer.precise is precise
        fired: list[float] = []
        when = time.monotonic() + 0.02
        timer.call_at(when, lambda: fired.append(time.monotonic()))
        assert timer.armed
        await asyncio.sleep(0.2)
        assert len(fired) == 1 and not timer.armed
        if precise:  # a timerfd never fires early (the loops' millisecond timers can)
            assert fired[0] >= when
        timer.close()

    run(main)


def test_a_new_time_replaces_the_pending_one_and_cancel_drops_it(run: Callable[..., None], precise: bool) -> None:
    async def main() -> None:
        timer = PreciseTimer(asyncio.get_running_loop())
        fired: list[str] = []
        now = time.monotonic()
        timer.call_at(now + 0.01, lambda: fired.append("first"))
        timer.call_at(now + 0.03, lambda: fired.append("second"))
        await asyncio.sleep(0.1)
        assert fired == ["second"]
        timer.call_at(time.monotonic() + 0.01, lambda: fired.append("cancelled"))
        timer.cancel()
        assert not timer.armed
        await asyncio.sleep(0.05)
        assert fired == ["second"]
        timer.call_at(time.monotonic() - 1, lambda: fired.append("past"))  # due: next pass
        await asyncio.sleep(0.01)
        assert fired == ["second", "past"]
        timer.close()

    run(main)


def test_a_callback_may_rearm_its_timer(run: Callable[..., None], precise: bool) -> None:
    async def main() -> None:
        timer = PreciseTimer(asyncio.get_running_loop())
        ticks: list[float] = []

        def tick() -> None:
            ticks.append(time.monotonic())
            if len(ticks) < 3:
                timer.call_at(time.monotonic() + 0.005, tick)

        timer.call_at(time.monotonic(), tick)
        await asyncio.sleep(0.2)
        assert len(ticks) == 3
        timer.close()

    run(main)


def test_close_releases_the_timerfd_and_the_timer_reopens_on_use(run: Callable[..., None], precise: bool) -> None:
    async def main() -> None:
        before = open_fds()
        timer = PreciseTimer(asyncio.get_running_loop())
        assert open_fds() == before  # opened on first use, not before
        fired: list[int] = []
        timer.call_at(time.monotonic() + 0.01, lambda: fired.append(1))
        assert open_fds() == before + (1 if precise else 0)
        timer.close()
        assert open_fds() == before and not timer.armed
        await asyncio.sleep(0.03)
        assert fired == []  # closing cancels
        timer.call_at(time.monotonic() + 0.01, lambda: fired.append(2))
        await asyncio.sleep(0.1)
        assert fired == [2]
        timer.close()
        assert open_fds() == before

    run(main)


def test_node_close_releases_the_schedulers_timer(run: Callable[..., None]) -> None:
    """A Node paced by a write interval leaves no timerfd behind when closed."""
    from realtime.broker import MemoryBroker
    from realtime.node import Node
    from topics import load_policy

    async def main() -> None:
        before = open_fds()
        node = Node(broker=MemoryBroker(), policy=load_policy(None), verify=lambda t: None, write_interval=0.05)  # type: ignore[arg-type,return-value]
        await node.start()
        flushed: list[float] = []
        flush = lambda self: flushed.append(time.monotonic()) or 1  # noqa: E731
        conn = type("Conn", (), {"id": "c", "flush": flush, "flushed_at": time.monotonic()})()  # getting a stream
        node.scheduler.flush()  # just flushed: the next flush waits for the pacing timer
        node.scheduler.mark(conn)
        await asyncio.sleep(0.01)
        assert node.scheduler.pending and not flushed
        assert open_fds() == before + 1  # the pacing timer's timerfd
        await node.close()
        assert open_fds() == before
        await asyncio.sleep(0.01)
        assert len(flushed) == 1  # the cancelled paced flush's frames went out on the next pass
        node.scheduler.mark(conn)  # a straggler after close: flushed on the next pass, no new fd
        await asyncio.sleep(0.01)
        assert len(flushed) == 2 and open_fds() == before

    run(main)
