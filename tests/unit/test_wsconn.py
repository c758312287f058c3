"""The WebSocket connection's life, pure: states, the close handshake, failing. No sockets."""

from __future__ import annotations

import pytest

from realtime.disconnect import CloseCode
from realtime.websocket import OP_BINARY, OP_CLOSE, OP_PING, OP_TEXT, close_frame, pong_frame, switching_protocols
from realtime.wsconn import Closing, Head, State, WsConnection
from tests.unit.test_websocket import client_frame

HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def opened() -> WsConnection:
    ws = WsConnection(1024)
    got = ws.receive_head(HANDSHAKE)
    assert isinstance(got, Head)
    ws.accept(got.key)
    return ws


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return code.to_bytes(2, "big") + reason


def test_head_in_pieces_then_accept() -> None:
    ws = WsConnection(1024)
    assert ws.state is State.CONNECTING
    assert ws.receive_head(HANDSHAKE[:20]) is None
    frame = client_frame(OP_TEXT, b"hi")
    got = ws.receive_head(HANDSHAKE[20:] + frame)
    assert isinstance(got, Head) and got.head.path == "/ws" and got.rest == frame
    assert ws.state is State.CONNECTING  # answering is the caller's decision
    assert ws.accept(got.key) == switching_protocols(got.key)
    assert ws.state is State.OPEN
    assert ws.receive_data(got.rest) == ([(OP_TEXT, b"hi")], None)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /health HTTP/1.1\r\n\r\n",
        b"POST /ws HTTP/1.1\r\n\r\n",
        b"GET /wsx HTTP/1.1\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n",  # not an upgrade: aiohttp's /ws route answers 400
        b"GET /ws" + b"x" * 9000,
    ],
)
def test_not_ours_is_handed_off_with_every_byte(request_bytes: bytes) -> None:
    ws = WsConnection(1024)
    got = ws.receive_head(request_bytes[:3])
    if got is None:
        got = ws.receive_head(request_bytes[3:])
        assert got == request_bytes
    else:
        assert got == request_bytes[:3]
    assert ws.state is State.CLOSED


def test_reject_closes() -> None:
    ws = WsConnection(1024)
    assert isinstance(ws.receive_head(HANDSHAKE), Head)
    ws.reject()
    assert ws.state is State.CLOSED
    assert ws.receive_data(client_frame(OP_TEXT, b"x")) == ([], None)


def test_messages_and_ping() -> None:
    ws = opened()
    data = client_frame(OP_TEXT, b"a") + client_frame(OP_PING, b"p") + client_frame(OP_BINARY, b"\x00")
    assert ws.receive_data(data) == ([(OP_TEXT, b"a"), (0xA, pong_frame(b"p")), (OP_BINARY, b"\x00")], None)
    assert ws.state is State.OPEN and ws.close_code is None


def test_server_close_handshake() -> None:
    ws = opened()
    step = ws.close(CloseCode.LISTEN_TIMEOUT)
    assert step == Closing(True, close_frame(4001, "no LISTEN in time"), State.CLOSING)
    assert ws.state is State.CLOSING and ws.close_code == 4001
    assert ws.close(CloseCode.IDLE_TIMEOUT) is None  # idempotent: the first code wins
    # data sent before the client saw our CLOSE is ignored; its CLOSE ends the connection
    messages, step = ws.receive_data(client_frame(OP_TEXT, b"late") + client_frame(OP_CLOSE, close_payload(4001)))
    assert messages == [] and step == Closing(False, b"", State.CLOSED)
    assert ws.state is State.CLOSED and ws.close_code == 4001
    assert ws.receive_data(client_frame(OP_TEXT, b"after")) == ([], None)


def test_slow_consumer_drops_its_queue() -> None:
    step = opened().close(CloseCode.SLOW_CONSUMER)
    assert step is not None and step.flush is False and step.data == close_frame(4008, "slow consumer")


def test_client_close_is_echoed_after_the_replies() -> None:
    ws = opened()
    data = (
        client_frame(OP_TEXT, b"a") + client_frame(OP_CLOSE, close_payload(1000, b"bye")) + client_frame(OP_TEXT, b"b")
    )
    messages, step = ws.receive_data(data)
    assert messages == [(OP_TEXT, b"a")]  # answered (flush=True) before the echo; nothing after the CLOSE
    assert step == Closing(True, close_frame(1000), State.CLOSED)
    assert ws.close_code == 1000 and ws.close(CloseCode.GOING_AWAY) is None


def test_client_close_without_code_is_answered_1000() -> None:
    ws = opened()
    _, step = ws.receive_data(client_frame(OP_CLOSE, b""))
    assert step is not None and step.data == close_frame(1000) and ws.close_code == CloseCode.NO_STATUS


OK = [(OP_TEXT, b"ok")]


@pytest.mark.parametrize(
    ("data", "code", "before"),
    [
        # framing errors: the reader stops at once, nothing of the chunk is handled
        (client_frame(OP_TEXT, b"x", masked=False), CloseCode.PROTOCOL_ERROR, []),
        (client_frame(OP_TEXT, b"x" * 2000), CloseCode.MESSAGE_TOO_BIG, []),
        # message errors: what came before is handled (and flushed before our CLOSE)
        (client_frame(OP_TEXT, b"\xff\xfe"), CloseCode.INVALID_DATA, OK),
        (client_frame(OP_CLOSE, b"\x03"), CloseCode.PROTOCOL_ERROR, OK),
        (client_frame(OP_CLOSE, close_payload(1005)), CloseCode.PROTOCOL_ERROR, OK),
    ],
)
def test_protocol_errors_fail_the_connection(data: bytes, code: CloseCode, before: list[tuple[int, bytes]]) -> None:
    ws = opened()
    messages, step = ws.receive_data(client_frame(OP_TEXT, b"ok") + data)
    assert messages == before
    assert step is not None and step.flush and step.state is State.CLOSED  # TCP closes at once
    assert step.data[0] == 0x88 and step.data[2:4] == code.to_bytes(2, "big")  # our CLOSE with the code
    assert ws.state is State.CLOSED and ws.close_code == code


def test_fail_while_closing_sends_nothing_more() -> None:
    ws = opened()
    assert ws.close(CloseCode.GOING_AWAY) is not None
    messages, step = ws.receive_data(client_frame(OP_TEXT, b"x", masked=False))
    assert messages == [] and step == Closing(False, b"", State.CLOSED)
    assert ws.close_code == CloseCode.GOING_AWAY
