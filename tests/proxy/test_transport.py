"""The aiohttp transport's own read timeouts, over real sockets.

The read timeout bounds the wait for the response head, counted from the end of the
request body, and the wait for each body chunk; it never lives on a pooled connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.proxy.transport import AiohttpTransport


class SlowServer:
    """Reads a request (Content-Length body), waits `head_delay_s`, then answers with a
    body sent in pieces `gap_s` apart."""

    def __init__(self, head_delay_s: float = 0.0, gap_s: float = 0.0, pieces: int = 1
                 ) -> None:
        self.head_delay_s, self.gap_s, self.pieces = head_delay_s, gap_s, pieces
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                await asyncio.sleep(self.head_delay_s)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % self.pieces)
                for _ in range(self.pieces):
                    await writer.drain()
                    await asyncio.sleep(self.gap_s)
                    writer.write(b"x")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def request(url: str, read_s: float, body: AsyncIterator[bytes] | None = None,
            length: int = 0) -> httpx.Request:
    headers = {"content-length": str(length)} if body is not None else {}
    return httpx.Request("POST" if body is not None else "GET", url + "/x", headers=headers,
                         content=body, extensions={"timeout": {"connect": 1, "read": read_s}})


@pytest.fixture
async def transport() -> AsyncIterator[AiohttpTransport]:
    t = AiohttpTransport()
    yield t
    await t.aclose()


async def test_a_slow_upload_is_not_a_read_timeout(transport: AiohttpTransport) -> None:
    """The client takes 0.6 s to send its body, the read timeout is 0.3 s: the head's
    deadline only starts once the body is out."""

    async def body() -> AsyncIterator[bytes]:
        for _ in range(6):
            await asyncio.sleep(0.1)
            yield b"y" * 100

    async with SlowServer(head_delay_s=0.1) as url:
        r = await transport.handle_async_request(request(url, 0.3, body(), 600))
        assert r.status_code == 200 and await r.aread() == b"x"


async def test_no_head_within_the_read_timeout_is_a_read_timeout(
        transport: AiohttpTransport) -> None:
    async with SlowServer(head_delay_s=2.0) as url:
        for req in (request(url, 0.2), request(url, 0.2, _one(b"z"), 1)):
            t0 = time.perf_counter()
            with pytest.raises(httpx.TimeoutException):
                await transport.handle_async_request(req)
            assert time.perf_counter() - t0 < 1.0


async def test_the_read_timeout_bounds_each_chunk_not_the_whole_body(
        transport: AiohttpTransport) -> None:
    async with SlowServer(gap_s=0.1, pieces=6) as url:     # 0.6 s in all, 0.1 s gaps
        r = await transport.handle_async_request(request(url, 0.3))
        assert await r.aread() == b"x" * 6
    async with SlowServer(gap_s=0.5, pieces=2) as url:
        r = await transport.handle_async_request(request(url, 0.2))
        with pytest.raises(httpx.ReadTimeout):
            await r.aread()


async def test_an_idle_pool_longer_than_the_read_timeout_still_serves(
        transport: AiohttpTransport) -> None:
    async with SlowServer(pieces=3) as url:
        for _ in range(3):
            r = await transport.handle_async_request(request(url, 0.2))
            assert await r.aread() == b"xxx"
            await r.aclose()
        await asyncio.sleep(0.5)
        r = await transport.handle_async_request(request(url, 0.2))
        assert r.status_code == 200 and await r.aread() == b"xxx"


async def _one(chunk: bytes) -> AsyncIterator[bytes]:
    yield chunk
