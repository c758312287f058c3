"""Per-connection outgoing path: pre-encoded frames, merged writes, bounded queues.

Fan-out never awaits a client. :meth:`SendQueue.send` appends an already-encoded
WebSocket frame (RFC 6455 section 5.2, unmasked server frame) to the connection's
pending list and marks the connection dirty; once per event-loop pass the
:class:`FlushScheduler` joins every connection's pending frames into one
``transport.write``. The same frame bytes object is shared by every listener of a
publication (encode once).

The send queue of a connection is its pending frames plus what the transport still
buffers after the kernel's socket buffer is full. While the transport buffer is empty
the client is keeping up (frames queued in the current pass go out at its end). Once
it is not, and the queue would exceed ``max_bytes`` or ``max_messages``, the
connection is a *slow consumer*: its pending frames are dropped, nothing more is
queued, and it is closed with :attr:`realtime.disconnect.CloseCode.SLOW_CONSUMER`. Other
listeners are not slowed.

This is the send queue only: the connection's state (open, closing, closed) and its close
code are kept by :class:`realtime.wsconn.WsConnection`.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable
from typing import Final

import structlog

from realtime.timer import PreciseTimer

log = structlog.get_logger("realtime.send_queue")

_OP_TEXT: Final = 0x81  # FIN + text opcode
_pack2 = struct.Struct("!BB").pack
_pack4 = struct.Struct("!BBH").pack
_pack10 = struct.Struct("!BBQ").pack


def encode_text_frame(payload: bytes) -> bytes:
    """Wrap ``payload`` (UTF-8 bytes) in one unmasked, final text frame (RFC 6455 5.2)."""
    size = len(payload)
    if size < 126:
        return _pack2(_OP_TEXT, size) + payload
    if size < 65536:
        return _pack4(_OP_TEXT, 126, size) + payload
    return _pack10(_OP_TEXT, 127, size) + payload


STRETCH_DUTY: Final = 2.0
"""Under a stream that merges (two or more frames per write on average), flushes are spaced
at least this many times the last flush's duration, so writing takes at most half of the
loop's time (below :data:`STRETCH_MAX`)."""
STRETCH_MAX: Final = 3.0
"""The spacing stretched by :data:`STRETCH_DUTY` never exceeds this many ``interval``."""


def flush_spacing(interval: float, took: float) -> float:
    """The time between two paced flushes, seconds: ``interval``, stretched to
    ``STRETCH_DUTY * took`` when one flush took ``took`` seconds (wide fan-out: e.g. 1,000
    socket writes), capped at ``STRETCH_MAX * interval``. Each write then carries more frames,
    and the loop keeps time for reading publications and serving requests instead of
    spending all of it writing; the added latency is bounded by the cap. Applied only after
    a flush whose writes merged two or more frames on average: where each connection gets
    one frame per flush (many topics), waiting longer would add latency and merge little."""
    return max(interval, min(STRETCH_MAX * interval, STRETCH_DUTY * took))


