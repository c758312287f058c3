"""Sockets that have not completed a request: deadlines, a per-address cap, and shedding.

A client can hold a socket open without ever finishing a request: a partial request head, a
single byte, nothing at all, a body trickled a byte at a time, or an idle keep-alive
connection. Each costs a file descriptor, and once the process's ``RLIMIT_NOFILE`` is used up
``accept()`` fails and nobody, not even ``GET /health``, gets an answer. :class:`StallGuard`
keeps every such *pending* socket in one of three phases, each a dict in arrival order:

- ``HEAD``: accepted, the first request head not complete yet. Closed ``HTTP_HEAD_TIMEOUT``
  seconds after the accept.
- ``BODY``: a head arrived, its body has not. The owner is told ``HTTP_BODY_TIMEOUT`` seconds
  after the head (it answers 408 or closes).
- ``IDLE``: a keep-alive connection between requests. aiohttp closes it after
  ``HTTP_KEEPALIVE_TIMEOUT`` seconds; here it only counts and may be shed.

One loop timer sweeps the fronts of the ``HEAD`` and ``BODY`` dicts (a phase's deadlines come
in arrival order, so a sweep touches only what expired): no timer per socket. Pending sockets
of one peer address are capped (``MAX_PENDING_PER_IP``): a new one beyond the cap closes that
address's oldest once that one has been pending ``PER_IP_GRACE`` seconds (a burst of fresh
connections from one address is admitted). Open client sockets are counted, and once they would leave fewer than a
reserve of descriptors free under ``RLIMIT_NOFILE`` each new one closes the oldest pending
socket, so ``accept()`` never fails while a stalled socket could go instead. An upgraded
WebSocket, or a request being handled, is never pending and never shed.

The cost on the WebSocket fast path: one dict insert at accept, one removal when the
handshake completes, and two counter updates (it replaces the per-socket head timer).
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from collections.abc import Callable
from typing import Protocol

import structlog

log = structlog.get_logger("realtime.stall")

HEAD, BODY, IDLE = range(3)
_PHASE_NAMES = ("head", "body", "idle")
LOG_INTERVAL = 10.0
"""Seconds between two ``stalled_sockets_closed`` log lines (counts are summed in between)."""
PER_IP_GRACE = 1.0
"""Seconds a socket must have been pending before the per-address cap may close it: a burst
of fresh connections from one address (a NAT, a benchmark) is not shed, only stalled ones."""
RECOUNT_INTERVAL = 1.0
"""Seconds between two recounts of the process's open descriptors (near the limit only)."""


class Closable(Protocol):
    """What the guard keys a pending socket by: its transport (``abort`` drops it at once)."""

    def abort(self) -> None: ...


Expire = Callable[[], None]


