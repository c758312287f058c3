"""RFC 6455 server side, pure: handshake checks, head parsing, the client frame reader."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from realtime.websocket import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameReader,
    HandshakeError,
    ProtocolError,
    accept_key,
    close_frame,
    parse_close,
    parse_head,
    pong_frame,
    switching_protocols,
    unmask,
    upgrade_key,
)

GOOD = {
    "upgrade": "websocket",
    "connection": "keep-alive, Upgrade",
    "sec-websocket-version": "13",
    "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
}


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True, rsv: int = 0) -> bytes:
    """A client frame as a browser sends it (masked)."""
    b0 = (0x80 if fin else 0) | rsv | opcode
    size = len(payload)
    mask_bit = 0x80 if masked else 0
    if size < 126:
        head = struct.pack("!BB", b0, mask_bit | size)
    elif size < 65536:
        head = struct.pack("!BBH", b0, mask_bit | 126, size)
    else:
        head = struct.pack("!BBQ", b0, mask_bit | 127, size)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_accept_key_matches_rfc_example() -> None:
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    response = switching_protocols("dGhlIHNhbXBsZSBub25jZQ==")
    assert response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in response and response.endswith(b"\r\n\r\n")


def test_upgrade_key_accepts_a_browser_handshake() -> None:
    assert upgrade_key("GET", GOOD) == "dGhlIHNhbXBsZSBub25jZQ=="
    assert upgrade_key("GET", {**GOOD, "upgrade": "WebSocket", "connection": "upgrade"})


@pytest.mark.parametrize(
    ("method", "change", "status"),
    [
        ("POST", {}, 400),
        ("GET", {"upgrade": "h2c"}, 400),
        ("GET", {"connection": "keep-alive"}, 400),
        ("GET", {"sec-websocket-version": "8"}, 426),
        ("GET", {"sec-websocket-key": "short"}, 400),
        ("GET", {"sec-websocket-key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAA"}, 400),  # 21 bytes
        ("GET", {"sec-websocket-key": ""}, 400),
    ],
)
def test_upgrade_key_refuses(method: str, change: dict[str, str], status: int) -> None:
    with pytest.raises(HandshakeError) as info:
        upgrade_key(method, {**GOOD, **change})
    assert info.value.status == status and info.value.message


def test_parse_head() -> None:
    head = parse_head(b"GET /ws?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nX-A: 1\r\nx-a: 2")
    assert head is not None
    assert (head.method, head.target, head.path) == ("GET", "/ws?x=1", "/ws")
    assert head.headers == {"host": "a", "upgrade": "websocket", "x-a": "1, 2"}


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /ws HTTP/1.0\r\nHost: a",
        b"GET /ws  HTTP/1.1\r\nHost: a",
        b"GET /ws HTTP/1.1\r\nHost a",
        b"GET /ws HTTP/1.1\r\nHost: a\r\n folded",
        b"GET /ws HTTP/1.1\r\nHost : a",
        b"GET /ws HTTP/1.1\r\nContent-Length: 3",
        b"GET /ws HTTP/1.1\r\nTransfer-Encoding: chunked",
        b"GET /ws HTTP/1.1\r\nSec-WebSocket-Key: a\r\nSec-WebSocket-Key: b",
        b"GET /ws HTTP/1.1\r\nHost: a\r\nHost: b",
    ],
)
def test_parse_head_leaves_anything_unusual_to_the_http_server(raw: bytes) -> None:
    assert parse_head(raw) is None


@given(st.binary(max_size=300), st.binary(min_size=4, max_size=4))
def test_unmask_is_its_own_inverse_and_matches_the_definition(data: bytes, mask: bytes) -> None:
    masked = unmask(data, mask)
    assert masked == bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    assert unmask(masked, mask) == data


def test_reader_reads_text_binary_and_control_frames() -> None:
    reader = FrameReader(1 << 20)
    data = (
        client_frame(OP_TEXT, b'{"type":"PING"}')
        + client_frame(OP_BINARY, b"\x00\x01")
        + client_frame(OP_PING, b"hi")
        + client_frame(OP_PONG, b"")
        + client_frame(OP_TEXT, b"x" * 300)
        + client_frame(OP_TEXT, b"y" * 70000)
        + client_frame(OP_CLOSE, struct.pack("!H", 1000) + b"bye")
    )
    assert reader.feed(data) == [
        (OP_TEXT, b'{"type":"PING"}'),
        (OP_BINARY, b"\x00\x01"),
        (OP_PING, b"hi"),
        (OP_PONG, b""),
        (OP_TEXT, b"x" * 300),
        (OP_TEXT, b"y" * 70000),
        (OP_CLOSE, b"\x03\xe8bye"),
    ]


def test_reader_takes_bytes_one_at_a_time() -> None:
    reader = FrameReader(1 << 20)
    data = client_frame(OP_TEXT, b"hello") + client_frame(OP_TEXT, b"z" * 200)
    got = []
    for i in range(len(data)):
        got += reader.feed(data[i : i + 1])
    assert got == [(OP_TEXT, b"hello"), (OP_TEXT, b"z" * 200)]


def test_reader_reassembles_fragments_with_control_frames_between() -> None:
    reader = FrameReader(100)
    data = (
        client_frame(OP_TEXT, b"hel", fin=False)
        + client_frame(OP_PING, b"p")
        + client_frame(0, b"lo ", fin=False)
        + client_frame(0, b"world")
    )
    assert reader.feed(data) == [(OP_PING, b"p"), (OP_TEXT, b"hello world")]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (client_frame(OP_TEXT, b"x", masked=False), 1002),
        (client_frame(OP_TEXT, b"x", rsv=0x40), 1002),
        (client_frame(0x3, b"x"), 1002),
        (client_frame(0xB, b"x"), 1002),
        (client_frame(OP_PING, b"x", fin=False), 1002),
        (client_frame(OP_PING, b"x" * 126), 1002),
        (client_frame(0, b"x"), 1002),
        (client_frame(OP_TEXT, b"a", fin=False) + client_frame(OP_TEXT, b"b"), 1002),
        (client_frame(OP_TEXT, b"x" * 101), 1009),
        (client_frame(OP_TEXT, b"x" * 60, fin=False) + client_frame(0, b"x" * 60), 1009),
    ],
)
def test_reader_refuses_broken_frames(data: bytes, code: int) -> None:
    with pytest.raises(ProtocolError) as info:
        FrameReader(100).feed(data)
    assert info.value.code == code and info.value.reason


def test_reader_refuses_an_oversized_frame_from_its_header_alone() -> None:
    """A frame announcing 2**62 bytes is refused before any of it is buffered."""
    header = struct.pack("!BBQ", 0x81, 0x80 | 127, 1 << 62)
    with pytest.raises(ProtocolError) as info:
        FrameReader(16384).feed(header)
    assert info.value.code == 1009


@given(st.binary(max_size=200))
def test_reader_never_fails_otherwise(data: bytes) -> None:
    """Arbitrary bytes either parse or raise ProtocolError; nothing else escapes."""
    try:
        FrameReader(64).feed(data)
    except ProtocolError as exc:
        assert exc.code in (1002, 1009)  # noqa: PT017 - the bytes may parse: pytest.raises would demand a failure


def test_close_and_pong_frames() -> None:
    assert close_frame(1000) == b"\x88\x02\x03\xe8"
    frame = close_frame(4001, "r" * 200)
    assert frame[1] == 125 and len(frame) == 127  # reason truncated to fit a control frame
    assert pong_frame(b"hi") == b"\x8a\x02hi"


def test_parse_close() -> None:
    assert parse_close(b"") == (1005, "")
    assert parse_close(b"\x03\xe8bye") == (1000, "bye")
    assert parse_close(struct.pack("!H", 4321)) == (4321, "")
    for bad in (b"\x03", struct.pack("!H", 1005), struct.pack("!H", 999), struct.pack("!H", 5000)):
        with pytest.raises(ProtocolError) as info:
            parse_close(bad)
        assert info.value.code == 1002
    with pytest.raises(ProtocolError) as info:
        parse_close(b"\x03\xe8\xff")
    assert info.value.code == 1007
