"""Sliding weighted windows never over-admit, checked against an exact reference."""

from __future__ import annotations

import asyncio
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.metering.accounts import Account
from gateway.metering.plans import BUCKETS
from gateway.store import Store, open_store
from tests.metering.script_driver import Driver, plan_table
from tests.redis_servers import RedisServer

T0 = 1_795_000_000_000  # 2026-11-18, a fixed injected clock


async def window_driver(store_url: str | None, limit: int, window: int
                        ) -> tuple[Store, Driver]:
    """An empty store and a debit driver whose default plan has one window of `limit`
    units per `window` ms over all meters."""
    store = open_store(store_url)
    await store.client.flushdb()
    return store, Driver(store, plan_table(free=f"-1 1 0 1 {limit}:{window}:*"))


def assert_never_over_admits(admitted: list[tuple[int, int]], limit: int, window: int) -> None:
    """Exact reference: every trailing window (t - W, t] holds at most `limit` units."""
    admitted.sort()
    for i, (t, _) in enumerate(admitted):
        total = sum(u for (s, u) in admitted[: i + 1] if s > t - window)
        assert total <= limit, f"{total} units admitted in the {window} ms before {t}"


events = st.lists(st.tuples(st.integers(0, 4000), st.integers(1, 12)), min_size=1,
                  max_size=120)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=events, limit=st.integers(5, 40))
def test_window_invariant_and_underadmission_bound(
    store_url: str | None, steps: list[tuple[int, int]], limit: int
) -> None:
    window = 10_000
    width = window // BUCKETS

    async def scenario() -> None:
        store, driver = await window_driver(store_url, limit, window)
        acct = Account("user", "w")
        now = T0
        admitted: list[tuple[int, int]] = []
        for dt, units in steps:
            now += dt
            leg = await driver.debit(acct, units, now)
            if leg.verdict == 1:
                admitted.append((now, units))
            elif units <= limit:
                assert leg.code == "RATE_LIMITED"
                assert leg.retry_after_ms > 0
                # Under-admission bound: a refusal is only ever caused by units admitted
                # within the last W + one bucket width.
                recent = sum(u for s, u in admitted if s > now - window - width)
                assert recent + units > limit
            else:
                assert leg.code == "COST_EXCEEDS_LIMIT"
        assert_never_over_admits(admitted, limit, window)
        await store.close()

    asyncio.run(scenario())


async def test_concurrent_weighted_traffic_on_redis_time(redis_server: RedisServer) -> None:
    """Many concurrent clients, Redis TIME as the clock, weighted units: exact check."""
    limit, window = 50, 400
    store, driver = await window_driver(redis_server.url, limit, window)
    acct = Account("user", "concurrent")
    admitted: list[tuple[int, int]] = []
    refused = 0
    rng = random.Random(7)

    async def client() -> None:
        nonlocal refused
        for _ in range(60):
            units = rng.randint(1, 5)
            leg = await driver.debit(acct, units, None)
            if leg.verdict == 1:
                admitted.append((leg.now_ms, units))
            else:
                refused += 1
            await asyncio.sleep(rng.random() * 0.04)

    await asyncio.gather(*(client() for _ in range(16)))
    await store.close()
    assert refused > 0, "the test must actually push the limit"
    assert sum(u for _, u in admitted) > limit, "traffic spanned several windows"
    assert_never_over_admits(admitted, limit, window)


WINDOW_OPS = st.lists(st.tuples(
    st.sampled_from(["debit", "settle", "debit", "back"]),
    st.integers(0, 3000),     # ms forward (or back, for "back")
    st.integers(1, 9),        # units
    st.integers(0, 20)),      # settled to
    min_size=1, max_size=80)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=WINDOW_OPS)
def test_the_running_total_always_equals_its_buckets(
    store_url: str | None, ops: list[tuple[str, int, int, int]]
) -> None:
    """The window's summary field (newest bucket, units in its span, oldest bucket with
    units) agrees with the buckets themselves after any mix of debits, settlements up and
    down, time passing and the clock stepping back."""
    window, limit = 10_000, 40

    async def scenario() -> None:
        store, d = await window_driver(store_url, limit, window)
        acct = Account("user", "sum")
        now = T0
        for i, (op, dt, units, actual) in enumerate(ops):
            now = now - dt if op == "back" else now + dt
            leg = await d.debit(acct, units, now, rid=f"r{i}")
            if op == "settle" and leg.verdict == 1:
                await d.settle(leg, units, actual, f"r{i}", now + dt // 2, quota=-1,
                               overage=True)
            raw = await store.client.hgetall(acct.windows_key)
            fields = {k.decode(): v.decode() for k, v in raw.items()}
            prefix = f"a:*:{window}:"
            if prefix + "s" not in fields:
                continue
            last, used, first = map(int, fields[prefix + "s"].split(":"))
            buckets = {}
            for name, value in fields.items():
                if name.startswith(prefix) and name != prefix + "s":
                    b, u = map(int, value.split(":"))
                    if last - BUCKETS <= b <= last:
                        buckets[b] = u
            assert used == sum(buckets.values()), (i, fields)
            holding = [b for b, u in buckets.items() if u > 0]
            if used == 0:
                assert first == -1
            else:
                # The oldest holding bucket, or an older one emptied by a give-back.
                assert last - BUCKETS <= first <= min(holding), (i, fields)
        await store.close()

    asyncio.run(scenario())
