"""GET /admin/usage and GET /admin/model-economics from the usage streams, exact values."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.admin.economics import (
    DayRollup,
    margin_pct,
    model_economics,
    parse_rollup_key,
    pico_to_usd,
    platform_usage,
    read_rollups,
)
from gateway.metering.accounts import Account
from gateway.rules import parse_rules
from gateway.store import open_store
from tests.gateway_harness import ADMIN_TOKEN, RunningGateway, client, running_gateway
from tests.metering.script_driver import Driver, plan_table
from tests.redis_cluster import start_cluster
from tests.upstream import RecordingUpstream

DAY1 = 1_795_000_000_000   # 2026-11-18T11:06:40Z
DAY2 = DAY1 + 86_400_000   # 2026-11-19

RULES = """
version: 1
upstreams:
  main: {{url: "{upstream}", timeout: 5s}}
routes:
  - {{prefix: /api/, upstream: main}}
identity:
  api_key_headers: [X-Api-Key, Authorization]
meters:
  fcu: {{usd_per_unit: 0.000002, cost_usd_per_unit: 0.0000015}}
  tokens: {{usd_per_unit: 0.000001, cost_usd_per_unit: 0.0000004}}
weights:
  default: {{meter: fcu, units: 1}}
  rules:
    - {{method: POST, path: /api/heavy, units: 10}}
    - {{path: /api/usage, meter: tokens, reserve: 100, settle: {{json: usage.total_tokens}},
       model: {{json: model}}}}
plans:
  big:
    throughput: [{{limit: 1000000000, window: 60s}}]
    quota: {{fcu: 1000000, tokens: 1000000}}
