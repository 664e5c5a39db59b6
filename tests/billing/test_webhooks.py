"""POST /billing/webhook over real HTTP against the fake Stripe (SPEC §7).

Payloads are signed locally with the SDK's own signing; the state the handlers re-fetch
is seeded into the fake with `fake.put`. Every test runs on real Redis and the embedded
store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.billing import events, webhooks
from gateway.billing.customers import Customers
from gateway.metering.accounts import Account
from tests.fakes.stripe_server import FakeStripe, running_fake_stripe, stripe_settings
from tests.fakes.stripe_signing import event, sign, signed, subscription
from tests.gateway_harness import RunningGateway, client, running_gateway
from tests.upstream import RecordingUpstream

RULES = """
version: 1
upstreams:
  main: {{url: "{upstream}", timeout: 5s}}
routes:
  - {{prefix: /api/, upstream: main}}
meters:
  fcu: {{usd_per_unit: 0.000002}}
weights:
  default: {{meter: fcu, units: 1}}
plans:
  free: {{throughput: [{{limit: 1000, window: 60s}}], quota: {{fcu: 1}}}}
  starter:
    stripe: {{monthly: price_starter_monthly, annual: price_starter_annual}}
    throughput: [{{limit: 1000, window: 60s}}]
    quota: {{fcu: 3}}
  pro:
    stripe: {{monthly: price_pro_monthly}}
    throughput: [{{limit: 1000, window: 60s}}]
    quota: {{fcu: 1000}}
defaults: {{user_plan: free}}
billing:
  upgrade_url: "https://example.com/pricing"
  past_due_grace: 1h
  inactive: deny
