"""A client that leaves before the upstream answers cancels the upstream request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import orjson
import pytest

from gateway.proxy import departure
from tests.gateway_harness import BASE_RULES, RunningGateway, client, running_gateway
from tests.upstream import RecordingUpstream


@pytest.fixture(autouse=True)
def quick_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(departure, "WATCH_AFTER_S", 0.1)


@pytest.fixture(params=["aiohttp", "httpcore"])
async def gw(request: pytest.FixtureRequest, store_url: str | None,
             upstream: RecordingUpstream) -> AsyncIterator[RunningGateway]:
    rules = BASE_RULES.format(upstream=upstream.url, timeout="30s")
    async with running_gateway(rules, store_url, upstream_transport=request.param,
                               max_upstream_connections=2) as g:
        yield g


async def leave_early(gw: RunningGateway, key: str, request: bytes, after_s: float) -> None:
    """Send a request, wait, hang up without reading an answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.gateway.port())
    writer.write(request.replace(b"KEY", key.encode()))
    await writer.drain()
    await asyncio.sleep(after_s)
    assert not reader.at_eof()  # no answer yet: the upstream is still busy
    writer.close()
    await writer.wait_closed()


async def until(condition: Callable[[], bool], seconds: float = 5) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition() and loop.time() < deadline:
        await asyncio.sleep(0.02)


GET_SLOW = b"GET /api/slow?ms=20000 HTTP/1.1\r\nHost: gw\r\nX-Api-Key: KEY\r\n\r\n"
POST_SLOW = (b"POST /api/slow?ms=20000 HTTP/1.1\r\nHost: gw\r\nX-Api-Key: KEY\r\n"
             b"Content-Length: 5\r\n\r\nhello")


@pytest.mark.parametrize("request_bytes", [GET_SLOW, POST_SLOW], ids=["get", "post"])
async def test_leaving_before_the_answer_closes_the_upstream_request(
        gw: RunningGateway, upstream: RecordingUpstream, request_bytes: bytes) -> None:
    key = await gw.new_key()
    metrics = gw.runtime.metrics
    await leave_early(gw, key, request_bytes, 0.5)
    await until(lambda: upstream.abandoned == 1)
    assert upstream.abandoned == 1  # within seconds, not the 20 s the job would take
    counted = metrics.requests.labels("/api/", "admit", "CLIENT_DISCONNECTED")
    await until(lambda: counted.value == 1)
    assert counted.value == 1
    assert metrics.client_disconnects.labels("/api/")._value.get() == 1
    # The request ran on the upstream until then: its units stay charged, once.
    async with client(gw.url) as c:
        me = (await c.get("/usage/me", headers={"X-Api-Key": key})).json()
    assert me["usage"]["requests"] == 1 and me["usage"]["units"]["fcu"] == 1


async def test_a_client_that_waits_gets_the_slow_answer(
        gw: RunningGateway, upstream: RecordingUpstream) -> None:
    key = await gw.new_key()
    async with client(gw.url) as c:
        got = await c.get("/api/slow?ms=600", headers={"X-Api-Key": key})
        posted = await c.post("/api/slow?ms=600", headers={"X-Api-Key": key},
                              content=b"x" * 100_000)
    assert got.status_code == 200 and orjson.loads(got.content)["method"] == "GET"
    assert posted.status_code == 200 and orjson.loads(posted.content)["body_len"] == 100_000
    assert upstream.abandoned == 0


async def test_departures_leak_no_upstream_connections(
        gw: RunningGateway, upstream: RecordingUpstream) -> None:
    key = await gw.new_key()
    for _ in range(6):  # three times the pool
        await leave_early(gw, key, GET_SLOW, 0.2)
    await until(lambda: upstream.abandoned == 6)
    assert upstream.abandoned == 6
    async with client(gw.url) as c:
        r = await c.get("/api/echo", headers={"X-Api-Key": key}, timeout=5)
    assert r.status_code == 200
    assert upstream.open_connections <= 2
