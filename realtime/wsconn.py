"""One server-side WebSocket connection's life, as a state machine that does no I/O.

In the style of python-websockets' ``protocol.py``: :class:`WsConnection` holds the
connection's one :class:`State` and its close code, reads the request head and the client's
frames, and says what to do; the asyncio transport (:class:`realtime.server.WsProtocol`) only
moves bytes and runs timers::

    CONNECTING --accept()--> OPEN --close()--> CLOSING --client's CLOSE--> CLOSED
         |                     |                  |
         +--reject()/handoff---+--client's CLOSE, fail()-----------------> CLOSED

Every step of the close handshake (RFC 6455 section 7) is returned as a :class:`Closing`:
whether to write the send queue's pending frames first, the bytes to write (a CLOSE frame or
nothing), and the state entered (``CLOSING``: wait for the client's CLOSE, at most
``CLOSE_TIMEOUT``; ``CLOSED``: close TCP, the server first as section 7.1.1 says).

The object is also the connection's frame reader (it extends
:class:`realtime.websocket.FrameReader`, whose buffer holds the partial request head while
``CONNECTING``): one object per connection, not two.
"""

from __future__ import annotations

import enum
from typing import Final, NamedTuple

from realtime.disconnect import CloseCode, reason_of
from realtime.websocket import (
    MAX_HEAD_BYTES,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameReader,
    HandshakeError,
    ProtocolError,
    RequestHead,
    close_frame,
    parse_close,
    parse_head,
    pong_frame,
    switching_protocols,
    upgrade_key,
)

_WS_PREFIX: Final = b"GET /ws"


class State(enum.IntEnum):
    """Where a connection is in its life (the only place it is kept)."""

    CONNECTING = 0
    """Reading the request head; ``101`` not sent yet."""
    OPEN = 1
    """Frames flow both ways."""
    CLOSING = 2
    """Our CLOSE is sent; waiting for the client's. Its data frames are ignored."""
    CLOSED = 3
    """Done: TCP is closed or closing (or the socket was handed to the HTTP server)."""


CONNECTING: Final = State.CONNECTING
OPEN: Final = State.OPEN
CLOSING: Final = State.CLOSING
CLOSED: Final = State.CLOSED
# module-level names, as websockets' protocol.py has them: a global is read ~5x faster than
# an enum member through its class, and these are read for every chunk a client sends


class Closing(NamedTuple):
    """One step of the close handshake, for the transport to carry out in this order.

    Attributes:
        flush: write the send queue's pending frames first (``False`` for a slow consumer:
            they are dropped), then stop queueing.
        data: bytes to write then (a CLOSE frame, or ``b""``).
        state: the state entered: ``CLOSING`` (arm the close timeout) or ``CLOSED`` (close
            TCP once its buffer drains, drop it after the timeout).
    """

    flush: bool
    data: bytes
    state: State


class Head(NamedTuple):
    """A complete WebSocket opening handshake for ``/ws``.

    Attributes:
        head: the parsed request head.
        key: its checked ``Sec-WebSocket-Key``.
        rest: bytes the client sent after the head (its first frames).
    """

    head: RequestHead
    key: str
    rest: bytes


