"""Machine calibration: the floor under the heavy fan-out figure, on this machine, today.

A bare writer process (the server's loop, uvloop when installed, and
``transport.write``) holds ``sockets`` loopback TCP connections to a reader process that
discards what it reads, and every ``interval`` seconds writes each socket one chunk of
``frames`` frames of 200 bytes: the writes our server makes in the heavy case (50
listeners x 1,000 msg/s, one merged write per listener per ``WRITE_INTERVAL``), and none
of its other work (no Redis read, no envelope parsing, no encoding, no bookkeeping). Its
CPU time per frame is a floor for any Python server that merges writes this way.

Why it is in the run: a loopback write's kernel cost moves with the machine's state (on
the 2-core VM it has varied by 1.5x between boots, for every server alike), so an
absolute figure such as "2 us per delivery" means little without the floor measured
beside it. The run takes the floor before and after the scenarios.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import resource
import time
from multiprocessing.connection import Connection
from typing import Any

FRAME_BYTES = 200


def _use_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _cpu_s() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


async def _write(pipe: Connection) -> None:
    loop = asyncio.get_running_loop()
    transports: list[asyncio.Transport] = []
    connected = asyncio.Event()
    wanted = 0

    class Accepted(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transports.append(transport)  # type: ignore[arg-type]  # uvloop's is not a subclass
            if len(transports) == wanted:
                connected.set()

    server = await loop.create_server(Accepted, "127.0.0.1", 0)
    pipe.send(server.sockets[0].getsockname()[1])
    cmd: dict[str, Any] = await loop.run_in_executor(None, pipe.recv)
    wanted, interval, duration = cmd["sockets"], cmd["interval"], cmd["duration"]
    chunk = b"\x81\x7e\x00\xc4" + b"x" * (FRAME_BYTES - 4)  # a 200-byte text frame
    chunk *= cmd["frames"]
    if len(transports) < wanted:
        await asyncio.wait_for(connected.wait(), 30)
    writes = 0
    user0, sys0 = _cpu_s()
    start = loop.time()
    due = start
    while loop.time() - start < duration:
        for transport in transports:
            transport.write(chunk)
        writes += len(transports)
        due += interval
        await asyncio.sleep(max(0.0, due - loop.time()))
    user1, sys1 = _cpu_s()
    buffered = sum(t.get_write_buffer_size() for t in transports)
    server.close()
    for transport in transports:
        transport.abort()
    pipe.send({"writes": writes, "user_s": user1 - user0, "system_s": sys1 - sys0, "buffered": buffered})


def _writer_main(pipe: Connection) -> None:
    _use_uvloop()
    asyncio.run(_write(pipe))


async def _read(pipe: Connection, port: int, sockets: int) -> None:
    loop = asyncio.get_running_loop()

    class Discard(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            pass

    transports = []
    for _ in range(sockets):
        transport, _ = await loop.create_connection(Discard, "127.0.0.1", port)
        transports.append(transport)
    pipe.send("connected")
    await loop.run_in_executor(None, pipe.recv)  # "stop"
    for transport in transports:
        transport.abort()


def _reader_main(pipe: Connection, port: int, sockets: int) -> None:
    _use_uvloop()
    asyncio.run(_read(pipe, port, sockets))


def write_floor(
    *, sockets: int = 50, rate: float = 1000.0, interval: float = 0.008, duration: float = 3.0
) -> dict[str, Any]:
    """Measure the bare merged-write cost (see the module docstring).

    Args:
        sockets: connections written to, as the heavy case's listeners.
        rate: frames per second per socket, as the heavy case's publications.
        interval: seconds between two writes to a socket (``WRITE_INTERVAL``; 0: one
            frame per write, every ``1 / rate`` seconds).
        duration: seconds of writing.

    Returns:
        ``{"sockets", "frames_per_write", "interval_ms", "writes", "user_s", "system_s",
        "us_per_write", "us_per_frame", "buffered", "measured_at"}``; CPU of the writer
        process only. ``buffered`` (bytes left in the writer's transports at the end) is 0
        unless the reader fell behind, which would make the floor read low.

    Raises:
        TimeoutError: a process did not answer within 60 seconds.
        EOFError: a process died.
    """
    frames = max(1, round(rate * interval))
    period = frames / rate
    ctx = multiprocessing.get_context("spawn")
    w_mine, w_theirs = ctx.Pipe()
    r_mine, r_theirs = ctx.Pipe()
    writer = ctx.Process(target=_writer_main, args=(w_theirs,), daemon=True)
    writer.start()
    w_theirs.close()  # the child holds it: a dead child then reads as EOF here, not a timeout
    reader = None
    try:
        port = _recv(w_mine)
        reader = ctx.Process(target=_reader_main, args=(r_theirs, port, sockets), daemon=True)
        reader.start()
        r_theirs.close()
        _recv(r_mine)
        w_mine.send({"sockets": sockets, "interval": period, "duration": duration, "frames": frames})
        result: dict[str, Any] = _recv(w_mine, 60 + duration)
        r_mine.send("stop")
    finally:
        for pipe in (w_mine, r_mine):
            pipe.close()
        for proc in (writer, reader):
            if proc is not None:
                proc.join(timeout=5)
                if proc.is_alive():
                    proc.terminate()
                    proc.join(timeout=5)
    cpu = result["user_s"] + result["system_s"]
    writes = max(1, result["writes"])
    return {
        "sockets": sockets,
        "frames_per_write": frames,
        "interval_ms": round(period * 1000, 3),
        "writes": result["writes"],
        "user_s": round(result["user_s"], 3),
        "system_s": round(result["system_s"], 3),
        "us_per_write": round(cpu / writes * 1e6, 2),
        "us_per_frame": round(cpu / writes / frames * 1e6, 2),
        "buffered": result["buffered"],
        "measured_at": time.strftime("%H:%M:%S"),
    }


def _recv(pipe: Connection, timeout: float = 60.0) -> Any:
    """The next message on ``pipe``; raises TimeoutError, or EOFError if the child died."""
    if not pipe.poll(timeout):
        raise TimeoutError("a calibration process did not answer")
    return pipe.recv()
