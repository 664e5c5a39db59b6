"""bench/fast_upstream.py over real sockets: framing, keep-alive, pipelining, close."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bench.fast_upstream import BODY, RESPONSE, FixedResponder


@pytest.fixture
async def port() -> AsyncIterator[int]:
    server = await asyncio.get_running_loop().create_server(FixedResponder, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def exchange(port: int, data: bytes, expect: int) -> bytes:
    """Send `data`, read until `expect` bytes arrived or the server closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    got = b""
    while len(got) < expect:
        chunk = await asyncio.wait_for(reader.read(65536), 2)
        if not chunk:
            break
        got += chunk
    writer.close()
    return got


def test_body_is_about_100_bytes() -> None:
    assert 80 <= len(BODY) <= 120
    assert RESPONSE.endswith(b"\r\n\r\n" + BODY)
    assert f"Content-Length: {len(BODY)}\r\n".encode() in RESPONSE


async def test_keep_alive_and_pipelining(port: int) -> None:
    req = b"GET /api/v1/bench HTTP/1.1\r\nHost: x\r\n\r\n"
    got = await exchange(port, req * 3, 3 * len(RESPONSE))
    assert got == RESPONSE * 3


async def test_bodies_are_skipped_by_content_length_and_chunked(port: int) -> None:
    req = (b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
           b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n0\r\n\r\n"
           b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await exchange(port, req, 3 * len(RESPONSE)) == RESPONSE * 3


async def test_split_request_waits_for_the_rest(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /a HTTP/1.1\r\nContent-Length: 4\r\n\r\nab")
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), 0.1)  # half a body: no answer yet
    writer.write(b"cd")
    assert await asyncio.wait_for(reader.readexactly(len(RESPONSE)), 2) == RESPONSE
    writer.close()


async def test_connection_close_is_honoured(port: int) -> None:
    got = await exchange(port, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", 1 << 16)
    assert b"\r\nConnection: close\r\n" in got
    assert got.endswith(BODY)  # and then EOF, or exchange() would have timed out


async def test_garbage_gets_400(port: int) -> None:
    got = await exchange(port, b"POST / HTTP/1.1\r\nContent-Length: lots\r\n\r\n", 1 << 16)
    assert got.startswith(b"HTTP/1.1 400 ")
