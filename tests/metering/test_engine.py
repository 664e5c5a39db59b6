"""MeteringEngine.admit's prepared debits: what it keeps per caller, route and cost must
never outlive what it was made from, and its direct await must fail like the store."""

from __future__ import annotations

import pytest

from gateway.caller import Caller
from gateway.errors import StoreUnavailable
from gateway.metering.accounts import Account
from gateway.metering.engine import MeteringEngine
from gateway.metering.plans import PlanTables
from gateway.rules import Rules, parse_rules
from gateway.store import Store, open_store
from tests.redis_servers import start_redis

RULES = """
version: 1
upstreams: {{main: {{url: "http://127.0.0.1:9", timeout: 5s}}}}
routes: [{{prefix: /, upstream: main}}]
meters: {{fcu: {{usd_per_unit: 0.000002}}}}
weights: {{default: {{meter: fcu, units: 1}}}}
plans: {{big: {{throughput: [{{limit: 1000000, window: 60s}}], quota: {{fcu: {quota}}}}}}}
defaults: {{user_plan: big}}
"""


def rules_with(quota: int) -> tuple[Rules, PlanTables]:
    rules = parse_rules(RULES.format(quota=quota), filename="r.yaml")
    return rules, PlanTables.build(rules)


async def admit(engine: MeteringEngine, rules: Rules, tables: PlanTables, caller: Caller,
                units: int, request_id: str) -> tuple[bool, str | None]:
    d = await engine.admit(rules, tables, caller, meter="fcu", units=units, route="/",
                           request_id=request_id, idempotent=False, enforce=True)
    return d.admitted, d.error.code if d.error else None


async def recorded_units(store: Store, user: str) -> list[int]:
    entries = await store.client.xrange(Account("user", user).usage_stream)
    return [int(fields[b"units"]) for _, fields in entries]


async def test_a_debit_after_a_script_flush_is_charged_once(store: Store) -> None:
    rules, tables = rules_with(1_000_000)
    engine = MeteringEngine(store)
    caller = Caller(user="flushed", workspace=None, key_id="k1")
    assert await admit(engine, rules, tables, caller, 3, "r1") == (True, None)
    await store.client.script_flush()  # as after a Redis restart: the sha is unknown
    assert await admit(engine, rules, tables, caller, 4, "r2") == (True, None)
    assert await recorded_units(store, "flushed") == [3, 4]


async def test_prepared_debits_follow_a_rules_reload(store: Store) -> None:
    engine = MeteringEngine(store)
    caller = Caller(user="reloaded", workspace=None, key_id="k1")
    rules, tables = rules_with(1_000_000)
    assert await admit(engine, rules, tables, caller, 3, "r1") == (True, None)
    # The same caller, route and cost under new rules: the plan's quota is now 5 units,
    # 3 are used, and 3 more do not fit (no grace).
    rules, tables = rules_with(5)
    assert await admit(engine, rules, tables, caller, 3, "r2") == (False, "QUOTA_EXHAUSTED")
    assert await admit(engine, rules, tables, caller, 2, "r3") == (True, None)
    assert await recorded_units(store, "reloaded") == [3, 2]


async def test_a_keys_own_limit_is_part_of_what_is_prepared(store: Store) -> None:
    rules, tables = rules_with(1_000_000)
    engine = MeteringEngine(store)
    unlimited = Caller(user="keyed", workspace=None, key_id="k1")
    limited = Caller(user="keyed", workspace=None, key_id="k1", key_limit=2, key_window_s=60)
    assert await admit(engine, rules, tables, unlimited, 1, "r1") == (True, None)
    assert await admit(engine, rules, tables, limited, 2, "r2") == (True, None)
    assert await admit(engine, rules, tables, limited, 1, "r3") == (False, "RATE_LIMITED")
    # The key without its limit (it was lifted) is not held to the limit's template.
    assert await admit(engine, rules, tables, unlimited, 1, "r4") == (True, None)
    assert await recorded_units(store, "keyed") == [1, 2, 1]


async def test_a_debit_redis_refuses_is_store_unavailable() -> None:
    """An error reply other than NOSCRIPT (here: Redis out of memory for writes) is the
    request's STORE_UNAVAILABLE, not an exception of its own, and nothing is charged."""
    server = start_redis()
    store = open_store(server.url)
    try:
        rules, tables = rules_with(1_000_000)
        observed: list[tuple[str, float, bool]] = []
        engine = MeteringEngine(store, observe_store=lambda *a: observed.append(a))
        caller = Caller(user="oom", workspace=None, key_id="k1")
        assert await admit(engine, rules, tables, caller, 1, "r1") == (True, None)
        await store.client.config_set("maxmemory", "1")
        await store.client.config_set("maxmemory-policy", "noeviction")
        with pytest.raises(StoreUnavailable, match="store error"):
            await admit(engine, rules, tables, caller, 1, "r2")
        await store.client.config_set("maxmemory", "0")
        assert await recorded_units(store, "oom") == [1]
        # Both debits were observed: the latency of each, the failure as a failure.
        assert [(op, ok) for op, _, ok in observed] == [("debit", True), ("debit", False)]
        assert all(0 <= seconds < 5 for _, seconds, _ in observed)
    finally:
        await store.close()
        server.stop()
