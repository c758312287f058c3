"""Sub-millisecond one-shot timer for write pacing (Linux ``timerfd``).

The loops' own timers are millisecond timers: uvloop rounds a delay to whole milliseconds
against a loop clock cached at the start of the pass, asyncio rounds its ``epoll_wait``
timeout up to one, so a few-millisecond ``call_later`` fires up to about a millisecond early
or late (figures in docs/benchmarks.md). For write pacing both errors cost: a late fire adds
to every batched frame's latency bound, an early one adds a socket write per connection.

:class:`PreciseTimer` arms a ``timerfd`` (timerfd_create(2); CLOCK_MONOTONIC, the clock of
:func:`time.monotonic`) with an absolute expiry and lets the loop watch it like a socket: on
both loops it fires well under a millisecond late. Arming is one ``timerfd_settime`` call
through ctypes, so it is meant for a few hundred arms a second, not per message.
Where there is no timerfd (not Linux, no libc), it falls back to ``loop.call_at``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import math
import os
import sys
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger("realtime.timer")

_CLOCK_MONOTONIC = 1
_TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _load_timerfd() -> tuple[Callable[..., int], Callable[..., int]] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        create, settime = libc.timerfd_create, libc.timerfd_settime
    except (OSError, AttributeError):
        return None
    create.argtypes = [ctypes.c_int, ctypes.c_int]
    create.restype = ctypes.c_int
    settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec), ctypes.c_void_p]
    settime.restype = ctypes.c_int
    return create, settime


_TIMERFD = _load_timerfd()


class PreciseTimer:
    """One pending callback at a time, at an absolute :func:`time.monotonic` time.

    Not thread-safe; use it from its loop's thread. :meth:`close` releases the timerfd
    (also done when the object is collected).

    Attributes:
        precise: ``True`` when backed by a timerfd, ``False`` on the ``call_at`` fallback.
    """

    __slots__ = ("_callback", "_fallback", "_fd", "_loop", "_spec", "precise")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        """Args:
        loop: the loop that runs the callbacks (the timerfd is opened on first use).
        """
        self._loop = loop
        self._callback: Callable[[], object] | None = None
        self._fallback: asyncio.TimerHandle | None = None
        self._fd = -1
        self._spec = _Itimerspec()
        self.precise = _TIMERFD is not None

    @property
    def armed(self) -> bool:
        """``True`` while a callback is pending."""
        return self._callback is not None

    def call_at(self, when: float, callback: Callable[[], object]) -> None:
        """Run ``callback`` on the loop at ``when`` (seconds, :func:`time.monotonic`),
        replacing any pending one. A time already past runs it on the next pass."""
        self._callback = None  # armed only once the expiry is set (a failure leaves it unarmed)
        if self.precise and (self._fd >= 0 or self._open()):
            assert _TIMERFD is not None
            ns = max(math.ceil(when * 1e9), 1)  # never early; an all-zero expiry would disarm
            value = self._spec.it_value
            value.tv_sec, value.tv_nsec = divmod(ns, 1_000_000_000)
            if _TIMERFD[1](self._fd, _TFD_TIMER_ABSTIME, ctypes.byref(self._spec), None) == 0:
                self._callback = callback
                return
            self._degrade(OSError(ctypes.get_errno(), "timerfd_settime failed"))
        if self._fallback is not None:
            self._fallback.cancel()
        self._fallback = self._loop.call_later(when - time.monotonic(), self._fire)
        self._callback = callback

    def cancel(self) -> None:
        """Drop the pending callback, if any (the timerfd is disarmed)."""
        if self._callback is None:
            return
        self._callback = None
        if self._fallback is not None:
            self._fallback.cancel()
            self._fallback = None
        elif self._fd >= 0 and _TIMERFD is not None:
            self._spec.it_value.tv_sec = self._spec.it_value.tv_nsec = 0
            _TIMERFD[1](self._fd, _TFD_TIMER_ABSTIME, ctypes.byref(self._spec), None)

    def close(self) -> None:
        """Cancel and release the timerfd; the timer stays usable (on first use it reopens)."""
        self.cancel()
        fd, self._fd = self._fd, -1
        if fd >= 0:
            if not self._loop.is_closed():
                self._loop.remove_reader(fd)
            os.close(fd)

    def __del__(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(Exception):  # also at interpreter shutdown
                os.close(self._fd)

    def _open(self) -> bool:
        assert _TIMERFD is not None
        fd = _TIMERFD[0](_CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            self._degrade(OSError(ctypes.get_errno(), "timerfd_create failed"))
            return False
        try:
            self._loop.add_reader(fd, self._expired)
        except (NotImplementedError, RuntimeError, OSError, ValueError) as exc:  # loop cannot watch it
            os.close(fd)
            self._degrade(exc)
            return False
        self._fd = fd
        return True

    def _degrade(self, exc: BaseException) -> None:
        log.warning("precise_timer_unavailable", error=str(exc))
        self.precise = False
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

    def _expired(self) -> None:
        try:
            os.read(self._fd, 8)  # the expiration count; clears readiness
        except OSError:  # EAGAIN: re-armed or disarmed since epoll saw it; EBADF: closed meanwhile
            return
        self._fire()

    def _fire(self) -> None:
        self._fallback = None
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()
