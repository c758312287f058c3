"""The server side of RFC 6455, sans I/O: the opening handshake and the client frame reader.

Our own code because it is the hot path of the product: after the upgrade every byte a
client sends goes through :class:`FrameReader`, and every connection is served by our own
``asyncio.Protocol`` (:mod:`realtime.server`) instead of a general-purpose HTTP stack, so
an idle connection costs a few objects, not an HTTP request, its task and its parsers.

What is supported: text, binary and continuation frames (fragmented messages are
reassembled), PING (answered with PONG), PONG (ignored), CLOSE (echoed). No extension is
negotiated (permessage-deflate is off: every publication is encoded once and the same
bytes go to every listener), so any RSV bit is a protocol error; no subprotocol is chosen.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Mapping
from typing import Final

from realtime.disconnect import CloseCode

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

MAX_HEAD_BYTES: Final = 8192
"""Largest opening handshake (request line and headers) read, bytes."""

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_DATA_OPCODES: Final = frozenset({OP_CONTINUATION, OP_TEXT, OP_BINARY})
_CONTROL_OPCODES: Final = frozenset({OP_CLOSE, OP_PING, OP_PONG})
_pack_close = struct.Struct("!BBH").pack


class HandshakeError(Exception):
    """An opening handshake the server refuses (RFC 6455 section 4.2.1).

    Attributes:
        status: the HTTP status to answer with (400, or 426 for an unsupported version).
        message: what is wrong, for the client.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ProtocolError(Exception):
    """The client broke the framing rules; the connection is closed with ``code``.

    Attributes:
        code: the close code (1002, 1007 or 1009).
        reason: a short reason sent in the close frame (at most 123 bytes of UTF-8).
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key`` (RFC 6455 section 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")  # noqa: S324 - fixed by RFC 6455


def _has_token(value: str, token: str) -> bool:
    return any(part.strip().lower() == token for part in value.split(","))


def upgrade_key(method: str, headers: Mapping[str, str]) -> str:
    """Check an opening handshake and return its ``Sec-WebSocket-Key``.

    Args:
        method: the request method.
        headers: the request headers, looked up by their lowercase names.

    Raises:
        HandshakeError: 400 for anything but a GET with ``Upgrade: websocket``,
            ``Connection: upgrade`` and a 16-byte base64 key; 426 when
            ``Sec-WebSocket-Version`` is not 13.
    """
    if method != "GET":
        raise HandshakeError(400, "a WebSocket opening handshake is a GET")
    if not _has_token(headers.get("upgrade", ""), "websocket"):
        raise HandshakeError(400, "expected the header Upgrade: websocket")
    if not _has_token(headers.get("connection", ""), "upgrade"):
        raise HandshakeError(400, "expected the header Connection: Upgrade")
    if headers.get("sec-websocket-version", "").strip() != "13":
        raise HandshakeError(426, "unsupported Sec-WebSocket-Version; this server speaks version 13")
    key = headers.get("sec-websocket-key", "").strip()
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError(key)
    except (ValueError, binascii.Error):
        raise HandshakeError(400, "Sec-WebSocket-Key must be 16 bytes in base64") from None
    return key


def switching_protocols(key: str) -> bytes:
    """The ``101 Switching Protocols`` response for a checked key (no extension, no subprotocol)."""
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(key).encode("ascii") + b"\r\n\r\n"
    )


class RequestHead:
    """A parsed HTTP/1.1 request head (request line and header fields, RFC 9112).

    Attributes:
        method: e.g. ``"GET"``.
        target: the request target, e.g. ``"/ws?x=1"``.
        headers: header fields by lowercase name; repeated fields joined with ``", "``.
    """

    __slots__ = ("headers", "method", "target")

    def __init__(self, method: str, target: str, headers: dict[str, str]) -> None:
        self.method = method
        self.target = target
        self.headers = headers

    @property
    def path(self) -> str:
        """The target without its query."""
        return self.target.partition("?")[0]


def parse_head(head: bytes) -> RequestHead | None:
    """Parse a request head (without the final blank line); ``None`` if it is not a plain
    HTTP/1.1 request this module should answer.

    Strict on purpose: anything unusual (obsolete line folding, a body, a malformed line,
    another HTTP version, repeated ``Sec-WebSocket-Key``) returns ``None`` so the general
    HTTP server answers it instead.
    """
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1":
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
            return None
        key = name.decode("latin-1").lower()
        text = value.strip(b" \t").decode("latin-1")
        if key in headers:
            if key in ("sec-websocket-key", "content-length", "transfer-encoding", "host"):
                return None
            headers[key] += ", " + text
        else:
            headers[key] = text
    if "content-length" in headers or "transfer-encoding" in headers:
        return None
    return RequestHead(parts[0].decode("latin-1"), parts[1].decode("latin-1"), headers)


def unmask(data: bytes, mask: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``mask`` repeated (RFC 6455 section 5.3)."""
    size = len(data)
    if not size:
        return b""
    key = (mask * ((size + 3) // 4))[:size]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")


def close_frame(code: int, reason: str = "") -> bytes:
    """An unmasked CLOSE frame with ``code`` and ``reason`` (truncated to 123 bytes)."""
    body = reason.encode()[:123]
    return _pack_close(0x80 | OP_CLOSE, 2 + len(body), code) + body


def pong_frame(payload: bytes) -> bytes:
    """An unmasked PONG frame echoing a PING's ``payload`` (at most 125 bytes)."""
    return bytes((0x80 | OP_PONG, len(payload))) + payload


def parse_close(payload: bytes) -> tuple[int, str]:
    """The code and reason of a client's CLOSE frame (1005 when it has none).

    Raises:
        ProtocolError: a one-byte body or a code that may not be sent (1002), a reason
            that is not UTF-8 (1007).
    """
    if not payload:
        return 1005, ""
    if len(payload) == 1:
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, "close frame body of one byte")
    code = int.from_bytes(payload[:2], "big")
    if not (1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999):
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"close code {code} may not be sent")
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError:
        raise ProtocolError(CloseCode.INVALID_DATA, "close reason is not UTF-8") from None
    return code, reason