defaults: {{user_plan: big}}
enforce: true
"""

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture
async def gw(store_url: str | None, upstream: RecordingUpstream) -> AsyncIterator[RunningGateway]:
    async with running_gateway(RULES.format(upstream=upstream.url), store_url,
                               alert_interval_s=0) as g:
        yield g


async def admin_get(gw: RunningGateway, path: str, headers: dict[str, str] | None = None
                    ) -> Any:
    async with client(gw.admin_url) as c:
        return await c.get(path, headers=ADMIN if headers is None else headers)


async def traffic(gw: RunningGateway) -> None:
    clock = Clock(DAY1)
    gw.runtime.clock_ms = clock
    gw.runtime.engine.clock_ms = clock
    live = await gw.new_key(user="ann")
    test = await gw.new_key(user="tom", test=True)
    async with client(gw.url) as c:
        for _ in range(3):
            assert (await c.post("/api/heavy", headers={"X-Api-Key": live})).status_code == 200
        for _ in range(2):
            assert (await c.post("/api/heavy", headers={"X-Api-Key": test})).status_code == 200
        clock.now = DAY2
        for _ in range(2):
            r = await c.get("/api/usage?tokens=40&model=m-a", headers={"X-Api-Key": live})
            assert r.status_code == 200
        r = await c.get("/api/usage?tokens=250&model=m-b", headers={"X-Api-Key": live})
        assert r.status_code == 200
        r = await c.get("/api/usage?tokens=7&model=m-a", headers={"X-Api-Key": test})
        assert r.status_code == 200
    # Settlement runs after the response: wait for the 4 settlement records.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while loop.time() < deadline:
        body = (await admin_get(gw, "/admin/usage")).json()
        if body["units"].get("tokens") == 330 and body["test_units"].get("tokens") == 7:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"settlements did not land: {body}")


async def test_admin_usage_platform_totals(gw: RunningGateway) -> None:
    await traffic(gw)
    body = (await admin_get(gw, "/admin/usage")).json()
    assert body == {
        "from": None, "to": None,
        "requests": 6, "test_requests": 3,
        "units": {"fcu": 30, "tokens": 330},
        "test_units": {"fcu": 20, "tokens": 7},
        # 30 * $0.000002 + 330 * $0.000001; cost 30 * 0.0000015 + 330 * 0.0000004
        "revenue_usd": "0.000390",
        "provider_cost_usd": "0.000177",
        "meters_without_cost": [],
        "active_accounts": 1,
        "by_day": [
            {"date": "2026-11-18", "requests": 3, "test_requests": 2, "units": {"fcu": 30},
             "revenue_usd": "0.000060"},
            {"date": "2026-11-19", "requests": 3, "test_requests": 1,
             "units": {"tokens": 330}, "revenue_usd": "0.000330"},
        ],
    }


async def test_admin_usage_date_range(gw: RunningGateway) -> None:
    await traffic(gw)
    day2 = (await admin_get(gw, "/admin/usage?from=2026-11-19")).json()
    assert (day2["from"], day2["requests"], day2["units"], day2["revenue_usd"]) == (
        "2026-11-19", 3, {"tokens": 330}, "0.000330")
    day1 = (await admin_get(gw, "/admin/usage?from=2026-11-18&to=2026-11-18")).json()
    assert (day1["requests"], day1["units"], len(day1["by_day"])) == (3, {"fcu": 30}, 1)
    none = (await admin_get(gw, "/admin/usage?to=2026-11-17")).json()
    assert (none["requests"], none["active_accounts"], none["by_day"]) == (0, 0, [])


async def test_model_economics(gw: RunningGateway) -> None:
    await traffic(gw)
    body = (await admin_get(gw, "/admin/model-economics")).json()
    assert body == {"from": None, "to": None, "models": [
        {"model": None, "meter": "fcu", "requests": 3, "total_requests": 3,
         "test_requests": 2, "units": 30, "provider_cost_usd": "0.000045",
         "revenue_usd": "0.000060", "margin_pct": 25.0},
        {"model": "m-a", "meter": "tokens", "requests": 2, "total_requests": 2,
         "test_requests": 1, "units": 80, "provider_cost_usd": "0.000032",
         "revenue_usd": "0.000080", "margin_pct": 60.0},
        {"model": "m-b", "meter": "tokens", "requests": 1, "total_requests": 1,
         "test_requests": 0, "units": 250, "provider_cost_usd": "0.000100",
         "revenue_usd": "0.000250", "margin_pct": 60.0},
    ]}


async def test_admin_token_required_and_bad_dates(gw: RunningGateway) -> None:
    for path in ("/admin/usage", "/admin/model-economics"):
        assert (await admin_get(gw, path, headers={})).status_code == 401
        bad = await admin_get(gw, path, headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401
    for query in ("from=2026-13-01", "to=yesterday", "from=2026-11-02&to=2026-11-01",
                  "since=2026-11-01"):
        r = await admin_get(gw, f"/admin/usage?{query}")
        assert (r.status_code, r.json()["code"]) == (400, "BAD_REQUEST"), query


def test_pico_to_usd_is_exact() -> None:
    assert pico_to_usd(0) == "0.000000"
    assert pico_to_usd(1_500_000) == "0.0000015"
    assert pico_to_usd(390_000_000) == "0.000390"
    assert pico_to_usd(12 * 10**12 + 1) == "12.000000000001"
    assert pico_to_usd(-2_000_000) == "-0.000002"
    assert margin_pct(3, 1) == 66.67
    assert margin_pct(0, 0) is None
    assert margin_pct(100, None) is None
    assert margin_pct(100, 150) == -50.0


def test_rollup_keys() -> None:
    assert parse_rollup_key("gw:{u:ann}:d:2026-11-18") == ("{u:ann}", "2026-11-18")
    assert parse_rollup_key("gw:{ws:a:d:b}:d:2026-11-18") == ("{ws:a:d:b}", "2026-11-18")
    assert parse_rollup_key("gw:{u:ann}:p:2026-11") is None
    assert parse_rollup_key("other:d:2026-11-18") is None


RULES_NO_COST = RULES.replace(", cost_usd_per_unit: 0.0000015", "")


def test_requests_without_a_model_are_the_rest_and_costs_may_be_missing() -> None:
    rules = parse_rules(RULES_NO_COST.format(upstream="http://127.0.0.1:1"), filename="r.yaml")
    day = DayRollup("{u:ann}", "2026-11-18", {
        "n:tokens": 5, "u:tokens": 900, "mn:m-x:tokens": 2, "mu:m-x:tokens": 300,
        "mn:a:b:tokens": 1, "mu:a:b:tokens": 100,   # a model name with colons
        "n:fcu": 4, "u:fcu": 40, "tn:fcu": 1, "tu:fcu": 10})
    rows = {(r["model"], r["meter"]): r for r in model_economics(rules, [day])}
    assert set(rows) == {(None, "fcu"), (None, "tokens"), ("m-x", "tokens"),
                         ("a:b", "tokens")}
    assert (rows[(None, "tokens")]["requests"], rows[(None, "tokens")]["units"]) == (2, 500)
    assert rows[("a:b", "tokens")]["units"] == 100
    fcu = rows[(None, "fcu")]
    assert (fcu["requests"], fcu["test_requests"], fcu["units"]) == (4, 1, 40)
    assert (fcu["provider_cost_usd"], fcu["margin_pct"], fcu["revenue_usd"]) == (
        None, None, "0.000080")
    usage = platform_usage(rules, [day])
    assert usage["meters_without_cost"] == ["fcu"]
    assert usage["provider_cost_usd"] == "0.000360"  # 900 tokens * $0.0000004


async def test_rollups_on_every_cluster_node_are_counted() -> None:
    cluster = start_cluster()
    try:
        store = open_store(cluster.url)
        try:
            d = Driver(store, plan_table(big="1000000 0 0 1 -"), default_plan="big")
            accounts = [Account("user", f"u{i}") for i in range(12)]  # spread over slots
            for i, a in enumerate(accounts):
                assert (await d.debit(a, 1 + i, DAY1)).verdict == 1
            rollups = await read_rollups(store, None, None)
            rules = parse_rules(RULES.format(upstream="http://127.0.0.1:1"), filename="r.yaml")
            usage = platform_usage(rules, rollups)
            assert (usage["requests"], usage["units"], usage["active_accounts"]) == (
                12, {"fcu": 78}, 12)
            assert usage["revenue_usd"] == "0.000156"
        finally:
            await store.close()
    finally:
        cluster.stop()