class FlushScheduler:
    """Flushes every dirty connection in one pass (merged writes), at most once per
    ``interval`` seconds.

    After a quiet spell (one spacing, normally ``interval``) the first frame goes out on the
    next event-loop pass (no added latency). Under a stream of publications, flushes are
    spaced ``interval`` apart, so each socket write carries every frame queued meanwhile: at
    1,000 publications/s and 8 ms (the server's default), about eight per write instead of
    one; a flush that took long (wide fan-out) and merged two or more frames per write
    stretches the spacing (:func:`flush_spacing`). ``interval=0`` flushes every pass. The
    spacing is kept by a :class:`realtime.timer.PreciseTimer` (the loops' millisecond
    timers would fire up to a millisecond early or late).

    A flush is held back only where it can merge: when at least half of the connections
    waiting for it were written less than one spacing before the last flush (they are
    getting a stream). Where frames go to connections that got nothing lately (one device
    per publication, as in remote control), there is nothing to merge, and waiting would
    only add latency and a timer wake-up: they go out on the next pass.

    A broker that paces its own reads (:class:`realtime.redis_broker.RedisBroker` reads
    at most once per ``interval`` while publications keep coming) calls :meth:`flush`
    at the end of each read batch instead of waiting for the scheduled pass.
    """

    __slots__ = (
        "_closed", "_dirty", "_handle", "_interval", "_last", "_loop", "_recent", "_repeats",
        "_spacing", "_timer",
    )  # fmt: skip

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = 0.0) -> None:
        """Args:
        loop: the running loop.
        interval: shortest time between two scheduled flushes, seconds.
        """
        self._loop = loop
        self._interval = interval
        self._spacing = interval  # flush_spacing() after the last flush
        self._last = -1e9  # time.monotonic() of the last flush's start
        self._dirty: list[SendQueue] = []
        self._recent = -1e9  # a connection written since then is getting a stream
        self._repeats = 0  # connections in _dirty written since _recent
        self._handle: asyncio.Handle | None = None  # the next-pass flush, when one is due now
        self._timer = PreciseTimer(loop)  # the paced flush, when one is due later
        self._closed = False  # after close(): flush on the next pass, never arm the timer

    @property
    def pending(self) -> bool:
        """``True`` when some connection has frames waiting for a flush."""
        return bool(self._dirty)

    def mark(self, conn: SendQueue) -> None:
        """Queue ``conn`` for the next flush."""
        self._dirty.append(conn)
        if conn.flushed_at >= self._recent:
            self._repeats += 1
        if self._handle is None and not self._timer.armed:
            self._handle = self._loop.call_soon(self._due)

    def _due(self) -> None:
        # decided on the next pass, not in mark(): a broker that flushes at the end of its
        # read batch (Node.on_batch_end) has usually done so by now, and arming costs a syscall
        self._handle = None
        due = self._last + self._spacing
        if not self._closed and due > time.monotonic() and 2 * self._repeats >= len(self._dirty):
            self._timer.call_at(due, self.flush)
        else:
            self.flush()

    def flush(self) -> int:
        """Write every dirty connection's pending frames now (and cancel the scheduled pass);
        returns how many frames were written."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._timer.cancel()
        dirty, self._dirty = self._dirty, []
        self._repeats = 0
        self._last = start = time.monotonic()
        frames = 0
        for conn in dirty:
            conn.flushed_at = start
            try:
                frames += conn.flush()
            except Exception:  # one broken transport must not strand the others' frames
                log.exception("flush_failed", conn_id=conn.id)
        if self._interval:
            merged = frames >= 2 * len(dirty)
            self._spacing = flush_spacing(self._interval, time.monotonic() - start) if merged else self._interval
        self._recent = start - self._spacing
        return frames

    def close(self) -> None:
        """Release the pacing timer; later frames are flushed on the next pass, unpaced."""
        self._closed = True
        self._timer.close()  # cancels a paced flush: what it would have written goes next pass
        if self._dirty and self._handle is None:
            self._handle = self._loop.call_soon(self._due)


class SendQueue:
    """The send queue of one WebSocket connection: its outgoing frames, bounded.

    Attributes:
        id: connection id for logs.
        closed: ``True`` once nothing more may be queued (the connection is closing).
        sent: frames written so far.
        flushed_at: when the scheduler last flushed it (``time.monotonic()`` seconds).
    """

    __slots__ = (
        "_backlog", "_buffered", "_max_bytes", "_max_messages", "_on_overflow",
        "_pending", "_pending_bytes", "_scheduler", "_transport", "closed", "flushed_at",
        "id", "sent",
    )  # fmt: skip

    def __init__(
        self,
        conn_id: str,
        transport: asyncio.WriteTransport,
        scheduler: FlushScheduler,
        *,
        max_bytes: int,
        max_messages: int,
        on_overflow: Callable[[SendQueue], None],
    ) -> None:
        """Args:
        conn_id: id for logs.
        transport: the connection's transport (frames are written raw).
        scheduler: the shared flush scheduler.
        max_bytes: send queue bound in bytes.
        max_messages: send queue bound in frames.
        on_overflow: called once when the queue overflows (slow consumer).
        """
        self.id = conn_id
        self._transport: asyncio.WriteTransport | None = transport
        self._scheduler = scheduler
        self._max_bytes = max_bytes
        self._max_messages = max_messages
        self._on_overflow = on_overflow
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._buffered = 0  # transport buffer size after the last write, bytes
        self._backlog = 0  # frames written since the transport buffer was last empty
        self.closed = False
        self.sent = 0
        self.flushed_at = -1e9

    def send(self, frame: bytes) -> None:
        """Queue one encoded frame; never blocks. Drops it if the connection is closed."""
        if self.closed:
            return
        pending = self._pending
        if not pending:
            self._scheduler.mark(self)
        pending.append(frame)
        self._pending_bytes += len(frame)
        if self._buffered and (
            self._pending_bytes + self._buffered > self._max_bytes or len(pending) + self._backlog > self._max_messages
        ):
            self._overflow()

    def send_payload(self, payload: bytes) -> None:
        """Queue one JSON payload as a text frame (for replies; not the fan-out path)."""
        self.send(encode_text_frame(payload))

    def flush(self) -> int:
        """Write the pending frames in one ``transport.write``; returns how many (0 when
        there were none, or the transport is closing and they were dropped)."""
        pending = self._pending
        if not pending:
            return 0
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        count = len(pending)
        pending.clear()
        self._pending_bytes = 0
        transport = self._transport
        if transport is None or transport.is_closing():
            self.closed = True
            return 0
        transport.write(data)
        self.sent += count
        buffered = transport.get_write_buffer_size()
        self._buffered = buffered
        self._backlog = 0 if buffered == 0 else self._backlog + count
        return count

    def stop(self) -> None:
        """Stop queueing; pending frames are still flushable."""
        self.closed = True

    def detach(self) -> None:
        """Forget the transport and the overflow callback once the socket is gone: they
        close the cycle protocol -> connection -> transport -> protocol, so without this a
        closed connection (~22 objects) waits for the cyclic garbage collector instead of
        being freed by reference counting when the last reference goes."""
        self._discard()
        self._transport = None
        self._on_overflow = _ignore_overflow

    def _overflow(self) -> None:
        self._discard()
        self._on_overflow(self)

    def _discard(self) -> None:
        """Drop the pending frames and stop queueing."""
        self._pending.clear()
        self._pending_bytes = 0
        self.closed = True


def _ignore_overflow(conn: SendQueue) -> None:
    """The overflow callback of a detached connection (it queues nothing more)."""
