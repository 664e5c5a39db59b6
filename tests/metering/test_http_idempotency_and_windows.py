"""Over HTTP: what a client request id names, per-meter windows, settlements in windows,
shadow plans, hard caps under settlement, and plans removed from the rules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.metering.accounts import Account
from tests.gateway_harness import RunningGateway, client, running_gateway
from tests.metering.test_http_metering import eventually, units_of
from tests.upstream import RecordingUpstream

RULES = """
version: 1
upstreams:
  main: {{url: "{upstream}", timeout: 5s}}
routes:
  - {{prefix: /api/, upstream: main}}
meters:
  fcu: {{usd_per_unit: 0.000002}}
  tokens: {{usd_per_unit: 0.000001}}
weights:
  default: {{meter: fcu, units: 1}}
  rules:
    - {{method: POST, path: /api/heavy, units: 10}}
    - {{method: POST, path: /api/light, units: 2}}
    - {{path: /api/status/*, units: 5}}
    - {{path: /api/usage, meter: tokens, reserve: 100, settle: {{json: usage.total_tokens}}}}
plans:
  free:
    throughput: [{{limit: 30, window: 60s, meter: fcu}}, {{limit: 300, window: 60s, meter: tokens}}]
    quota: {{fcu: 1000, tokens: 100000}}
  team: {{throughput: [{{limit: 10, window: 60s}}], quota: {{fcu: 1000}}}}
  trial: {{throughput: [{{limit: 2, window: 60s}}], quota: {{fcu: 1}}, enforce: false}}
  capped: {{throughput: [{{limit: 100000, window: 60s}}], quota: {{tokens: 0}}, overage: true}}
  doomed: {{throughput: [{{limit: 1000, window: 60s}}], quota: {{fcu: 7}}}}
defaults: {{user_plan: free}}
enforce: true
"""


@pytest.fixture
async def gw(store_url: str | None, upstream: RecordingUpstream) -> AsyncIterator[RunningGateway]:
    async with running_gateway(RULES.format(upstream=upstream.url), store_url) as g:
        yield g


def rid(value: str, key: str) -> dict[str, str]:
    return {"X-Api-Key": key, "X-Request-Id": value}


async def test_a_request_id_names_one_request(gw: RunningGateway,
                                              upstream: RecordingUpstream) -> None:
    key = await gw.new_key(user="ann")
    async with client(gw.url) as c:
        first = await c.post("/api/light", headers=rid("op-1", key))
        again = await c.post("/api/light", headers=rid("op-1", key))
        sent = len(upstream.requests)
        other = await c.post("/api/heavy", headers=rid("op-1", key))   # another request
    assert (first.status_code, again.status_code) == (200, 200)
    assert (other.status_code, other.json()["code"]) == (409, "REQUEST_ID_REUSED")
    assert len(upstream.requests) == sent           # refused before the upstream
    assert await units_of(gw, "user", "ann", "fcu") == 2


async def test_a_refunded_attempt_leaves_its_id_free_for_the_retry(gw: RunningGateway) -> None:
    key = await gw.new_key(user="bob")
    async with client(gw.url) as c:
        failed = await c.get("/api/status/503", headers=rid("op-2", key))
        assert failed.status_code == 503
        # The refund lands just after the response.
        assert await eventually(lambda: units_of(gw, "user", "bob", "fcu"), 0) == 0
        # The retry was not served before: it is charged, as a new request.
        retry = await c.get("/api/status/200", headers=rid("op-2", key))
        repeat = await c.get("/api/status/200", headers=rid("op-2", key))
        other = await c.get("/api/status/201", headers=rid("op-2", key))
    assert (retry.status_code, repeat.status_code, other.status_code) == (200, 200, 409)
    assert await units_of(gw, "user", "bob", "fcu") == 5
    stream = await gw.runtime.store.client.xrange(Account("user", "bob").usage_stream)
    assert [f[b"kind"] for _, f in stream] == [b"debit", b"refund", b"debit"]


async def test_a_request_id_paid_by_the_user_is_not_charged_again_by_the_workspace(
        gw: RunningGateway) -> None:
    """The workspace refused (window full), the user paid; the retry, once the workspace
    could pay, is the same request: nobody is charged again."""
    key = await gw.new_key(user="cat", workspace="acme")
    rt = gw.runtime
    await rt.ledger.set_plan(rt.rules, Account("workspace", "acme"), "team")
    async with client(gw.url) as c:
        r = await c.post("/api/heavy", headers={"X-Api-Key": key})       # fills team's 10
        assert r.headers["x-gateway-account"] == "workspace"
        paid = await c.post("/api/heavy", headers=rid("op-4", key))
        assert paid.headers["x-gateway-account"] == "user"
        await rt.store.client.delete(Account("workspace", "acme").windows_key)  # room again
        retry = await c.post("/api/heavy", headers=rid("op-4", key))
        fresh = await c.post("/api/heavy", headers=rid("op-5", key))
    assert retry.status_code == 200
    assert fresh.headers["x-gateway-account"] == "workspace"
    assert await units_of(gw, "workspace", "acme", "fcu") == 20
    assert await units_of(gw, "user", "cat", "fcu") == 10


async def test_windows_of_different_meters_are_separate(gw: RunningGateway) -> None:
    key = await gw.new_key(user="dan")
    async with client(gw.url) as c:
        chat = await c.post("/api/usage?tokens=100", headers={"X-Api-Key": key})
        compute = [(await c.post("/api/heavy", headers={"X-Api-Key": key})).status_code
                   for _ in range(3)]
        me = (await c.get("/usage/me", headers={"X-Api-Key": key})).json()
    assert chat.status_code == 200 and compute == [200, 200, 200]
    gauges = {g["meter"]: g["used"] for g in me["gauges"]["user"]}
    assert gauges == {"fcu": 30, "tokens": 100}


async def test_windows_count_what_a_settled_request_used(gw: RunningGateway) -> None:
    """A reserve of 100 settled to 10 frees 90 of the window; settled to 250, the window
    holds 250 and refuses the next request until it slides."""
    key = await gw.new_key(user="eve")

    async def used() -> int:
        view = await gw.runtime.ledger.view(gw.runtime.rules, gw.runtime.routing.tables,
                                            Account("user", "eve"))
        return next(w["used"] for w in view["windows"] if w["meter"] == "tokens")

    async with client(gw.url) as c:
        assert (await c.post("/api/usage?tokens=10", headers={"X-Api-Key": key})
                ).status_code == 200
        assert await eventually(used, 10) == 10
        assert (await c.post("/api/usage?tokens=250", headers={"X-Api-Key": key})
                ).status_code == 200
        assert await eventually(used, 260) == 260
        refused = await c.post("/api/usage?tokens=1", headers={"X-Api-Key": key})
    assert (refused.status_code, refused.json()["code"]) == (429, "RATE_LIMITED")
    assert await units_of(gw, "user", "eve", "tokens") == 260
    # The metrics count what was charged: 2 reserves of 100, then +150 settled up.
    debited = gw.runtime.metrics.registry.get_sample_value(
        "gateway_units_debited_total", {"meter": "tokens", "pool": "quota"})
    assert debited == 350


async def test_a_shadow_plan_proxies_and_counts_what_it_would_refuse(
        gw: RunningGateway) -> None:
    key = await gw.new_key(user="fox")
    await gw.runtime.ledger.set_plan(gw.runtime.rules, Account("user", "fox"), "trial")
    async with client(gw.url) as c:
        codes = [(await c.post("/api/light", headers={"X-Api-Key": key})).status_code
                 for _ in range(4)]
        metrics = (await c.get(gw.admin_url + "/metrics")).text
    assert codes == [200] * 4
    assert await units_of(gw, "user", "fox", "fcu") == 0
    # trial: 1 unit of quota; every 2-unit request would be refused for it.
    assert 'gateway_shadow_would_reject_total{code="QUOTA_EXHAUSTED",route="/api/"} 4.0' \
        in metrics


async def test_settlement_never_spends_past_a_hard_cap(gw: RunningGateway) -> None:
    key = await gw.new_key(user="gil")
    acct = Account("user", "gil")
    rt = gw.runtime
    await rt.ledger.set_plan(rt.rules, acct, "capped")
    await rt.ledger.set_budget(acct, cap_micro=150, hard_cap=True)   # 150 tokens' worth
    async with client(gw.url) as c:
        r = await c.post("/api/usage?tokens=5000", headers={"X-Api-Key": key})
        assert r.status_code == 200                   # the reserve (100) fits the cap
        assert await eventually(lambda: units_of(gw, "user", "gil", "tokens"), 5000) == 5000
        refused = await c.post("/api/usage?tokens=1", headers={"X-Api-Key": key})
    view = await rt.ledger.view(rt.rules, rt.routing.tables, acct)
    tokens = next(q for q in view["quota"] if q["meter"] == "tokens")
    # Overage stops at the cap; the rest of the work is booked, unbilled, on the quota.
    assert view["spend_micro_usd"] == 150 and tokens["overage_units"] == 150
    assert (refused.status_code, refused.json()["code"]) == (402, "BUDGET_HARD_CAP_HIT")


async def test_a_plan_removed_from_the_rules_falls_back_to_the_default(
        gw: RunningGateway, upstream: RecordingUpstream, tmp_path: Path) -> None:
    key = await gw.new_key(user="hal")
    rt = gw.runtime
    await rt.ledger.set_plan(rt.rules, Account("user", "hal"), "doomed")
    text = RULES.format(upstream=upstream.url).replace(
        "  doomed: {throughput: [{limit: 1000, window: 60s}], quota: {fcu: 7}}\n", "")
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    assert rt.reload(str(path)) == []
    async with client(gw.url) as c:
        r = await c.post("/api/heavy", headers={"X-Api-Key": key})
        me = (await c.get("/usage/me", headers={"X-Api-Key": key})).json()
    assert r.status_code == 200
    assert me["plan"] == "free"


STATUS_RULE = "    - {{path: /api/status/*, units: 5}}"
RULES_MORE = RULES.replace(STATUS_RULE, STATUS_RULE + '''
    - {{path: /api/zero, meter: tokens, reserve: 0, settle: {{header: X-Units}}}}''')


@pytest.fixture
async def gw2(store_url: str | None, upstream: RecordingUpstream
              ) -> AsyncIterator[RunningGateway]:
    async with running_gateway(RULES_MORE.format(upstream=upstream.url), store_url) as g:
        yield g


async def test_a_request_id_is_no_free_pass(gw: RunningGateway,
                                            upstream: RecordingUpstream) -> None:
    """Another query is another request; a repeat counts in the windows; an id serves a
    few retries, not an unlimited stream of work."""
    key = await gw.new_key(user="ivy")
    async with client(gw.url) as c:
        first = await c.post("/api/light?job=1", headers=rid("op-9", key))
        other = await c.post("/api/light?job=2", headers=rid("op-9", key))
        repeats = [(await c.post("/api/light?job=1", headers=rid("op-9", key))).status_code
                   for _ in range(4)]
        me = (await c.get("/usage/me", headers={"X-Api-Key": key})).json()
    assert (first.status_code, other.status_code) == (200, 409)
    assert repeats == [200, 200, 200, 409]          # three retries, then refused
    assert await units_of(gw, "user", "ivy", "fcu") == 2
    fcu = next(g for g in me["gauges"]["user"] if g["meter"] == "fcu")
    assert fcu["used"] == 8                         # 1 + 3 repeats, 2 units each, in the window


async def test_request_ids_are_each_users_own(gw: RunningGateway) -> None:
    rt = gw.runtime
    await rt.ledger.set_plan(rt.rules, Account("workspace", "team1"), "team")
    alice = await gw.new_key(user="alice", workspace="team1")
    bob = await gw.new_key(user="bob", workspace="team1")
    async with client(gw.url) as c:
        a = await c.post("/api/light", headers=rid("1", alice))
        b = await c.post("/api/light", headers=rid("1", bob))
        a2 = await c.post("/api/light?x", headers=rid("2", alice))
        b2 = await c.post("/api/light", headers=rid("2", bob))
    assert [r.status_code for r in (a, b, a2, b2)] == [200, 200, 200, 200]
    assert await units_of(gw, "workspace", "team1", "fcu") == 8  # four requests


async def test_a_refusal_nobody_paid_for_leaves_no_mark(gw: RunningGateway) -> None:
    """The workspace refused, the user refused too: the retry is a fresh cascade, so the
    workspace pays once it has room."""
    rt = gw.runtime
    key = await gw.new_key(user="joe", workspace="crew")
    await rt.ledger.set_plan(rt.rules, Account("workspace", "crew"), "team")
    await rt.ledger.set_plan(rt.rules, Account("user", "joe"), "doomed")  # quota 7
    async with client(gw.url) as c:
        assert (await c.post("/api/heavy", headers={"X-Api-Key": key})).status_code == 200
        refused = await c.post("/api/heavy", headers=rid("op-x", key))  # team full, joe 7
        assert refused.status_code in (402, 429)
        await rt.store.client.delete(Account("workspace", "crew").windows_key)
        retry = await c.post("/api/heavy", headers=rid("op-x", key))
    assert (retry.status_code, retry.headers["x-gateway-account"]) == (200, "workspace")


async def test_a_shadow_workspace_plan_charges_nobody(gw: RunningGateway) -> None:
    rt = gw.runtime
    key = await gw.new_key(user="kay", workspace="lab")
    await rt.ledger.set_plan(rt.rules, Account("workspace", "lab"), "trial")  # shadow
    async with client(gw.url) as c:
        codes = [(await c.post("/api/light", headers={"X-Api-Key": key})).status_code
                 for _ in range(4)]
    assert codes == [200] * 4
    assert await units_of(gw, "user", "kay", "fcu") == 0
    assert await units_of(gw, "workspace", "lab", "fcu") == 0


async def test_a_zero_reserve_settles_to_what_was_used(gw2: RunningGateway) -> None:
    key = await gw2.new_key(user="lou")
    async with client(gw2.url) as c:
        for _ in range(3):
            assert (await c.get("/api/zero?units=900", headers={"X-Api-Key": key})
                    ).status_code == 200
    assert await eventually(lambda: units_of(gw2, "user", "lou", "tokens"), 2700) == 2700


async def test_a_compressed_answer_still_settles(gw: RunningGateway,
                                                 upstream: RecordingUpstream) -> None:
    """The client accepts gzip, as most clients do: the gateway asks the upstream for a
    plain answer (it reads the usage); one compressed anyway is read through gzip."""
    key = await gw.new_key(user="max")
    headers = {"X-Api-Key": key, "Accept-Encoding": "gzip"}
    async with client(gw.url) as c:
        plain = await c.post("/api/usage?tokens=37&gz=1", headers=headers)
        forced = await c.post("/api/usage?tokens=250&gz=force", headers=headers)
    assert upstream.requests[-2].header("accept-encoding") is None
    assert plain.status_code == forced.status_code == 200
    assert forced.headers["content-encoding"] == "gzip"
    assert await eventually(lambda: units_of(gw, "user", "max", "tokens"), 287) == 287


async def test_refusals_report_what_is_left_before_the_request(gw: RunningGateway) -> None:
    rt = gw.runtime
    key = await gw.new_key(user="ned")
    acct = Account("user", "ned")
    await rt.ledger.set_plan(rt.rules, acct, "doomed")     # quota 7 fcu
    async with client(gw.url) as c:
        await c.post("/api/light", headers={"X-Api-Key": key})          # 2 of 7
        await c.post("/api/light", headers={"X-Api-Key": key})          # 4 of 7
        r = await c.post("/api/heavy", headers={"X-Api-Key": key})      # 10 > 3 left
    body = r.json()
    assert (r.status_code, body["code"], body["limit"], body["remaining"]) == (
        402, "QUOTA_EXHAUSTED", 7, 3)
    await rt.ledger.set_plan(rt.rules, acct, "capped")
    await rt.ledger.set_budget(acct, cap_micro=150, hard_cap=True)
    async with client(gw.url) as c:
        await c.post("/api/usage?tokens=100", headers={"X-Api-Key": key})
        capped = await c.post("/api/usage?tokens=100", headers={"X-Api-Key": key})
    cb = capped.json()
    assert (capped.status_code, cb["code"], cb["limit_usd"], cb["remaining_usd"]) == (
        402, "BUDGET_HARD_CAP_HIT", "0.000150", "0.000050")
    assert "limit" not in cb and "remaining" not in cb