class WsConnection(FrameReader):
    """The server side of one WebSocket connection (RFC 6455), sans I/O.

    Attributes:
        state: the :class:`State`.
        close_code: the code of the first CLOSE sent or received (``None`` until then).
    """

    __slots__ = ("close_code", "state")

    def __init__(self, max_message_bytes: int) -> None:
        """Args:
        max_message_bytes: largest data message accepted (after reassembly), bytes.
        """
        super().__init__(max_message_bytes)
        self.state = CONNECTING
        self.close_code: int | None = None

    # -- opening handshake (CONNECTING) --------------------------------------------------

    def receive_head(self, data: bytes) -> Head | bytes | None:
        """Read request bytes while ``CONNECTING``.

        Returns:
            ``None``: the head is incomplete, call again with more. :class:`Head`: a valid
            handshake for ``/ws``; answer it with :meth:`accept` or :meth:`reject`. Bytes:
            everything read so far, for the HTTP server (not a ``/ws`` request, a malformed
            or oversized head, or a refused handshake: aiohttp's ``/ws`` route answers
            those as JSON); the state is then ``CLOSED``.
        """
        buf = self._buf + data if self._buf else data
        size = len(buf)
        if buf[: min(size, 7)] != _WS_PREFIX[: min(size, 7)] or (size > 7 and buf[7:8] not in (b" ", b"?")):
            return self._handoff(buf)
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if size > MAX_HEAD_BYTES:
                return self._handoff(buf)
            self._buf = buf
            return None
        self._buf = b""
        head = parse_head(buf[:end])
        if head is None or head.path != "/ws":
            return self._handoff(buf)
        try:
            key = upgrade_key(head.method, head.headers)
        except HandshakeError:
            return self._handoff(buf)
        return Head(head, key, buf[end + 4 :])

    def _handoff(self, buf: bytes) -> bytes:
        self._buf = b""
        self.state = CLOSED
        return buf

    def accept(self, key: str) -> bytes:
        """Enter ``OPEN``; returns the ``101 Switching Protocols`` response to write."""
        self.open()
        return switching_protocols(key)

    def open(self) -> None:
        """Enter ``OPEN`` (the ``101`` was written, here or by the HTTP server)."""
        self.state = OPEN

    def reject(self) -> None:
        """Enter ``CLOSED`` after answering the handshake with an HTTP error."""
        self.state = CLOSED

    def handed_off(self) -> None:
        """Enter ``CLOSED``: the socket now belongs to the HTTP server."""
        self.state = CLOSED

    # -- frames (OPEN, CLOSING) ----------------------------------------------------------

    def receive_data(self, data: bytes) -> tuple[list[tuple[int, bytes]], Closing | None]:  # noqa: C901 - per-frame hot path
        """Read client bytes while ``OPEN`` or ``CLOSING``.

        Returns:
            The messages to handle, in order: ``(OP_TEXT, payload)`` (valid UTF-8),
            ``(OP_BINARY, payload)``, and ``(OP_PONG, frame)`` (a PONG frame answering a
            PING: queue it behind the replies before it); then the close step these bytes
            caused, if any: the client's CLOSE echoed (``CLOSED``), the answer to our CLOSE
            (``CLOSED``), or :meth:`fail` on a protocol error (1002, 1007, 1009). Nothing
            after a close step is returned; nothing at all once ``CLOSED``.
        """
        state = self.state
        if state is CLOSED or state is CONNECTING:
            return [], None
        try:
            messages = self.feed(data)
        except ProtocolError as exc:
            return [], self.fail(exc.code, exc.reason)
        out: list[tuple[int, bytes]] = []
        for opcode, payload in messages:
            if self.state is CLOSING:
                if opcode == OP_CLOSE:  # the client answered our CLOSE
                    self.state = CLOSED
                    return out, Closing(False, b"", CLOSED)
                continue  # sent before it saw our CLOSE: ignored
            if opcode == OP_TEXT:
                try:
                    payload.decode()
                except UnicodeDecodeError:
                    return out, self.fail(CloseCode.INVALID_DATA, "text message is not UTF-8")
                out.append((OP_TEXT, payload))
            elif opcode == OP_BINARY:
                out.append((OP_BINARY, payload))
            elif opcode == OP_PING:
                out.append((OP_PONG, pong_frame(payload)))
            elif opcode == OP_CLOSE:
                return out, self._closed_by_client(payload)
        return out, None

    def _closed_by_client(self, payload: bytes) -> Closing:
        try:
            code, _ = parse_close(payload)
        except ProtocolError as exc:
            return self.fail(exc.code, exc.reason)
        self.close_code = code
        self.state = CLOSED
        return Closing(True, close_frame(CloseCode.NORMAL if code == CloseCode.NO_STATUS else code), CLOSED)

    # -- closing -------------------------------------------------------------------------

    def close(self, code: int, reason: str | None = None) -> Closing | None:
        """Start the close handshake with ``code`` (``None`` unless ``OPEN``: idempotent).

        Args:
            code: the close code (a :class:`realtime.disconnect.CloseCode`).
            reason: the CLOSE frame's reason (default: the table's, :mod:`realtime.disconnect`).

        Returns:
            Write the pending frames (except for a slow consumer, whose queue is dropped),
            then our CLOSE; enter ``CLOSING``.
        """
        if self.state is not OPEN:
            return None
        if reason is None:
            reason = reason_of(code)
        self.close_code = code
        self.state = CLOSING
        return Closing(code != CloseCode.SLOW_CONSUMER, close_frame(code, reason), CLOSING)

    def fail(self, code: int, reason: str) -> Closing:
        """Fail the connection (RFC 6455 section 7.1.7): our CLOSE with ``code`` if none was
        sent yet, then close TCP at once (``CLOSED``) without waiting for the client's."""
        step = self.close(code, reason)
        self.state = CLOSED
        if step is None:
            return Closing(False, b"", CLOSED)
        return step._replace(state=CLOSED)
