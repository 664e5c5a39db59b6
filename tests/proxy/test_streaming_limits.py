"""Streaming at scale: big bodies with flat memory, and no pool leak on disconnects."""

from __future__ import annotations

import asyncio
import hashlib
import resource
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.gateway_harness import BASE_RULES, client, running_gateway
from tests.upstream import RecordingUpstream

MiB = 1 << 20


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.slow
async def test_200_mib_upload_and_download_stream_with_flat_memory(
    upstream: RecordingUpstream,
) -> None:
    rules = BASE_RULES.format(upstream=upstream.url, timeout="60s")
    async with running_gateway(rules) as gw:
        key = await gw.new_key()
        block = bytes(range(256)) * 256  # 64 KiB
        blocks = 200 * MiB // len(block)
        expected = hashlib.sha256()
        for _ in range(blocks):
            expected.update(block)

        async def body() -> AsyncIterator[bytes]:
            for _ in range(blocks):
                yield block

        before = max_rss_mib()
        async with client(gw.url, timeout=120) as c:
            r = await c.post("/api/upload", content=body(),
                             headers={"X-Api-Key": key, "Content-Length": str(200 * MiB)})
            assert r.status_code == 200
            assert r.json() == {"bytes": 200 * MiB, "sha256": expected.hexdigest()}
            received = 0
            async with c.stream("GET", "/api/big?mb=200", headers={"X-Api-Key": key}) as d:
                assert d.headers["content-length"] == str(200 * MiB)
                async for chunk in d.aiter_raw():
                    received += len(chunk)
        grown = max_rss_mib() - before
    assert received == 200 * MiB
    # Client, gateway and upstream share this process: 400 MiB moved, memory stays flat.
    assert grown < 60, f"peak memory grew by {grown:.0f} MiB"


@pytest.mark.parametrize("transport", ["aiohttp", "httpcore"])
async def test_client_disconnects_mid_stream_never_leak_upstream_connections(
    upstream: RecordingUpstream, transport: str
) -> None:
    pool = 4
    rules = BASE_RULES.format(upstream=upstream.url, timeout="30s")
    async with running_gateway(rules, upstream_transport=transport,
                               max_upstream_connections=pool) as gw:
        key = await gw.new_key()
        for _ in range(pool * 10):
            async with client(gw.url) as c, c.stream(
                "GET", "/api/forever?ms=5", headers={"X-Api-Key": key}
            ) as r:
                async for chunk in r.aiter_raw():
                    assert chunk.startswith(b"data:")
                    break  # leave mid-stream: the client closes its connection
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while upstream.open_streams and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert upstream.open_streams == 0, (
            f"{upstream.open_streams} abandoned streams kept their upstream open")
        assert upstream.streams_closed_by_peer == pool * 10, (
            f"{upstream.streams_closed_by_peer} of {pool * 10} streams saw the gateway leave")
        # The pool (4 connections) is still usable: nothing leaked.
        async with client(gw.url, timeout=5) as c:
            results = await asyncio.gather(*(
                c.get("/api/echo", headers={"X-Api-Key": key}) for _ in range(pool * 2)))
        assert [r.status_code for r in results] == [200] * (pool * 2)
        async with httpx.AsyncClient() as admin:
            metrics = (await admin.get(gw.admin_url + "/metrics")).text
        counted = [line for line in metrics.splitlines()
                   if line.startswith("gateway_client_disconnects_total")]
        assert counted == ['gateway_client_disconnects_total{route="/api/"} 40.0'], counted


async def disconnects(admin_url: str) -> float:
    async with httpx.AsyncClient() as admin:
        metrics = (await admin.get(admin_url + "/metrics")).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("gateway_client_disconnects_total{"))


@pytest.mark.parametrize("transport", ["aiohttp", "httpcore"])
async def test_a_client_leaving_a_fast_download_is_noticed(
    upstream: RecordingUpstream, transport: str
) -> None:
    """The upstream is faster than any client: every read finishes before the client's
    departure is looked at. The gateway must still stop, not relay 50 MiB into the void."""
    rules = BASE_RULES.format(upstream=upstream.url, timeout="30s")
    async with running_gateway(rules, upstream_transport=transport) as gw:
        key = await gw.new_key()
        for _ in range(8):
            async with client(gw.url) as c, c.stream(
                "GET", "/api/big?mb=50", headers={"X-Api-Key": key}
            ) as r:
                async for _chunk in r.aiter_raw():
                    break
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while await disconnects(gw.admin_url) < 8 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert await disconnects(gw.admin_url) == 8


@pytest.mark.parametrize("transport", ["aiohttp", "httpcore"])
async def test_connections_back_in_the_pool_carry_no_stale_read_timeout(
    upstream: RecordingUpstream, transport: str
) -> None:
    """Big downloads read slowly (the gateway pauses the upstream for backpressure, and
    resumes after the body ended), then an idle spell longer than the read timeout: the
    pooled connections must still serve the next requests, not fail with a 504 at once."""
    rules = BASE_RULES.format(upstream=upstream.url, timeout="1s")
    async with running_gateway(rules, upstream_transport=transport,
                               max_upstream_connections=4) as gw:
        key = await gw.new_key()

        async def slow_download() -> int:
            got = 0
            async with client(gw.url) as c, c.stream(
                "GET", "/api/big?mb=16", headers={"X-Api-Key": key}
            ) as r:
                async for chunk in r.aiter_raw():
                    got += len(chunk)
                    await asyncio.sleep(0.001)
            return got

        assert await asyncio.gather(*(slow_download() for _ in range(4))) == [16 * MiB] * 4
        await asyncio.sleep(1.5)
        async with client(gw.url) as c:
            codes = [(await c.get("/api/echo", headers={"X-Api-Key": key})).status_code
                     for _ in range(12)]
        assert codes == [200] * 12
