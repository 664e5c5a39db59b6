"""GET|POST /billing/budget over real HTTP, and the hard cap enforced end to end."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.billing.alerts import BUDGET_ACCOUNTS
from gateway.metering.accounts import Account
from tests.gateway_harness import ADMIN_TOKEN, RunningGateway, client, running_gateway
from tests.upstream import RecordingUpstream

T_NOV = 1_795_000_000_000  # 2026-11-18T…Z: inside the period 2026-11

RULES = """
version: 1
upstreams:
  main: {{url: "{upstream}", timeout: 5s}}
routes:
  - {{prefix: /api/, upstream: main}}
identity:
  api_key_headers: [X-Api-Key, Authorization]
meters:
  fcu: {{usd_per_unit: 0.000002}}
weights:
  default: {{meter: fcu, units: 1}}
  rules:
    - {{method: POST, path: /api/heavy, units: 10}}
plans:
  payg: {{throughput: [{{limit: 1000000, window: 60s}}], quota: {{fcu: 20}}, overage: true}}
defaults: {{user_plan: payg}}
enforce: true
"""


@pytest.fixture
async def gw(store_url: str | None, upstream: RecordingUpstream) -> AsyncIterator[RunningGateway]:
    async with running_gateway(RULES.format(upstream=upstream.url), store_url,
                               alert_interval_s=0, alert_allow_private=True) as g:
        g.runtime.clock_ms = lambda: T_NOV
        g.runtime.engine.clock_ms = lambda: T_NOV
        yield g


async def key(gw: RunningGateway, user: str, role: str = "member",
              workspace: str | None = None, test: bool = False) -> str:
    _, secret = await gw.runtime.registry.create(user=user, workspace=workspace, role=role,
                                                 test=test)
    return secret


async def test_post_then_get_budget_exact_values(gw: RunningGateway) -> None:
    billing = await key(gw, "ann", role="billing")
    member = await key(gw, "ann")
    async with client(gw.url) as c:
        before = await c.get("/billing/budget", headers={"X-Api-Key": member})
        r = await c.post("/billing/budget", headers={"X-Api-Key": billing}, json={
            "monthly_cap_usd": "1000.10", "hard_cap": True, "alert_email": "ops@example.com",
            "alert_webhook": "https://hooks.example.com/budget?x=1"})
        got = await c.get("/billing/budget", headers={"X-Api-Key": member})
    assert before.status_code == 200
    assert before.json()["monthly_cap_usd"] is None
    assert before.json()["spend_pct"] is None
    assert r.status_code == 200, r.text
    body = r.json()
    assert body == got.json()
    assert body == {
        "scope": "user", "id": "ann", "monthly_cap_usd": "1000.100000", "hard_cap": True,
        "allow_soft_overage": True, "alert_email": "ops@example.com",
        "alert_webhook": "https://hooks.example.com/budget?x=1",
        "spend_usd": "0.000000", "spend_micro_usd": 0, "spend_pct": 0.0,
        "period": {"id": "2026-11", "start": "2026-11-01T00:00:00Z",
                   "end": "2026-12-01T00:00:00Z"},
    }
    config = await gw.runtime.ledger.config(Account("user", "ann"))
    assert (config["cap_micro"], config["hard_cap"]) == ("1000100000", "1")
    members = await gw.runtime.store.client.smembers(BUDGET_ACCOUNTS)
    assert members == {b"user:ann"}


async def test_json_number_cap_is_exact_and_post_changes_only_what_it_names(
        gw: RunningGateway) -> None:
    billing = await key(gw, "bob", role="billing")
    async with client(gw.url) as c:
        await c.post("/billing/budget", headers={"X-Api-Key": billing}, json={
            "monthly_cap_usd": 5, "hard_cap": True, "alert_email": "a@b.co"})
        # Raising the cap keeps the hard cap and the alert address.
        r = await c.post("/billing/budget", headers={"X-Api-Key": billing},
                         content=b'{"monthly_cap_usd": 12.34}')
        assert r.status_code == 200
        body = r.json()
        assert (body["monthly_cap_usd"], body["hard_cap"], body["alert_email"]) == (
            "12.340000", True, "a@b.co")
        # A field on its own (no cap): changes that field; null clears an alert target.
        r = await c.post("/billing/budget", headers={"X-Api-Key": billing},
                         json={"hard_cap": False, "alert_email": None})
        body = r.json()
        assert (body["monthly_cap_usd"], body["hard_cap"], body["alert_email"]) == (
            "12.340000", False, None)
        null_cap = await c.post("/billing/budget", headers={"X-Api-Key": billing},
                                json={"monthly_cap_usd": None})
    config = await gw.runtime.ledger.config(Account("user", "bob"))
    assert (config["cap_micro"], config["hard_cap"]) == ("12340000", "0")
    assert "alert_email" not in config
    assert (null_cap.status_code, null_cap.json()["code"]) == (400, "BAD_REQUEST")
    assert "DELETE" in null_cap.json()["detail"]


async def test_delete_removes_the_budget_and_what_it_refused(gw: RunningGateway) -> None:
    billing = await key(gw, "ivy", role="billing")
    member = await key(gw, "ivy")
    async with client(gw.url) as c:
        await c.post("/billing/budget", headers={"X-Api-Key": billing}, json={
            "monthly_cap_usd": "0.00004", "hard_cap": True, "alert_email": "a@b.co"})
        codes = [(await c.post("/api/heavy", headers={"X-Api-Key": billing})).status_code
                 for _ in range(5)]  # quota 20 units (2 requests), then 2 in overage
        forbidden = await c.delete("/billing/budget", headers={"X-Api-Key": member})
        gone = await c.delete("/billing/budget", headers={"X-Api-Key": billing})
        after = (await c.post("/api/heavy", headers={"X-Api-Key": billing})).status_code
        shown = (await c.get("/billing/budget", headers={"X-Api-Key": member})).json()
        first_again = await c.post("/billing/budget", headers={"X-Api-Key": billing},
                                   json={"hard_cap": True})
    assert codes == [200, 200, 200, 200, 402]
    assert forbidden.status_code == 403
    assert gone.status_code == 200 and gone.json()["monthly_cap_usd"] is None
    assert after == 200
    assert (shown["monthly_cap_usd"], shown["hard_cap"], shown["alert_email"],
            shown["spend_usd"]) == (None, False, None, "0.000060")
    assert await gw.runtime.store.client.smembers(BUDGET_ACCOUNTS) == set()
    assert first_again.status_code == 400  # a new budget names its cap again


async def test_workspace_scope(gw: RunningGateway) -> None:
    ws_key = await key(gw, "cat", role="billing", workspace="acme")
    solo = await key(gw, "dan", role="billing")
    async with client(gw.url) as c:
        r = await c.post("/billing/budget", headers={"X-Api-Key": ws_key},
                         json={"monthly_cap_usd": "50", "scope": "workspace"})
        q = await c.get("/billing/budget?scope=workspace", headers={"X-Api-Key": ws_key})
        u = await c.get("/billing/budget", headers={"X-Api-Key": ws_key})
        no_ws = await c.post("/billing/budget?scope=workspace", headers={"X-Api-Key": solo},
                             json={"monthly_cap_usd": "50"})
    assert (r.status_code, r.json()["scope"], r.json()["id"]) == (200, "workspace", "acme")
    assert q.json()["monthly_cap_usd"] == "50.000000"
    assert (u.json()["scope"], u.json()["monthly_cap_usd"]) == ("user", None)
    assert no_ws.status_code == 400
    assert await gw.runtime.store.client.smembers(BUDGET_ACCOUNTS) == {b"workspace:acme"}


async def test_member_key_cannot_set_and_test_key_can(gw: RunningGateway) -> None:
    member = await key(gw, "eve")
    test_billing = await key(gw, "eve", role="billing", test=True)
    async with client(gw.url) as c:
        denied = await c.post("/billing/budget", headers={"X-Api-Key": member},
                              json={"monthly_cap_usd": "10"})
        ok = await c.post("/billing/budget", headers={"X-Api-Key": test_billing},
                          json={"monthly_cap_usd": "10"})
        anon = await c.get("/billing/budget")
    assert (denied.status_code, denied.json()["code"]) == (403, "FORBIDDEN")
    assert ok.status_code == 200
    assert anon.status_code == 401


@pytest.mark.parametrize("body", [
    {"monthly_cap_usd": 0},
    {"monthly_cap_usd": "-1"},
    {"monthly_cap_usd": "0.0000001"},
    {"monthly_cap_usd": "abc"},
    {"monthly_cap_usd": True},
    {"monthly_cap_usd": "100000000"},
    {},
    {"monthly_cap_usd": "10", "hard_cap": "yes"},
    {"monthly_cap_usd": "10", "alert_email": "not-an-email"},
    {"monthly_cap_usd": "10", "alert_email": "a@b.co\r\nBcc: x@y.z"},
    {"monthly_cap_usd": "10", "alert_webhook": "ftp://example.com/x"},
    {"monthly_cap_usd": "10", "alert_webhook": "https://"},
    {"monthly_cap_usd": "10", "alert_webhook": 5},
    {"monthly_cap_usd": "10", "scope": "team"},
    {"monthly_cap_usd": "10", "allow_soft_overage": "no"},
])
async def test_bad_input_is_400_problem_json(gw: RunningGateway, body: dict[str, object]
                                             ) -> None:
    billing = await key(gw, "fay", role="billing")
    async with client(gw.url) as c:
        r = await c.post("/billing/budget", headers={"X-Api-Key": billing}, json=body)
        not_json = await c.post("/billing/budget", headers={"X-Api-Key": billing},
                                content=b"[1]")
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "BAD_REQUEST"
    assert not_json.status_code == 400
    assert "cap_micro" not in await gw.runtime.ledger.config(Account("user", "fay"))


async def test_hard_cap_402_end_to_end_with_credits_then_overage(gw: RunningGateway) -> None:
    """Quota 20 units, then $0.00005 of credits, then overage; cap $0.0001 (hard).

    Each POST /api/heavy is 10 units = 20 µ$. Spend = credits consumed + overage.
    """
    billing = await key(gw, "gus", role="billing")
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with client(gw.admin_url) as a:
        g = await a.post("/admin/accounts/user/gus/credits", headers=admin,
                         json={"usd": "0.00005"})
    assert g.status_code == 201
    async with client(gw.url) as c:
        r = await c.post("/billing/budget", headers={"X-Api-Key": billing},
                         json={"monthly_cap_usd": "0.0001", "hard_cap": True})
        assert r.status_code == 200
        codes, spends = [], []
        for _ in range(8):
            resp = await c.post("/api/heavy", headers={"X-Api-Key": billing})
            codes.append(resp.status_code)
            b = await c.get("/billing/budget", headers={"X-Api-Key": billing})
            spends.append(b.json()["spend_usd"])
        refused = await c.post("/api/heavy", headers={"X-Api-Key": billing})
        final = (await c.get("/billing/budget", headers={"X-Api-Key": billing})).json()
    # 2x quota, 2x credits (50 → 10 µ$ left), 3x overage up to exactly the cap, refused.
    assert codes == [200, 200, 200, 200, 200, 200, 200, 402]
    assert spends == ["0.000000", "0.000000", "0.000020", "0.000040", "0.000060",
                      "0.000080", "0.000100", "0.000100"]
    assert refused.status_code == 402
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["code"] == "BUDGET_HARD_CAP_HIT"
    assert (final["spend_usd"], final["spend_pct"]) == ("0.000100", 100.0)
    view = await gw.runtime.ledger.view(gw.runtime.rules, gw.runtime.routing.tables,
                                        Account("user", "gus"), T_NOV)
    assert view["credits_micro_usd"] == 10
    assert view["quota"][0]["overage_units"] == 30
    # A soft cap lets the next request through and only alerts.
    async with client(gw.url) as c:
        await c.post("/billing/budget", headers={"X-Api-Key": billing},
                     json={"monthly_cap_usd": "0.0001", "hard_cap": False})
        soft = await c.post("/api/heavy", headers={"X-Api-Key": billing})
        after = (await c.get("/billing/budget", headers={"X-Api-Key": billing})).json()
    assert soft.status_code == 200
    assert (after["spend_usd"], after["spend_pct"]) == ("0.000120", 120.0)
    # A soft cap that allows no overage past it refuses at the cap as well.
    async with client(gw.url) as c:
        r = await c.post("/billing/budget", headers={"X-Api-Key": billing}, json={
            "monthly_cap_usd": "0.00012", "hard_cap": False, "allow_soft_overage": False})
        strict = await c.post("/api/heavy", headers={"X-Api-Key": billing})
        shown = (await c.get("/billing/budget", headers={"X-Api-Key": billing})).json()
    assert (r.json()["hard_cap"], r.json()["allow_soft_overage"]) == (False, False)
    assert strict.status_code == 402 and strict.json()["code"] == "BUDGET_HARD_CAP_HIT"
    assert (shown["hard_cap"], shown["allow_soft_overage"], shown["spend_usd"]) == (
        False, False, "0.000120")
