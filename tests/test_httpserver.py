"""Requests that are not HTTP are answered in problem+json, on both listeners."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from tests.gateway_harness import BASE_RULES, running_gateway

GARBAGE = [
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",         # a header without a colon
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 64,  # TLS to a plain port
    b"POST /api/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
]


async def exchange(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    response = await asyncio.wait_for(reader.read(1 << 16), 5)  # the server closes
    writer.close()
    return response


@pytest.mark.parametrize("data", GARBAGE)
async def test_unparseable_requests_get_a_problem(data: bytes) -> None:
    rules = BASE_RULES.format(upstream="http://127.0.0.1:9", timeout="1s")
    async with running_gateway(rules) as gw:
        for port in (gw.gateway.port(), gw.gateway.port("admin")):
            response = await exchange(port, data)
            head, _, body = response.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400 "), response
            assert b"content-type: application/problem+json" in head.lower()
            assert b"connection: close" in head.lower()
            problem = orjson.loads(body)
            assert (problem["status"], problem["code"]) == (400, "BAD_REQUEST")