class FrameReader:
    """Incremental reader of client-to-server frames (RFC 6455 section 5).

    :meth:`feed` takes bytes as they arrive and returns the complete messages in them as
    ``(opcode, payload)`` pairs, payloads unmasked: ``OP_TEXT`` / ``OP_BINARY`` for data
    messages (fragments reassembled), ``OP_PING`` / ``OP_PONG`` / ``OP_CLOSE`` for control
    frames (which may arrive between fragments). Nothing is buffered between calls unless a
    frame is incomplete.
    """

    __slots__ = ("_buf", "_frag", "_frag_op", "_max")

    def __init__(self, max_message_bytes: int) -> None:
        """Args:
        max_message_bytes: largest data message accepted (after reassembly), bytes.
        """
        self._max = max_message_bytes
        self._buf = b""
        self._frag_op = 0
        self._frag = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:  # noqa: C901 - RFC 6455 framing in one hot loop
        """Read ``data``; return the messages completed by it.

        Raises:
            ProtocolError: unmasked frame, RSV bits, unknown opcode, bad fragmentation or
                control frame (1002), or a message over the size limit (1009). The reader
                must not be fed again after it raised.
        """
        buf = self._buf + data if self._buf else data
        out: list[tuple[int, bytes]] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            opcode = b0 & 0x0F
            if b0 & 0x70:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "RSV bits set; no extension was negotiated")
            if not b1 & 0x80:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "client frames must be masked")
            size = b1 & 0x7F
            head = 6
            if size == 126:
                if end - pos < 4:
                    break
                size = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 8
            elif size == 127:
                if end - pos < 10:
                    break
                size = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 14
            fin = b0 & 0x80
            if opcode in _CONTROL_OPCODES:
                if not fin or size > 125:
                    raise ProtocolError(CloseCode.PROTOCOL_ERROR, "control frames must be final and at most 125 bytes")
            elif opcode not in _DATA_OPCODES:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode}")
            elif size + len(self._frag) > self._max:
                raise ProtocolError(CloseCode.MESSAGE_TOO_BIG, f"message larger than {self._max} bytes")
            if end - pos < head + size:
                break
            start = pos + head
            payload = unmask(buf[start : start + size], buf[start - 4 : start])
            pos = start + size
            if opcode == OP_CONTINUATION:
                if not self._frag_op:
                    raise ProtocolError(CloseCode.PROTOCOL_ERROR, "continuation frame without a message to continue")
                self._frag += payload
                if fin:
                    out.append((self._frag_op, self._frag))
                    self._frag_op = 0
                    self._frag = b""
            elif opcode in (OP_TEXT, OP_BINARY):
                if self._frag_op:
                    raise ProtocolError(CloseCode.PROTOCOL_ERROR, "new message before the fragmented one ended")
                if fin:
                    out.append((opcode, payload))
                else:
                    self._frag_op = opcode
                    self._frag = payload
            else:
                out.append((opcode, payload))
        self._buf = buf[pos:] if pos < end else b""
        return out