class StallGuard:
    """The registry of pending sockets of one server (one event loop).

    Attributes:
        sockets: open client sockets (accepted, not yet lost), WebSockets included.
        budget: client sockets allowed before the oldest pending one is shed (0: no budget).
        closed: sockets this guard closed, by reason (``head_timeout``, ``body_timeout``,
            ``per_ip``, ``fd_pressure``).
    """

    __slots__ = (
        "_base", "_by_ip", "_clock", "_fd_count", "_last_log", "_last_recount", "_limit", "_logged",
        "_max_per_ip", "_phases", "_reserve", "_timeouts", "_timer", "budget", "closed", "sockets",
    )  # fmt: skip

    def __init__(
        self,
        *,
        head_timeout: float,
        body_timeout: float,
        max_per_ip: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Args:
        head_timeout: seconds from accept to a complete first request head.
        body_timeout: seconds from a request head to the end of its body.
        max_per_ip: pending sockets per peer address (0: no cap).
        clock: monotonic clock in seconds (the event loop's ``time`` when serving).
        """
        self._timeouts = (head_timeout, body_timeout, 0.0)
        self._max_per_ip = max_per_ip
        self._clock = clock
        self._phases: tuple[dict[Closable, tuple[str, float, Expire | None]], ...] = ({}, {}, {})
        # per address, its pending sockets in the order they started waiting (clock time):
        # the first is its oldest, so the per-address cap sheds in O(1)
        self._by_ip: dict[str, dict[Closable, float]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._fd_count: Callable[[], int] | None = None
        self._base = 0
        self._limit = 0
        self._reserve = 0
        self._last_recount = -RECOUNT_INTERVAL
        self._last_log = 0.0
        self._logged: dict[str, int] = {}
        self.sockets = 0
        self.budget = 0
        self.closed: dict[str, int] = {}

    # -- file descriptors -----------------------------------------------------------

    def limit_descriptors(self, limit: int, in_use: int, fd_count: Callable[[], int] | None = None) -> None:
        """Set the socket budget from the process's descriptor limit.

        Args:
            limit: the soft ``RLIMIT_NOFILE``.
            in_use: descriptors open now that are not client sockets (listening sockets,
                the event loop, Redis, the database pool, logs).
            fd_count: counts the process's open descriptors; called at most once per
                ``RECOUNT_INTERVAL`` when the budget is reached, so descriptors opened later
                for other things (a database pool growing) shrink the budget.
        """
        self._reserve = max(32, limit // 64)
        self._base = in_use
        self.budget = max(limit - in_use - self._reserve, 1)
        self._fd_count = fd_count
        self._limit = limit

    def accepted(self, key: Closable, ip: str) -> None:
        """Count a socket just accepted and register it pending in ``HEAD`` (the fast path:
        no lookup of an earlier entry). Over the descriptor budget the oldest pending socket
        is shed first; at the per-address cap, ``ip``'s oldest.

        Args:
            key: the socket's transport.
            ip: its peer address.
        """
        self.sockets += 1
        if self.budget and self.sockets > self.budget:
            self._over_budget()
        mine = self._by_ip.get(ip)
        if mine is None:
            mine = self._by_ip[ip] = {}
        elif self._max_per_ip and len(mine) >= self._max_per_ip:
            self._shed_from(ip)
            mine = self._by_ip.setdefault(ip, {})
        now = self._clock()
        self._phases[HEAD][key] = (ip, now, None)
        mine[key] = now
        if self._timer is None:
            self._arm()

    def lost(self) -> None:
        """Count a client socket that closed."""
        self.sockets -= 1

    def _over_budget(self) -> None:
        now = self._clock()
        if self._fd_count is not None and now - self._last_recount >= RECOUNT_INTERVAL:
            self._last_recount = now
            try:
                others = self._fd_count() - self.sockets
            except OSError:
                others = self._base
            self._base = max(others, 0)
            self.budget = max(self._limit - self._base - self._reserve, 1)
            if self.sockets <= self.budget:
                return
        oldest = self._oldest(None)
        if oldest is not None:
            self._close(oldest, "fd_pressure")

    # -- pending sockets ------------------------------------------------------------

    def waiting(self, key: Closable, ip: str, phase: int = HEAD, expire: Expire | None = None) -> None:
        """Register ``key`` as pending in ``phase`` from now (moving it if it was pending;
        a new one beyond the per-address cap closes ``ip``'s oldest).

        Args:
            key: the socket's transport.
            ip: its peer address (the per-address cap counts by it).
            phase: ``HEAD``, ``BODY`` or ``IDLE``.
            expire: called at the ``BODY`` deadline instead of ``key.abort()``.
        """
        if self.done(key) is None and self._max_per_ip and self.pending_from(ip) >= self._max_per_ip:
            self._shed_from(ip)
        now = self._clock()
        self._phases[phase][key] = (ip, now, expire)
        self._by_ip.setdefault(ip, {})[key] = now
        if self._timer is None and phase != IDLE:
            self._arm()

    def done(self, key: Closable) -> str | None:
        """``key`` completed what it was waiting for, or closed: forget it. Returns its
        address, or ``None`` when it was not pending."""
        for phase in self._phases:
            entry = phase.pop(key, None)
            if entry is not None:
                ip = entry[0]
                mine = self._by_ip[ip]
                del mine[key]
                if not mine:
                    del self._by_ip[ip]
                return ip
        return None

    def pending(self, phase: int | None = None) -> int:
        """Pending sockets, in ``phase`` or in all."""
        if phase is not None:
            return len(self._phases[phase])
        return sum(len(p) for p in self._phases)

    def pending_from(self, ip: str) -> int:
        """Pending sockets of peer address ``ip``."""
        mine = self._by_ip.get(ip)
        return len(mine) if mine else 0

    def _oldest(self, ip: str | None, before: float = float("inf")) -> Closable | None:
        """The pending socket (of ``ip``, or of anyone) that has waited longest in its
        phase, if it has waited since before ``before`` (clock time)."""
        if ip is not None:
            mine = self._by_ip.get(ip)
            if not mine:
                return None
            key, started = next(iter(mine.items()))
            return key if started < before else None
        best: Closable | None = None
        since = before
        for phase in self._phases:  # each phase's first entry is its oldest
            for key, entry in phase.items():
                if entry[1] < since:
                    best, since = key, entry[1]
                break
        return best

    def _shed_from(self, ip: str) -> None:
        oldest = self._oldest(ip, self._clock() - PER_IP_GRACE)
        if oldest is not None:
            self._close(oldest, "per_ip")

    def _close(self, key: Closable, reason: str) -> None:
        self.done(key)
        self._count(reason)
        key.abort()

    def _count(self, reason: str) -> None:
        self.closed[reason] = self.closed.get(reason, 0) + 1
        self._logged[reason] = self._logged.get(reason, 0) + 1
        now = self._clock()
        if now - self._last_log >= LOG_INTERVAL:
            self._last_log = now
            log.warning("stalled_sockets_closed", pending=self.pending(), sockets=self.sockets, **self._logged)
            self._logged = {}

    # -- deadlines ------------------------------------------------------------------

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(min(1.0, *(t / 4 for t in self._timeouts[:2])), self.sweep)

    def sweep(self) -> None:
        """Close every ``HEAD`` socket past its deadline, tell every ``BODY`` owner past its
        own; re-arm while anything is pending in those phases."""
        self._timer = None
        now = self._clock()
        for phase in (HEAD, BODY):
            entries = self._phases[phase]
            deadline = now - self._timeouts[phase]
            while entries:
                key, (_, since, expire) = next(iter(entries.items()))
                if since > deadline:
                    break
                self.done(key)
                self._count(f"{_PHASE_NAMES[phase]}_timeout")
                if expire is not None:
                    expire()
                else:
                    key.abort()
        if self._phases[HEAD] or self._phases[BODY]:
            self._arm()

    def stop(self) -> None:
        """Cancel the sweep timer (the loop is closing)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def open_descriptors() -> int:
    """The number of descriptors this process has open (Linux: ``/proc/self/fd``).

    Raises:
        OSError: there is no ``/proc/self/fd`` (not Linux).
    """
    return len(os.listdir("/proc/self/fd")) - 1  # the listing's own descriptor


def limit_descriptors(guard: StallGuard) -> None:
    """Give ``guard`` the process's descriptor budget: the soft ``RLIMIT_NOFILE`` less what
    is open now (Linux; elsewhere, or with no limit, no budget: nothing is shed for it)."""
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit == resource.RLIM_INFINITY:
        return
    try:
        in_use = open_descriptors()
    except OSError:
        return
    guard.limit_descriptors(limit, in_use - guard.sockets, open_descriptors)
