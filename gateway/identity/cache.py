"""The hot path's view of API keys: an in-process TTL cache in front of the registry.

Without it every proxied request would cost a Redis round trip just to learn who is
calling. Entries are keyed by the secret's hash and live `ttl_s` (default 2 s, at most
5 s): that bound is the promise that **a revoked key stops working on every replica
within 5 seconds**, with no invalidation messages to lose. Unknown keys are remembered
for `negative_ttl_s` so a client retrying a bad key does not hit Redis each time.

Memory is bounded (`max_entries`; expired entries go first, then the oldest), so spraying
random keys cannot grow it; malformed keys never reach the store or the cache at all.
Concurrent misses for one key share a single lookup, so a cold cache under load does
not stampede Redis. Store failures are not cached: the next request asks again.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from gateway.identity.keys import ApiKey, hash_secret, is_well_formed

MAX_TTL_S = 5.0  # the revocation promise


class KeySource(Protocol):
    """Where keys come from on a miss (`KeyRegistry` is one)."""

    async def lookup_digest(self, digest: str) -> ApiKey | None: ...


class KeyCache:
    """Resolve secrets to keys, asking the registry at most once per key per TTL."""

    def __init__(
        self,
        registry: KeySource,
        ttl_s: float = 2.0,
        negative_ttl_s: float = 1.0,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        observe: Callable[[str, float, bool], None] | None = None,
    ) -> None:
        # 0 is allowed (no caching, lookups still shared); above 5 s breaks the promise.
        if not 0 <= ttl_s <= MAX_TTL_S or not 0 <= negative_ttl_s <= MAX_TTL_S:
            raise ValueError(f"key cache TTLs must be in [0, {MAX_TTL_S}] seconds")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._registry = registry
        self._ttl_s = ttl_s
        self._negative_ttl_s = negative_ttl_s
        self._max_entries = max_entries
        self._clock = clock
        # Each lookup's latency and outcome, as the store metrics count them (op
        # "key_lookup"): a store failing only here would otherwise go uncounted.
        self._observe = observe
        # digest -> (expires_at, key or None); insertion order = age, for eviction.
        self._entries: OrderedDict[str, tuple[float, ApiKey | None]] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[ApiKey | None]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def resolve(self, secret: str) -> ApiKey | None:
        """The key for `secret` (check `.revoked`), or None if there is no such key.

        Raises StoreUnavailable when the store cannot answer and nothing is cached.
        """
        if not is_well_formed(secret):
            return None
        digest = hash_secret(secret)
        entry = self._entries.get(digest)
        if entry is not None:
            if entry[0] > self._clock():
                return entry[1]
            del self._entries[digest]
        task = self._inflight.get(digest)
        if task is None:
            task = asyncio.create_task(self._fetch(digest))
            self._inflight[digest] = task
            task.add_done_callback(lambda t: self._finished(digest, t))
        # shield: one waiter giving up (client disconnect) must not cancel the others'.
        return await asyncio.shield(task)

    def clear(self) -> None:
        """Forget everything (tests; an operator-triggered flush)."""
        self._entries.clear()

    def _finished(self, digest: str, task: asyncio.Task[ApiKey | None]) -> None:
        self._inflight.pop(digest, None)
        if not task.cancelled():
            task.exception()  # retrieved: if every waiter left, asyncio must not complain

    async def _fetch(self, digest: str) -> ApiKey | None:
        t0 = time.perf_counter()
        ok = False
        try:
            key = await self._registry.lookup_digest(digest)
            ok = True
        finally:
            if self._observe is not None:
                self._observe("key_lookup", time.perf_counter() - t0, ok)
        ttl = self._ttl_s if key is not None else self._negative_ttl_s
        self._store(digest, key, self._clock() + ttl)
        return key

    def _store(self, digest: str, key: ApiKey | None, expires_at: float) -> None:
        entries = self._entries
        entries.pop(digest, None)
        if len(entries) >= self._max_entries:
            now = self._clock()
            # Drop expired entries from the old end first (amortised: each goes once) …
            while entries and next(iter(entries.values()))[0] <= now:
                entries.popitem(last=False)
            # … then, if still full, the oldest live ones.
            while len(entries) >= self._max_entries:
                entries.popitem(last=False)
        entries[digest] = (expires_at, key)
