"""A deliberately trivial HTTP/1.1 upstream for the benchmark.

    python bench/fast_upstream.py PORT        (0: any free port)

It answers every request with the same ~100-byte JSON 200, on keep-alive connections,
from a raw `asyncio.Protocol` (on uvloop when installed). No framework, no routing,
no header parsing beyond framing: it must be so much faster than the gateway that the
benchmark measures the gateway and not its backend. When listening it prints
`READY <port>` on stdout, so the caller needs no port-guessing or polling.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import cast

BODY = (b'{"ok":true,"service":"bench-upstream","note":"a fixed body so every response '
        b'is the same size"}')
RESPONSE = (b"HTTP/1.1 200 OK\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: " + str(len(BODY)).encode() + b"\r\n"
            b"\r\n" + BODY)
# The same, for a client that asked to close: say so, then close after writing.
RESPONSE_CLOSE = RESPONSE.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
MAX_HEAD = 64 * 1024  # a head larger than this is not a benchmark request


class _Incomplete(Exception):
    """The buffer does not yet hold a whole request."""


class FixedResponder(asyncio.Protocol):
    """Frames requests (pipelining included) and answers each with `RESPONSE`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        out = bytearray()
        close = False
        while self.buffer and not close:
            try:
                consumed, close = _frame(self.buffer)
            except _Incomplete:
                break
            except ValueError:  # unframeable: answer 400 and drop the connection
                out += b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                close = True
                break
            del self.buffer[:consumed]
            out += RESPONSE_CLOSE if close else RESPONSE
        if len(self.buffer) > MAX_HEAD and not close:
            out += b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n\r\n"
            close = True
        if out:
            # One write per read: pipelined requests get their answers in one syscall.
            self.transport.write(bytes(out))
        if close:
            self.transport.close()


def _frame(buf: bytearray) -> tuple[int, bool]:
    """Bytes taken by the first request in `buf`, and whether it asked to close."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        raise _Incomplete
    head = bytes(buf[:end]).lower()
    consumed = end + 4
    http10 = head.split(b"\r\n", 1)[0].endswith(b" http/1.0")
    close = b"\r\nconnection: close" in head or (
        http10 and b"\r\nconnection: keep-alive" not in head)
    i = head.find(b"\r\ncontent-length:")
    if i >= 0:
        line_end = head.find(b"\r\n", i + 2)
        length = int(head[i + 17:line_end if line_end >= 0 else None].strip())
        if len(buf) < consumed + length:
            raise _Incomplete
        return consumed + length, close
    if b"\r\ntransfer-encoding: chunked" in head:
        # Benchmark bodies are tiny: wait for the last-chunk marker rather than parse sizes.
        done = buf.find(b"0\r\n\r\n", consumed)
        if done < 0:
            raise _Incomplete
        return done + 5, close
    return consumed, close


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FixedResponder, "127.0.0.1", port, backlog=1024)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str]) -> int:
    port = int(argv[1]) if len(argv) > 1 else 0
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(port))
    else:
        uvloop.run(serve(port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
