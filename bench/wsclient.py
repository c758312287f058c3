"""A minimal, cheap WebSocket client (RFC 6455) for the load generator.

One :class:`asyncio.Protocol` per connection, no task per connection, no per-message
object: frames are parsed straight out of the receive buffer and handed to a
:class:`Dialect` (our Twitch-PubSub protocol, or Engine.IO 4 / Socket.IO 5 for the
peers). The same client and the same per-message work (one regex search for the
benchmark stamp) is used for every server, so generator cost is comparable.

Client frames are masked with an all-zero key: RFC 6455 requires the mask bit, and a
zero key is a valid key that makes masking a no-op (a load generator's shortcut, not
something a real client should do).

Latency is stamped with the kernel's receive time where it can be (Linux
``SO_TIMESTAMPNS`` on the sampled connections, read with ``recvmsg`` by
:class:`StampingTransport`): one generator process stands in for many client devices and
parses their frames one after another, so a stamp taken while parsing would add the
other clients' parsing time to each delivery, more for servers that deliver in bursts.
The kernel stamp is when the bytes reached the client's socket, the same for every server.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import socket
import struct
import sys
import time
import zlib
from collections.abc import Callable, Coroutine
from typing import Any, Final, cast

STAMP: Final = re.compile(rb"~(\d+)~(\d+)~")
"""The benchmark stamp in a payload: ``~<seq in its topic>~<send time, monotonic ns>~``."""

_ZERO_MASK: Final = b"\x00\x00\x00\x00"
_U16: Final = struct.Struct("!H")
_U64: Final = struct.Struct("!Q")
_DEFLATE_OFFER: Final = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
_ACCEPTED_DEFLATE: Final = re.compile(rb"(?im)^sec-websocket-extensions:[^\r\n]*permessage-deflate")
_DEFLATE_TAIL: Final = b"\x00\x00\xff\xff"  # removed by the sender from each message (RFC 7692 7.2.1)
_SO_TIMESTAMPNS: Final = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; SCM_TIMESTAMPNS is the same
_TIMESPEC: Final = struct.Struct("@ll")
_CMSG_SPACE: Final = socket.CMSG_SPACE(_TIMESPEC.size)
KERNEL_STAMPS: Final = sys.platform.startswith("linux")
"""Whether sampled connections take the kernel's receive time (else: the parse time)."""


class WsError(Exception):
    """The handshake or the framing failed."""


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One final, masked (zero key) client frame carrying ``payload``."""
    size = len(payload)
    if size < 126:
        head = bytes((0x80 | opcode, 0x80 | size))
    elif size < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + _U16.pack(size)
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + _U64.pack(size)
    return head + _ZERO_MASK + payload


class Stats:
    """Receive counters of one connection (which LISTENs to one topic).

    Sequence numbers are per topic (0, 1, 2, ...). Arrivals are tracked with a low-water
    mark plus the set of numbers seen above it, so duplicates are told apart from
    reordering (concurrent ``POST /publish`` requests may reorder).

    Attributes:
        received: stamped messages received, duplicates included.
        duplicated: stamped messages whose sequence number had been seen already.
        reordered: messages that arrived before an earlier-numbered one.
        latencies: publish-to-deliver latencies in ns, only when sampled.
        last_ns: monotonic ns of the last stamped message.
        rx_ns: the kernel's receive time (monotonic ns) of the bytes being parsed, 0 if unknown.
    """

    __slots__ = (
        "_above", "_next", "duplicated", "last_ns", "latencies", "received", "reordered", "rx_ns", "sampled",
    )  # fmt: skip

    def __init__(self, sampled: bool) -> None:
        self.sampled = sampled
        self.rx_ns = 0
        self.reset()

    def reset(self) -> None:
        """Forget everything counted so far."""
        self.received = self.duplicated = self.reordered = self.last_ns = 0
        self._next = 0
        self._above: set[int] = set()
        self.latencies: list[int] = []

    @property
    def unique(self) -> int:
        """Distinct sequence numbers received."""
        return self._next + len(self._above)

    def record(self, data: bytes) -> None:
        """Count one stamped payload found anywhere in ``data``."""
        match = STAMP.search(data)
        if match is None:
            return
        now = self.rx_ns or time.monotonic_ns()
        seq = int(match[1])
        self.received += 1
        if seq == self._next:
            self._next += 1
            above = self._above
            while above and self._next in above:
                above.remove(self._next)
                self._next += 1
        elif seq < self._next or seq in self._above:
            self.duplicated += 1
        else:
            self.reordered += 1
            self._above.add(seq)
        self.last_ns = now
        if self.sampled:
            self.latencies.append(now - int(match[2]))


class Dialect:
    """What is said over the socket: subclasses implement one application protocol."""

    def __init__(self, topics: list[str], token: str, stats: Stats) -> None:
        self.topics = topics
        self.token = token
        self.stats = stats
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.client: WsClient | None = None

    def opened(self) -> None:
        """The WebSocket handshake is done."""

    def text(self, data: bytes) -> None:
        """One text message arrived."""
        raise NotImplementedError

    def fail(self, message: str) -> None:
        """Resolve ``ready`` with an error (once)."""
        if not self.ready.done():
            self.ready.set_exception(WsError(message))


class PubSubDialect(Dialect):
    """Our server: LISTEN with a token, then MESSAGE frames."""

    def opened(self) -> None:
        data = b'{"type":"LISTEN","nonce":"b","data":{"topics":[%s],"auth_token":"%s"}}' % (
            b",".join(b'"%s"' % t.encode() for t in self.topics),
            self.token.encode(),
        )
        assert self.client is not None
        self.client.send_text(data)

    def text(self, data: bytes) -> None:
        if data.startswith(b'{"type":"MESSAGE"'):
            self.stats.record(data)
        elif data.startswith(b'{"type":"RESPONSE"') and not self.ready.done():
            if b'"error":""' in data:
                self.ready.set_result(None)
            else:
                self.fail(data.decode())


class SocketIODialect(Dialect):
    """Engine.IO 4 + Socket.IO 5 over a WebSocket: join the topics' rooms with an ack."""

    def text(self, data: bytes) -> None:
        client = self.client
        assert client is not None
        if data.startswith(b'42["message"'):
            self.stats.record(data)
        elif data == b"2":  # Engine.IO ping
            client.send_text(b"3")
        elif data.startswith(b"0{"):  # Engine.IO open: connect to the default namespace
            client.send_text(b"40")
        elif data.startswith(b"40"):  # namespace connected: join rooms, ack id 1
            topics = b",".join(b'"%s"' % t.encode() for t in self.topics)
            client.send_text(b'421["listen",[%s]]' % topics)
        elif data.startswith(b"431") and not self.ready.done():
            self.ready.set_result(None)
        elif data.startswith(b"44"):
            self.fail(data.decode())


