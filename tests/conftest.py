"""Shared fixtures: real Redis (started here) and the embedded store, through the same
tests; a recording upstream over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from gateway.store import Store, open_store
from tests.redis_servers import RedisServer, start_redis
from tests.upstream import RecordingUpstream


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture(params=["redis", "embedded"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    """A store URL: a real redis-server, or None for the embedded store."""
    if request.param == "embedded":
        return None
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


@pytest.fixture
async def store(store_url: str | None) -> AsyncIterator[Store]:
    s = open_store(store_url)
    await s.client.flushdb()
    yield s
    await s.close()


@pytest.fixture
async def upstream() -> AsyncIterator[RecordingUpstream]:
    """A local upstream that records what it receives (tests/upstream.py)."""
    up = RecordingUpstream()
    await up.start()
    yield up
    await up.stop()