"""

ANN = Account("user", "ann")
CUS = "cus_ann"
DAY = 86400


@pytest.fixture
async def fake() -> AsyncIterator[FakeStripe]:
    async with running_fake_stripe() as f:
        yield f


@pytest.fixture
async def gw(store_url: str | None, fake: FakeStripe, upstream: RecordingUpstream
             ) -> AsyncIterator[RunningGateway]:
    async with running_gateway(RULES.format(upstream=upstream.url), store_url,
                               alert_interval_s=0, alert_allow_private=True,
                               **stripe_settings(fake)) as g:
        await Customers(g.runtime.store, g.runtime.stripe).link(ANN, CUS)
        yield g


async def deliver(gw: RunningGateway, evt: dict[str, Any], **sign_kw: Any) -> httpx.Response:
    body, headers = signed(evt, **sign_kw)
    async with client(gw.url) as c:
        return await c.post("/billing/webhook", content=body, headers=headers)


async def metered(gw: RunningGateway, n: int) -> list[int]:
    """Statuses of n metered requests (1 fcu each) by ann."""
    _, secret = await gw.runtime.registry.create(user="ann")
    async with client(gw.url) as c:
        return [(await c.get("/api/echo", headers={"X-Api-Key": secret})).status_code
                for _ in range(n)]


async def credits(gw: RunningGateway) -> int:
    raw = await gw.runtime.store.client.get(ANN.credits_key)
    return int(raw or 0)


def now_s() -> int:
    return int(time.time())


def seed_sub(fake: FakeStripe, sub_id: str = "sub_1", price: str = "price_starter_monthly",
             status: str = "active", start: int | None = None, end: int | None = None,
             **kw: Any) -> dict[str, Any]:
    start = now_s() - DAY if start is None else start
    end = now_s() + 29 * DAY if end is None else end
    return fake.put("subscription", subscription(sub_id, CUS, price, status=status,
                                                 start=start, end=end, **kw))


def sample(gw: RunningGateway, name: str, labels: dict[str, str]) -> float:
    value = gw.runtime.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


# --- signature ------------------------------------------------------------------------

async def test_signature_is_checked_on_the_raw_body(gw: RunningGateway) -> None:
    evt = event("customer.created", {"id": "cus_x", "object": "customer"})
    body, headers = signed(evt)
    async with client(gw.url) as c:
        # Missing header.
        r = await c.post("/billing/webhook", content=body)
        assert r.status_code == 400 and r.json()["code"] == "INVALID_SIGNATURE"
        # The same JSON re-serialised differently: the signature is over the raw bytes.
        r = await c.post("/billing/webhook", content=body.replace(b", ", b","),
                         headers=headers)
        assert r.status_code == 400 and r.json()["code"] == "INVALID_SIGNATURE"
        # Another secret.
        _, bad = signed(evt, secret="whsec_someone_else")
        r = await c.post("/billing/webhook", content=body, headers=bad)
        assert r.status_code == 400 and r.json()["code"] == "INVALID_SIGNATURE"
        # Garbage header.
        r = await c.post("/billing/webhook", content=body,
                         headers={"Stripe-Signature": "nonsense"})
        assert r.status_code == 400 and r.json()["code"] == "INVALID_SIGNATURE"
        # A replay of a delivery signed 301 s ago.
        _, old = signed(evt, timestamp=now_s() - 301)
        r = await c.post("/billing/webhook", content=body, headers=old)
        assert r.status_code == 400 and r.json()["code"] == "INVALID_SIGNATURE"
        assert r.headers["content-type"] == "application/problem+json"
        # Correctly signed: an unhandled type is acknowledged and ignored.
        r = await c.post("/billing/webhook", content=body, headers=headers)
        assert r.status_code == 200, r.text
        assert r.json() == {"received": True, "ignored": True}
    # Nothing refused was recorded as processed: only the accepted delivery left a marker.
    assert await gw.runtime.store.client.get(f"gw:stripe:event:{evt['id']}") == b"done"


async def test_without_a_webhook_secret_the_endpoint_is_disabled(
        store_url: str | None, fake: FakeStripe, upstream: RecordingUpstream) -> None:
    settings = {**stripe_settings(fake), "stripe_webhook_secret": ""}
    async with running_gateway(RULES.format(upstream=upstream.url), store_url,
                               alert_interval_s=0, **settings) as g:
        body = b'{"id": "evt_1", "type": "invoice.paid"}'
        async with client(g.url) as c:
            r = await c.post("/billing/webhook", content=body,
                             headers={"Stripe-Signature": sign(body.decode())})
        assert r.status_code == 503
        assert r.json()["code"] == "BILLING_DISABLED"


# --- subscriptions --------------------------------------------------------------------

@pytest.mark.parametrize("on_items", [False, True])
async def test_subscription_created_applies_plan_status_and_period_from_stripe(
        gw: RunningGateway, fake: FakeStripe, on_items: bool) -> None:
    start, end = now_s() - DAY, now_s() + 29 * DAY
    sub = seed_sub(fake, start=start, end=end, on_items=on_items)
    # The payload is stale (incomplete); Stripe's current state (re-fetched) wins.
    stale = {**sub, "status": "incomplete"}
    r = await deliver(gw, event("customer.subscription.created", stale))
    assert r.status_code == 200, r.text
    assert r.json() == {"received": True, "plan": "starter", "status": "active"}
    config = await gw.runtime.ledger.config(ANN)
    assert config["plan"] == "starter"
    assert config["status"] == "active"
    assert config["source"] == "stripe"
    assert config["period_start"] == str(start * 1000)
    assert config["period_end"] == str(end * 1000)
    assert config["stripe_subscription"] == "sub_1"
    assert config["billing_cycle"] == "monthly"
    assert config["cancel_at_period_end"] == "0"
    assert "past_due_until" not in config
    # Starter's quota is 3 fcu (the default free plan has 1).
    assert await metered(gw, 4) == [200, 200, 200, 402]
    view = await gw.runtime.ledger.view(gw.runtime.rules, gw.runtime.routing.tables, ANN)
    assert view["period"]["id"] == f"s{start * 1000}"
    assert view["quota"][0]["total"] == 3 and view["quota"][0]["remaining"] == 0


async def test_out_of_order_updates_leave_the_current_state(
        gw: RunningGateway, fake: FakeStripe) -> None:
    older = seed_sub(fake, price="price_starter_monthly", status="past_due")
    older_event = event("customer.subscription.updated", dict(older),
                        created=now_s() - 60)
    # Stripe's current state: upgraded to pro and paid.
    newer = seed_sub(fake, price="price_pro_monthly", status="active",
                     cancel_at_period_end=True)
    newer_event = event("customer.subscription.updated", dict(newer))
    assert (await deliver(gw, newer_event)).status_code == 200
    r = await deliver(gw, older_event)  # arrives late
    assert r.status_code == 200, r.text
    config = await gw.runtime.ledger.config(ANN)
    assert (config["plan"], config["status"]) == ("pro", "active")
    assert config["cancel_at_period_end"] == "1"
    assert "past_due_until" not in config
    assert await metered(gw, 5) == [200] * 5


async def test_deleted_subscription_makes_the_account_inactive(
        gw: RunningGateway, fake: FakeStripe) -> None:
    sub = seed_sub(fake)
    assert (await deliver(gw, event("customer.subscription.created", sub))).status_code == 200
    assert await metered(gw, 1) == [200]
    fake.put("subscription", {**sub, "status": "canceled"})
    r = await deliver(gw, event("customer.subscription.deleted", {**sub, "status": "canceled"}))
    assert r.status_code == 200, r.text
    assert (await gw.runtime.ledger.config(ANN))["status"] == "canceled"
    # rules.billing.inactive is deny: no fallback to the free plan.
    _, secret = await gw.runtime.registry.create(user="ann")
    async with client(gw.url) as c:
        r = await c.get("/api/echo", headers={"X-Api-Key": secret})
    assert r.status_code == 402
    assert r.json()["code"] == "SUBSCRIPTION_INACTIVE"


async def test_deleted_subscription_gone_from_stripe_is_canceled_from_the_payload(
        gw: RunningGateway, fake: FakeStripe) -> None:
    sub = seed_sub(fake)
    assert (await deliver(gw, event("customer.subscription.created", sub))).status_code == 200
    fake.objects["subscription"].clear()
    r = await deliver(gw, event("customer.subscription.deleted", sub))
    assert r.status_code == 200, r.text
    assert (await gw.runtime.ledger.config(ANN))["status"] == "canceled"


async def test_past_due_has_a_grace_that_starts_when_it_first_becomes_past_due(
        gw: RunningGateway, fake: FakeStripe) -> None:
    sub = seed_sub(fake, status="past_due")
    before = int(time.time() * 1000)
    assert (await deliver(gw, event("customer.subscription.updated", sub))).status_code == 200
    config = await gw.runtime.ledger.config(ANN)
    assert config["status"] == "past_due"
    until = int(config["past_due_until"])
    assert before + 3600_000 <= until <= int(time.time() * 1000) + 3600_000
    assert await metered(gw, 1) == [200]  # within the grace
    # The grace ran out (moved into the past) and another past_due update arrives: the
    # existing deadline is kept, not restarted, so access stops.
    await gw.runtime.store.client.hset(ANN.config_key, "past_due_until", before - 1000)
    assert (await deliver(gw, event("customer.subscription.updated", sub))).status_code == 200
    assert (await gw.runtime.ledger.config(ANN))["past_due_until"] == str(before - 1000)
    _, secret = await gw.runtime.registry.create(user="ann")
    async with client(gw.url) as c:
        r = await c.get("/api/echo", headers={"X-Api-Key": secret})
    assert r.status_code == 402 and r.json()["code"] == "SUBSCRIPTION_INACTIVE"
    # Paid again: active, the deadline is dropped.
    fake.put("subscription", {**sub, "status": "active"})
    assert (await deliver(gw, event("customer.subscription.updated", sub))).status_code == 200
    assert "past_due_until" not in await gw.runtime.ledger.config(ANN)
    assert await metered(gw, 1) == [200]


async def test_unknown_price_or_customer_is_ignored(gw: RunningGateway,
                                                   fake: FakeStripe) -> None:
    sub = seed_sub(fake, price="price_not_in_rules")
    r = await deliver(gw, event("customer.subscription.created", sub))
    assert r.status_code == 200
    assert r.json()["ignored"] is True
    assert "plan" not in await gw.runtime.ledger.config(ANN)
    assert sample(gw, "gateway_billing_webhook_problems_total",
                  {"kind": "unknown_price"}) == 1
    stranger = fake.put("subscription", subscription(
        "sub_x", "cus_stranger", "price_pro_monthly", start=now_s(), end=now_s() + DAY))
    r = await deliver(gw, event("customer.subscription.created", stranger))
    assert r.status_code == 200 and r.json()["ignored"] is True
    assert sample(gw, "gateway_billing_webhook_problems_total",
                  {"kind": "unknown_customer"}) == 1


async def test_checkout_completed_links_the_customer_and_applies_the_subscription(
        gw: RunningGateway, fake: FakeStripe) -> None:
    bob = Account("user", "bob")
    fake.put("subscription", subscription("sub_bob", "cus_bob", "price_starter_annual",
                                          start=now_s() - 10, end=now_s() + 365 * DAY))
    session = fake.put("checkout.session", {
        "id": "cs_bob", "object": "checkout.session", "mode": "subscription",
        "customer": "cus_bob", "subscription": "sub_bob", "payment_status": "paid",
        "status": "complete", "metadata": {"kind": "subscription", "gateway_scope": "user",
                                           "gateway_id": "bob", "plan": "starter"}})
    r = await deliver(gw, event("checkout.session.completed", session))
    assert r.status_code == 200, r.text
    customers = Customers(gw.runtime.store, gw.runtime.stripe)
    assert await customers.account_for("cus_bob") == bob
    config = await gw.runtime.ledger.config(bob)
    assert (config["plan"], config["status"], config["billing_cycle"]) == (
        "starter", "active", "annual")
    assert config["stripe_customer"] == "cus_bob"


async def test_a_second_live_subscription_is_flagged_and_takes_over_only_when_needed(
        gw: RunningGateway, fake: FakeStripe) -> None:
    first = seed_sub(fake, "sub_1")
    assert (await deliver(gw, event("customer.subscription.created", first))).status_code == 200
    second = seed_sub(fake, "sub_2", price="price_pro_monthly")
    r = await deliver(gw, event("customer.subscription.created", second))
    assert r.status_code == 200 and r.json()["ignored"] is True
    config = await gw.runtime.ledger.config(ANN)
    assert (config["stripe_subscription"], config["plan"], config["other_subscription"]) == (
        "sub_1", "starter", "sub_2")
    assert sample(gw, "gateway_billing_webhook_problems_total",
                  {"kind": "duplicate_subscription"}) == 1
    # Routine updates of either never flip the plan between the two.
    for sub in (first, second, first):
        await deliver(gw, event("customer.subscription.updated", sub))
        assert (await gw.runtime.ledger.config(ANN))["plan"] == "starter"
    # The tracked one ends while the other is live: the account goes on with the other.
    fake.put("subscription", {**first, "status": "canceled"})
    r = await deliver(gw, event("customer.subscription.deleted", first))
    assert r.status_code == 200 and r.json()["plan"] == "pro"
    config = await gw.runtime.ledger.config(ANN)
    assert (config["stripe_subscription"], config["status"]) == ("sub_2", "active")
    assert "other_subscription" not in config
    assert await metered(gw, 1) == [200]


async def test_the_other_subscription_ending_clears_the_flag(
        gw: RunningGateway, fake: FakeStripe) -> None:
    first = seed_sub(fake, "sub_1")
    await deliver(gw, event("customer.subscription.created", first))
    second = seed_sub(fake, "sub_2", price="price_pro_monthly")
    await deliver(gw, event("customer.subscription.created", second))
    fake.put("subscription", {**second, "status": "canceled"})
    r = await deliver(gw, event("customer.subscription.deleted", second))
    assert r.json()["ignored"] is True
    config = await gw.runtime.ledger.config(ANN)
    assert (config["stripe_subscription"], config["status"]) == ("sub_1", "active")
    assert "other_subscription" not in config


async def test_a_new_billing_cycle_paid_at_once_moves_the_period(
        gw: RunningGateway, fake: FakeStripe) -> None:
    """Monthly to annual in the portal: Stripe starts an annual period now and charges it
    at once (billing_reason subscription_update). The paid period applies, quota and
    all; a renewal whose invoice is not paid yet does not."""
    sub = seed_sub(fake, start=now_s() - 20 * DAY, end=now_s() + 10 * DAY)
    await deliver(gw, event("customer.subscription.created", sub))
    assert await metered(gw, 4) == [200, 200, 200, 402]
    new_start = now_s() - 5
    fake.put("invoice", {"id": "in_cycle", "object": "invoice", "status": "paid",
                         "created": new_start, "billing_reason": "subscription_update"})
    annual = seed_sub(fake, price="price_starter_annual", start=new_start,
                      end=new_start + 365 * DAY)
    annual["latest_invoice"] = "in_cycle"
    r = await deliver(gw, event("customer.subscription.updated", annual))
    assert r.status_code == 200, r.text
    config = await gw.runtime.ledger.config(ANN)
    assert (config["billing_cycle"], config["period_start"]) == ("annual",
                                                                 str(new_start * 1000))
    assert await metered(gw, 1) == [200]
    # A renewal with its invoice still open keeps the period it had.
    fake.put("invoice", {"id": "in_open", "object": "invoice", "status": "open",
                         "created": now_s(), "billing_reason": "subscription_cycle"})
    renewal = seed_sub(fake, price="price_starter_annual", start=now_s(),
                       end=now_s() + 365 * DAY)
    renewal["latest_invoice"] = "in_open"
    await deliver(gw, event("customer.subscription.updated", renewal))
    assert (await gw.runtime.ledger.config(ANN))["period_start"] == str(new_start * 1000)


# --- invoices -------------------------------------------------------------------------

async def test_invoice_paid_for_a_cycle_moves_the_period_and_restarts_the_quota(
        gw: RunningGateway, fake: FakeStripe) -> None:
    first_start = now_s() - 2 * DAY
    sub = seed_sub(fake, start=first_start, end=now_s() + DAY)
    assert (await deliver(gw, event("customer.subscription.created", sub))).status_code == 200
    assert await metered(gw, 4) == [200, 200, 200, 402]
    # Stripe renews: a new period (the test shifts it so that "now" lies inside it).
    new_start, new_end = now_s() - 60, now_s() + 30 * DAY
    renewed = seed_sub(fake, start=new_start, end=new_end)
    # Stripe moves the subscription first; its invoice is paid later. Until then the old
    # period (and its spent quota) goes on.
    r = await deliver(gw, event("customer.subscription.updated", renewed))
    assert r.status_code == 200, r.text
    assert (await gw.runtime.ledger.config(ANN))["period_start"] == str(first_start * 1000)
    assert await metered(gw, 1) == [402]
    invoice = {"id": "in_1", "object": "invoice", "customer": CUS, "status": "paid",
               "billing_reason": "manual",
               "parent": {"subscription_details": {"subscription": "sub_1"}}}
    # Another billing reason changes nothing.
    r = await deliver(gw, event("invoice.paid", invoice))
    assert r.status_code == 200 and r.json()["ignored"] is True
    assert (await gw.runtime.ledger.config(ANN))["period_start"] == str(first_start * 1000)
    assert await metered(gw, 1) == [402]
    # The renewal invoice (subscription on the invoice itself: older API versions).
    cycle = {**invoice, "id": "in_2", "billing_reason": "subscription_cycle",
             "subscription": "sub_1"}
    del cycle["parent"]
    r = await deliver(gw, event("invoice.paid", cycle))
    assert r.status_code == 200, r.text
    config = await gw.runtime.ledger.config(ANN)
    assert config["period_start"] == str(new_start * 1000)
    assert config["period_end"] == str(new_end * 1000)
    assert await metered(gw, 4) == [200, 200, 200, 402]


async def test_invoice_payment_failed_flags_and_applies_the_status(
        gw: RunningGateway, fake: FakeStripe) -> None:
    seed_sub(fake, status="past_due")
    invoice = {"id": "in_f", "object": "invoice", "customer": CUS, "status": "open",
               "billing_reason": "subscription_cycle", "subscription": "sub_1"}
    before = int(time.time() * 1000)
    r = await deliver(gw, event("invoice.payment_failed", invoice))
    assert r.status_code == 200, r.text
    config = await gw.runtime.ledger.config(ANN)
    assert before <= int(config["payment_failed_at"]) <= int(time.time() * 1000)
    assert config["status"] == "past_due"
    assert int(config["past_due_until"]) >= before + 3600_000


# --- top-ups and refunds --------------------------------------------------------------

def topup_session(session_id: str, payment_status: str, micro: int = 5_000_000
                  ) -> dict[str, Any]:
    return {"id": session_id, "object": "checkout.session", "mode": "payment",
            "customer": CUS, "payment_status": payment_status, "status": "complete",
            "payment_intent": "pi_1",
            "metadata": {"kind": "topup", "gateway_scope": "user", "gateway_id": "ann",
                         "credits_micro_usd": str(micro)}}


async def test_topup_paid_grants_credits_once(gw: RunningGateway, fake: FakeStripe) -> None:
    session = fake.put("checkout.session", topup_session("cs_paid", "paid"))
    evt = event("checkout.session.completed", session)
    r = await deliver(gw, evt)
    assert r.status_code == 200, r.text
    assert r.json() == {"received": True, "credits_micro_usd": 5_000_000}
    assert await credits(gw) == 5_000_000
    # Stripe delivers the same event again: a duplicate, nothing granted.
    r = await deliver(gw, evt)
    assert r.json() == {"received": True, "duplicate": True}
    # Another event about the same session (a different id): still granted once.
    r = await deliver(gw, event("checkout.session.async_payment_succeeded", session))
    assert r.status_code == 200 and r.json().get("duplicate_topup") is True
    assert await credits(gw) == 5_000_000
    assert sample(gw, "gateway_billing_webhooks_total",
                  {"type": "checkout.session.completed", "outcome": "duplicate"}) == 1


async def test_concurrent_duplicate_deliveries_process_once(
        gw: RunningGateway, fake: FakeStripe) -> None:
    session = fake.put("checkout.session", topup_session("cs_race", "paid", 7_000_000))
    evt = event("checkout.session.completed", session)
    responses = await asyncio.gather(*(deliver(gw, evt) for _ in range(8)))
    assert all(r.status_code == 200 for r in responses)
    bodies = [r.json() for r in responses]
    assert sum(1 for b in bodies if not b.get("duplicate")) == 1
    assert await credits(gw) == 7_000_000
    # Distinct events for the same session, concurrently: one grant.
    more = [event("checkout.session.async_payment_succeeded", session) for _ in range(5)]
    await asyncio.gather(*(deliver(gw, e) for e in more))
    assert await credits(gw) == 7_000_000


async def test_a_crash_mid_handler_does_not_lose_the_event(
        gw: RunningGateway, fake: FakeStripe, monkeypatch: pytest.MonkeyPatch) -> None:
    """A claim left by a process that died mid-handler blocks redeliveries only for its
    lease: while it holds they get 409 (Stripe retries), after it the event runs."""
    monkeypatch.setattr(webhooks, "WAIT_S", 0.2)
    session = fake.put("checkout.session", topup_session("cs_crash", "paid", 3_000_000))
    evt = event("checkout.session.completed", session)
    marker = webhooks.EVENT_PREFIX + evt["id"]
    # The dead process's claim, as `receive` writes it.
    await gw.runtime.store.client.set(marker, "processing", ex=webhooks.LEASE_S)
    r = await deliver(gw, evt)
    assert (r.status_code, r.json()["code"]) == (409, "EVENT_IN_PROGRESS")
    assert r.headers["retry-after"] == "30" and await credits(gw) == 0
    # The lease runs out (here: expires now); Stripe's next delivery is processed.
    await gw.runtime.store.client.pexpire(marker, 1)
    await asyncio.sleep(0.01)
    r = await deliver(gw, evt)
    assert r.status_code == 200 and r.json() == {"received": True,
                                                 "credits_micro_usd": 3_000_000}
    assert await credits(gw) == 3_000_000
    r = await deliver(gw, evt)
    assert r.json() == {"received": True, "duplicate": True}


async def test_a_delivery_waits_for_a_concurrent_one_that_fails(
        gw: RunningGateway, fake: FakeStripe, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two deliveries at once, the first fails (Stripe down while it re-fetches): the
    second, which waited, runs the handler itself instead of calling it a duplicate."""
    session = fake.put("checkout.session", topup_session("cs_flaky", "paid", 2_000_000))
    evt = event("checkout.session.completed", session)
    real = events.handle
    calls = 0

    async def flaky(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(0.3)
            raise RuntimeError("the first delivery fails")
        return await real(*args)

    monkeypatch.setattr(events, "handle", flaky)
    first, second = await asyncio.gather(deliver(gw, evt), deliver(gw, evt))
    assert sorted([first.status_code, second.status_code]) == [200, 500]
    ok = first if first.status_code == 200 else second
    assert ok.json() == {"received": True, "credits_micro_usd": 2_000_000}
    assert await credits(gw) == 2_000_000 and calls == 2


async def test_topup_unpaid_then_async_payment_succeeded(
        gw: RunningGateway, fake: FakeStripe) -> None:
    session = fake.put("checkout.session", topup_session("cs_async", "unpaid"))
    r = await deliver(gw, event("checkout.session.completed", session))
    assert r.status_code == 200, r.text
    assert r.json() == {"received": True, "pending": True}
    assert await credits(gw) == 0
    # The bank debit fails on one attempt: nothing granted.
    r = await deliver(gw, event("checkout.session.async_payment_failed", session))
    assert r.json() == {"received": True, "pending": True}
    assert await credits(gw) == 0
    paid = fake.put("checkout.session", {**session, "payment_status": "paid"})
    r = await deliver(gw, event("checkout.session.async_payment_succeeded", paid))
    assert r.status_code == 200, r.text
    assert await credits(gw) == 5_000_000


async def test_charge_refunded_claws_back_cumulatively(gw: RunningGateway,
                                                       fake: FakeStripe) -> None:
    await gw.runtime.ledger.grant_credits(ANN, 6_000_000)
    fake.put("payment_intent", {
        "id": "pi_1", "object": "payment_intent", "customer": CUS,
        "metadata": {"kind": "topup", "gateway_scope": "user", "gateway_id": "ann",
                     "credits_micro_usd": "5000000"}})
    charge = fake.put("charge", {"id": "ch_1", "object": "charge", "customer": CUS,
                                 "amount": 500, "amount_refunded": 200, "refunded": False,
                                 "payment_intent": "pi_1", "metadata": {}})
    r = await deliver(gw, event("charge.refunded", dict(charge)))
    assert r.status_code == 200, r.text
    assert r.json() == {"received": True, "clawed_back_micro_usd": 2_000_000}
    assert await credits(gw) == 4_000_000
    # A second partial refund: amount_refunded is cumulative ($5 total): claw $3 more.
    fake.put("charge", {**charge, "amount_refunded": 500, "refunded": True})
    r = await deliver(gw, event("charge.refunded", dict(charge)))
    assert r.json() == {"received": True, "clawed_back_micro_usd": 3_000_000}
    assert await credits(gw) == 1_000_000
    # The first refund's event arriving again under a new id: nothing more.
    r = await deliver(gw, event("charge.refunded", dict(charge)))
    assert r.json() == {"received": True, "clawed_back_micro_usd": 0}
    assert await credits(gw) == 1_000_000


async def test_refund_after_credits_were_spent_leaves_a_debt(
        gw: RunningGateway, fake: FakeStripe) -> None:
    await gw.runtime.ledger.grant_credits(ANN, 1_000_000)
    fake.put("charge", {"id": "ch_2", "object": "charge", "customer": CUS, "amount": 500,
                        "amount_refunded": 500, "payment_intent": None,
                        "metadata": {"kind": "topup", "gateway_scope": "user",
                                     "gateway_id": "ann", "credits_micro_usd": "5000000"}})
    evts = [event("charge.refunded", {"id": "ch_2", "object": "charge"}) for _ in range(4)]
    await asyncio.gather(*(deliver(gw, e) for e in evts))
    assert await credits(gw) == -4_000_000


async def test_a_charge_without_usable_amounts_is_ignored_not_a_500(
        gw: RunningGateway, fake: FakeStripe) -> None:
    await gw.runtime.ledger.grant_credits(ANN, 1_000_000)
    fake.put("charge", {"id": "ch_junk", "object": "charge", "customer": CUS,
                        "amount": "lots", "amount_refunded": 100, "payment_intent": None,
                        "metadata": {"kind": "topup", "gateway_scope": "user",
                                     "gateway_id": "ann", "credits_micro_usd": "1000000"}})
    r = await deliver(gw, event("charge.refunded", {"id": "ch_junk", "object": "charge"}))
    assert r.status_code == 200 and r.json()["ignored"] is True
    assert await credits(gw) == 1_000_000
    assert sample(gw, "gateway_billing_webhook_problems_total", {"kind": "bad_charge"}) == 1


async def test_refund_of_a_non_topup_charge_changes_nothing(
        gw: RunningGateway, fake: FakeStripe) -> None:
    await gw.runtime.ledger.grant_credits(ANN, 1_000_000)
    fake.put("payment_intent", {"id": "pi_sub", "object": "payment_intent", "metadata": {}})
    fake.put("charge", {"id": "ch_3", "object": "charge", "customer": CUS, "amount": 900,
                        "amount_refunded": 900, "payment_intent": "pi_sub", "metadata": {}})
    r = await deliver(gw, event("charge.refunded", {"id": "ch_3", "object": "charge"}))
    assert r.status_code == 200 and r.json()["ignored"] is True
    assert await credits(gw) == 1_000_000


# --- notifications, failures ----------------------------------------------------------

async def test_trial_will_end_notifies(gw: RunningGateway, fake: FakeStripe,
                                       upstream: RecordingUpstream) -> None:
    await gw.runtime.store.client.hset(ANN.config_key, "alert_webhook",
                                       f"{upstream.url}/echo/trial")
    sub = seed_sub(fake, status="trialing")
    r = await deliver(gw, event("customer.subscription.trial_will_end",
                                {**sub, "trial_end": now_s() + 3 * DAY}))
    assert r.status_code == 200, r.text
    assert r.json() == {"received": True, "notified": True, "channels": ["webhook"]}
    assert sample(gw, "gateway_billing_notifications_total",
                  {"kind": "trial_will_end"}) == 1
    deadline = time.monotonic() + 5
    while not upstream.requests and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    [req] = upstream.requests
    assert (req.method, req.target) == ("POST", "/echo/trial")
    assert req.body_len > 0


async def test_stripe_failing_answers_502_and_a_redelivery_succeeds(
        gw: RunningGateway, fake: FakeStripe) -> None:
    sub = seed_sub(fake)
    evt = event("customer.subscription.created", sub)
    fake.fail_next(2, status=500)  # the SDK's own retry included
    r = await deliver(gw, evt)
    assert (r.status_code, r.json()["code"]) == (502, "STRIPE_UNAVAILABLE")
    assert await gw.runtime.store.client.get(f"gw:stripe:event:{evt['id']}") is None
    assert "plan" not in await gw.runtime.ledger.config(ANN)
    r = await deliver(gw, evt)  # Stripe retries
    assert r.status_code == 200, r.text
    assert r.json() == {"received": True, "plan": "starter", "status": "active"}
    assert (await gw.runtime.ledger.config(ANN))["plan"] == "starter"


async def test_unknown_event_type_is_ignored(gw: RunningGateway) -> None:
    r = await deliver(gw, event("payment_intent.succeeded", {"id": "pi_9"}))
    assert r.status_code == 200
    assert r.json() == {"received": True, "ignored": True}


async def test_a_manual_plan_is_not_undone_by_the_subscription_it_replaced(
        gw: RunningGateway, fake: FakeStripe) -> None:
    """An operator comps an account that had a Stripe subscription: that subscription's
    later events (updated, deleted) leave the comp alone; one the customer starts
    afterwards takes over as any new subscription does."""
    first = seed_sub(fake, "sub_1")
    assert (await deliver(gw, event("customer.subscription.created", first))).status_code == 200
    result = await gw.runtime.ledger.set_plan(gw.runtime.rules, ANN, "pro")
    assert result["replaced_subscriptions"] == ["sub_1"]
    for evt in (event("customer.subscription.updated", first),
                event("customer.subscription.updated", {**first, "status": "past_due"})):
        r = await deliver(gw, evt)
        assert r.status_code == 200 and r.json()["ignored"] is True
    fake.put("subscription", {**first, "status": "canceled"})
    r = await deliver(gw, event("customer.subscription.deleted", first))
    assert r.status_code == 200 and r.json()["ignored"] is True
    config = await gw.runtime.ledger.config(ANN)
    assert (config["plan"], config["status"], config["source"]) == ("pro", "active", "manual")
    assert "stripe_subscription" not in config
    assert await metered(gw, 5) == [200] * 5  # pro's quota, not free's 1 unit
    # Set again (another plan): what it replaced stays replaced.
    again = await gw.runtime.ledger.set_plan(gw.runtime.rules, ANN, "starter")
    assert again["replaced_subscriptions"] == ["sub_1"]
    # A subscription the customer starts now is theirs: it takes over.
    second = seed_sub(fake, "sub_2", price="price_pro_monthly")
    r = await deliver(gw, event("customer.subscription.created", second))
    assert r.status_code == 200 and r.json()["plan"] == "pro"
    config = await gw.runtime.ledger.config(ANN)
    assert (config["stripe_subscription"], config["source"]) == ("sub_2", "stripe")