class WsClient(asyncio.Protocol):
    """One client WebSocket connection driven by a :class:`Dialect`."""

    def __init__(self, host: str, path: str, dialect: Dialect, *, deflate: bool = False) -> None:
        """Args:
        host: the ``Host`` header (``host:port``).
        path: the WebSocket path.
        dialect: the application protocol.
        deflate: offer permessage-deflate (RFC 7692); :attr:`deflated` says whether the
            server took it. Compressed messages are inflated before the dialect sees them;
            this client never compresses what it sends (allowed: RSV1 is per message).
        """
        self.host = host
        self.path = path
        self.dialect = dialect
        dialect.client = self
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._open = False
        self._offer_deflate = deflate
        self._inflater: Any = None  # a raw-deflate decompressobj once negotiated
        self.deflated = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        key = base64.b64encode(os.urandom(16)).decode()
        extensions = _DEFLATE_OFFER if self._offer_deflate else ""
        self.transport.write(
            (
                f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"{extensions}\r\n"
            ).encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.dialect.fail(f"connection lost: {exc}")
        if not self.closed.done():
            self.closed.set_result(None)

    def send_text(self, payload: bytes) -> None:
        """Send one text frame."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(payload))

    def close(self) -> None:
        """Close without a closing handshake (the servers cope; it is cheap)."""
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if not self._open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.dialect.fail(bytes(buf[: end + 4]).decode(errors="replace"))
                self.close()
                return
            if self._offer_deflate and _ACCEPTED_DEFLATE.search(bytes(buf[:end])):
                self.deflated = True
                self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            del buf[: end + 4]
            self._open = True
            self.dialect.opened()
        self._frames(buf)

    def _frames(self, buf: bytearray) -> None:  # noqa: C901 - the load generator's hot frame parser, one loop per read
        pos, size = 0, len(buf)
        text = self.dialect.text
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, start = b1 & 0x7F, pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length, start = _U16.unpack_from(buf, pos + 2)[0], pos + 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, start = _U64.unpack_from(buf, pos + 2)[0], pos + 10
            if b1 & 0x80:
                raise WsError("server frames must not be masked")
            end = start + length
            if end > size:
                break
            opcode = b0 & 0x0F
            if opcode == 0x1:
                if b0 & 0x40:  # RSV1: a compressed message (RFC 7692 7.2.2)
                    text(self._inflate(bytes(buf[start:end])))
                else:
                    text(bytes(buf[start:end]))
            elif opcode == 0x9 and self.transport is not None:
                self.transport.write(client_frame(bytes(buf[start:end]), 0xA))
            elif opcode == 0x8:
                self.close()
            pos = end
        if pos:
            del buf[:pos]

    def _inflate(self, data: bytes) -> bytes:
        inflater = self._inflater
        if inflater is None:
            raise WsError("compressed frame without permessage-deflate")
        out: bytes = inflater.decompress(data + _DEFLATE_TAIL)
        if inflater.eof:  # the server ended its deflate stream (allowed): the next one starts anew
            self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        return out


class StampingTransport:
    """A minimal transport over a non-blocking socket that reads with ``recvmsg`` and sets
    ``stats.rx_ns`` to each read's kernel receive time (``SO_TIMESTAMPNS``, CLOCK_REALTIME,
    turned into monotonic ns) while the protocol parses it.

    With several segments in one read, TCP reports the last one's time: a frame that waited
    in the socket is stamped late, never early. Only for the sampled connections (a Python
    ``recvmsg`` costs the generator more than uvloop's reads).
    """

    def __init__(self, sock: socket.socket, protocol: asyncio.Protocol, stats: Stats) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._protocol = protocol
        self._stats = stats
        self._closing = False
        self._sending: asyncio.Future[None] | None = None
        self._loop.add_reader(sock.fileno(), self._readable)
        protocol.connection_made(cast(asyncio.Transport, self))

    def _readable(self) -> None:
        try:
            data, ancillary, _, _ = self._sock.recvmsg(262144, _CMSG_SPACE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        if not data:
            self._lost(None)
            return
        stats = self._stats
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
                sec, nsec = _TIMESPEC.unpack_from(payload)
                stats.rx_ns = sec * 1_000_000_000 + nsec - (time.time_ns() - time.monotonic_ns())
        try:
            self._protocol.data_received(data)
        except Exception as exc:  # noqa: BLE001 - as asyncio's transports do: close, report
            self._lost(exc)
        finally:
            stats.rx_ns = 0

    def write(self, data: bytes) -> None:
        """Send ``data``; what the socket does not take now is sent in order by a task."""
        if self._closing:
            return
        if self._sending is not None and not self._sending.done():
            self._track(self._send_after(self._sending, data))
            return
        try:
            sent = self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._lost(exc)
            return
        if sent < len(data):
            self._track(self._loop.sock_sendall(self._sock, data[sent:]))

    def _track(self, send: Coroutine[Any, Any, None]) -> None:
        self._sending = task = asyncio.ensure_future(send)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Future[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._lost(exc if isinstance(exc, Exception) else None)

    async def _send_after(self, previous: asyncio.Future[None], data: bytes) -> None:
        await previous
        await self._loop.sock_sendall(self._sock, data)

    def is_closing(self) -> bool:
        return self._closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``sockname`` and ``peername``, as asyncio's transports give them."""
        try:
            if name == "sockname":
                return self._sock.getsockname()
            if name == "peername":
                return self._sock.getpeername()
        except OSError:
            pass
        return default

    def abort(self) -> None:
        self._lost(None)

    close = abort  # no closing handshake to wait for: queued writes are dropped either way

    def _lost(self, exc: Exception | None) -> None:
        if self._closing:
            return
        self._closing = True
        if self._sending is not None:
            self._sending.cancel()  # before the close: its writer must not outlive the fd
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, exc)


