"""The metering scripts on a real Redis Cluster: one hash tag per account, one slot."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.caller import Caller
from gateway.metering.accounts import Account
from gateway.metering.engine import MeteringEngine
from gateway.metering.ledger import Ledger
from gateway.metering.plans import PlanTables
from gateway.rules import parse_rules
from gateway.store import open_store
from tests.redis_cluster import RedisCluster, start_cluster

RULES = """
version: 1
upstreams: {main: {url: "http://127.0.0.1:1", timeout: 5s}}
routes: [{prefix: /, upstream: main}]
meters: {fcu: {usd_per_unit: 0.000002}}
weights: {default: {meter: fcu, units: 1}, rules: []}
plans:
  free: {throughput: [{limit: 50, window: 60s}], quota: {fcu: 100}}
  team: {throughput: [{limit: 1000, window: 60s}], quota: {fcu: 30}, overage: true}
defaults: {user_plan: free}
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    c = start_cluster()
    yield c
    c.stop()


async def test_cascade_settle_and_usage_view_on_a_cluster(cluster: RedisCluster) -> None:
    rules = parse_rules(RULES)
    tables = PlanTables.build(rules)
    store = open_store(cluster.url, deadline_s=2.0)
    assert store.cluster
    engine = MeteringEngine(store)
    ledger = Ledger(store, engine.scripts)
    await ledger.set_plan(rules, Account("workspace", "acme"), "team")
    # Many accounts, so their hash tags land on every node.
    for i in range(12):
        caller = Caller(user=f"user{i}", workspace="acme" if i % 2 else None, key_id=f"k{i}")
        for n in range(4):
            d = await engine.admit(rules, tables, caller, meter="fcu", units=10,
                                   route="/", request_id=f"r{i}-{n}", idempotent=True,
                                   enforce=True)
            assert d.admitted, d.error
            if n == 3:
                settled = await engine.settle(rules, tables, d, caller, actual=4,
                                              kind="settle", route="/",
                                              request_id=f"r{i}-{n}", meter="fcu")
                # Given back from the pool the 4th request was paid from.
                pool = "overage" if i % 2 else "quota"
                assert (settled.delta, settled.pools) == (-6, {pool: -6})
        view = await ledger.view(rules, tables, Account("user", f"user{i}"))
        # Personal callers pay 3 x 10 + 4 (settled); workspace members' requests go to acme.
        assert view["units"]["fcu"] == (0 if i % 2 else 34)
        assert view["windows"][0]["used"] == (0 if i % 2 else 34)  # windows count the use
    team = await ledger.view(rules, tables, Account("workspace", "acme"))
    assert team["plan"] == "team"
    assert team["units"]["fcu"] == 6 * 34                 # six members, all paid by acme
    assert team["quota"][0]["overage_units"] == 6 * 34 - 30  # past the quota: overage
    await store.close()
