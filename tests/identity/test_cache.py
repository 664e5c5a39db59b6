"""KeyCache: hits, TTLs, revocation, negative caching, the bound, single-flight."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import StoreUnavailable
from gateway.identity.cache import KeyCache
from gateway.identity.keys import ApiKey, generate_secret
from gateway.identity.registry import KeyRegistry
from gateway.store import Store


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingRegistry:
    """The real registry, with a count of the lookups that reach the store."""

    def __init__(self, registry: KeyRegistry, delay_s: float = 0.0) -> None:
        self.registry = registry
        self.lookups = 0
        self.delay_s = delay_s

    async def lookup_digest(self, digest: str) -> ApiKey | None:
        self.lookups += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)  # a slow store: lets concurrent misses overlap
        return await self.registry.lookup_digest(digest)


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_hit_does_not_touch_the_store(store: Store, clock: Clock) -> None:
    registry = KeyRegistry(store)
    source = CountingRegistry(registry)
    cache = KeyCache(source, ttl_s=2.0, clock=clock)
    key, secret = await registry.create(user="ann")
    assert await cache.resolve(secret) == key
    for _ in range(50):
        clock.now += 0.01
        assert await cache.resolve(secret) == key
    assert source.lookups == 1


async def test_entries_expire_after_the_ttl(store: Store, clock: Clock) -> None:
    registry = KeyRegistry(store)
    source = CountingRegistry(registry)
    cache = KeyCache(source, ttl_s=2.0, clock=clock)
    _, secret = await registry.create(user="ann")
    await cache.resolve(secret)
    clock.now += 1.99
    await cache.resolve(secret)
    assert source.lookups == 1
    clock.now += 0.02
    await cache.resolve(secret)
    assert source.lookups == 2


async def test_revoked_key_stops_resolving_within_the_ttl(store: Store, clock: Clock) -> None:
    registry = KeyRegistry(store)
    cache = KeyCache(registry, ttl_s=2.0, clock=clock)
    key, secret = await registry.create(user="ann")
    assert not (await cache.resolve(secret)).revoked  # type: ignore[union-attr]
    await registry.revoke(key.id)
    clock.now += 1.0
    stale = await cache.resolve(secret)
    assert stale is not None and not stale.revoked  # still cached: the documented window
    clock.now += 1.01
    fresh = await cache.resolve(secret)
    assert fresh is not None and fresh.revoked


async def test_unknown_keys_are_cached_briefly(store: Store, clock: Clock) -> None:
    source = CountingRegistry(KeyRegistry(store))
    cache = KeyCache(source, ttl_s=2.0, negative_ttl_s=0.5, clock=clock)
    secret = generate_secret()
    assert await cache.resolve(secret) is None
    clock.now += 0.4
    assert await cache.resolve(secret) is None
    assert source.lookups == 1
    clock.now += 0.2
    assert await cache.resolve(secret) is None
    assert source.lookups == 2


async def test_malformed_keys_never_reach_the_store(store: Store, clock: Clock) -> None:
    source = CountingRegistry(KeyRegistry(store))
    cache = KeyCache(source, clock=clock)
    for bad in ("", "nope", "gw_live_nope", "Bearer x", "gw_live_" + "!" * 43):
        assert await cache.resolve(bad) is None
    assert source.lookups == 0 and len(cache) == 0


async def test_the_cache_is_bounded(store: Store, clock: Clock) -> None:
    registry = KeyRegistry(store)
    source = CountingRegistry(registry)
    cache = KeyCache(source, max_entries=10, clock=clock)
    _, keep = await registry.create(user="ann")
    await cache.resolve(keep)
    for _ in range(100):  # a spray of random well-formed keys
        assert await cache.resolve(generate_secret()) is None
        assert len(cache) <= 10
    assert len(cache) == 10
    before = source.lookups
    await cache.resolve(keep)  # the oldest entry was evicted: asks again
    assert source.lookups == before + 1


async def test_expired_entries_are_evicted_before_live_ones(clock: Clock) -> None:
    class Fixed:
        lookups = 0

        async def lookup_digest(self, digest: str) -> ApiKey | None:
            self.lookups += 1
            return None

    source = Fixed()
    cache = KeyCache(source, negative_ttl_s=1.0, max_entries=3, clock=clock)
    old = [generate_secret() for _ in range(2)]
    for s in old:
        await cache.resolve(s)
    clock.now += 0.5
    young = generate_secret()
    await cache.resolve(young)
    clock.now += 0.6  # the two old entries have expired, the young one has not
    await cache.resolve(generate_secret())
    assert len(cache) == 2
    await cache.resolve(young)
    assert source.lookups == 4  # young was still cached


async def test_concurrent_misses_share_one_lookup(store: Store, clock: Clock) -> None:
    registry = KeyRegistry(store)
    source = CountingRegistry(registry, delay_s=0.05)
    cache = KeyCache(source, clock=clock)
    key, secret = await registry.create(user="ann")
    other_key, other = await registry.create(user="bob")
    results = await asyncio.gather(*[cache.resolve(secret) for _ in range(100)],
                                   *[cache.resolve(other) for _ in range(100)])
    assert results == [key] * 100 + [other_key] * 100
    assert source.lookups == 2


async def test_store_failures_propagate_and_are_not_cached(clock: Clock) -> None:
    class Flaky:
        def __init__(self) -> None:
            self.calls = 0

        async def lookup_digest(self, digest: str) -> ApiKey | None:
            self.calls += 1
            await asyncio.sleep(0.01)
            if self.calls == 1:
                raise StoreUnavailable()
            return None

    source = Flaky()
    observed: list[tuple[str, bool]] = []
    cache = KeyCache(source, clock=clock,
                     observe=lambda op, seconds, ok: observed.append((op, ok)))
    secret = generate_secret()
    outcomes = await asyncio.gather(*[cache.resolve(secret) for _ in range(5)],
                                    return_exceptions=True)
    assert all(isinstance(o, StoreUnavailable) for o in outcomes)  # shared, one call
    assert source.calls == 1
    assert await cache.resolve(secret) is None
    assert source.calls == 2
    # Each lookup counted once, as the store metrics count calls: a failure, a success.
    assert observed == [("key_lookup", False), ("key_lookup", True)]


async def test_a_cancelled_waiter_does_not_cancel_the_others(store: Store) -> None:
    registry = KeyRegistry(store)
    source = CountingRegistry(registry, delay_s=0.05)
    cache = KeyCache(source)
    key, secret = await registry.create(user="ann")
    first = asyncio.create_task(cache.resolve(secret))
    second = asyncio.create_task(cache.resolve(secret))
    await asyncio.sleep(0.01)
    first.cancel()
    assert await second == key
    assert first.cancelled() and source.lookups == 1


@pytest.mark.parametrize("ttl", [-1.0, 5.01, 60.0])
def test_ttls_beyond_the_revocation_promise_are_refused(ttl: float) -> None:
    with pytest.raises(ValueError):
        KeyCache(CountingRegistry(None), ttl_s=ttl)  # type: ignore[arg-type]