_IP_BIND_ADDRESS_NO_PORT: Final = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux 4.2+


def _client_socket(local_addr: str | None, *, stamped: bool) -> socket.socket:
    """A non-blocking TCP socket, bound to ``local_addr`` if given.

    A socket bound to an address with port 0 gets its port at ``bind()``, from a search of the
    whole ephemeral range that slows as the address's ports fill (tens of thousands of
    connections from one address spent seconds of kernel time per thousand);
    ``IP_BIND_ADDRESS_NO_PORT`` leaves the port to ``connect()``, which picks it per
    destination, as for an unbound socket.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if stamped:
            sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        if local_addr:
            if sys.platform.startswith("linux"):
                sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((local_addr, 0))
    except BaseException:
        sock.close()
        raise
    return sock


async def connect(
    host: str, port: int, path: str, dialect: Dialect, *, deflate: bool = False, local_addr: str | None = None
) -> WsClient:
    """Open one connection and wait until its dialect says it is ready (listening).

    Sampled connections (``dialect.stats.sampled``) read through a
    :class:`StampingTransport` on Linux. ``deflate``: offer permessage-deflate (see
    :class:`WsClient`). ``local_addr``: the source address to bind (e.g. ``127.0.0.2``, so a
    server's per-address limits see this client apart from others on loopback; the port is
    chosen at connect, see :func:`_client_socket`).

    Raises:
        WsError: the handshake or the subscription was refused.
        OSError: the TCP connection failed.
    """
    loop = asyncio.get_running_loop()
    factory: Callable[[], WsClient] = lambda: WsClient(f"{host}:{port}", path, dialect, deflate=deflate)  # noqa: E731
    stamped = KERNEL_STAMPS and dialect.stats.sampled
    if stamped or local_addr:
        sock = _client_socket(local_addr, stamped=stamped)
        try:
            await loop.sock_connect(sock, (host, port))
            if stamped:
                client = factory()
                StampingTransport(sock, client, dialect.stats)
            else:
                _, client = await loop.create_connection(factory, sock=sock)
        except BaseException:
            sock.close()
            raise
    else:
        _, client = await loop.create_connection(factory, host, port)
    try:
        await dialect.ready
    except BaseException:
        client.close()
        raise
    return client
