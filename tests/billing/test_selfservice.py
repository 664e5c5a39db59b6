"""Self-service billing over real HTTP: the gateway against the fake Stripe (SPEC §7)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.billing import stripe_client
from gateway.billing.checkout import return_url_allowed
from gateway.billing.customers import Customers
from gateway.billing.subscription import shown_status
from gateway.metering.accounts import Account
from tests.fakes.stripe_server import FakeStripe, running_fake_stripe, stripe_settings
from tests.gateway_harness import RunningGateway, client, running_gateway
from tests.upstream import RecordingUpstream

RULES = """
version: 1
upstreams:
  main: {url: "http://127.0.0.1:9", timeout: 5s}
routes:
  - {prefix: /api/, upstream: main}
meters:
  fcu: {usd_per_unit: 0.000002}
weights:
  default: {meter: fcu, units: 1}
plans:
  free: {throughput: [{limit: 1000, window: 60s}], quota: {fcu: 1000}}
  starter:
    price: {monthly: 9, annual: 89.64}
    stripe: {monthly: price_starter_monthly, annual: price_starter_annual}
    throughput: [{limit: 1000, window: 60s}]
    quota: {fcu: 100000}
  pro:
    stripe: {monthly: price_pro_monthly}
    throughput: [{limit: 1000, window: 60s}]
    quota: {fcu: 1000000}
defaults: {user_plan: free}
billing:
  top_up_url: "https://example.com/billing/top-up"
  upgrade_url: "https://example.com/pricing"
  checkout_success_url: "https://example.com/billing/done?session={CHECKOUT_SESSION_ID}"
  return_url_allowlist: ["https://example.com/account", "*.example.com", "localhost:8443"]
"""

ALLOWLIST = ("https://example.com/account", "*.example.com", "localhost:8443")
PERIOD_START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
PERIOD_END_MS = 1_769_904_000_000    # 2026-02-01T00:00:00Z


@pytest.fixture
async def fake() -> AsyncIterator[FakeStripe]:
    async with running_fake_stripe() as f:
        yield f


@pytest.fixture
async def gw(store_url: str | None, fake: FakeStripe) -> AsyncIterator[RunningGateway]:
    async with running_gateway(RULES, store_url, **stripe_settings(fake)) as g:
        yield g


@pytest.fixture
async def gw_one(fake: FakeStripe) -> AsyncIterator[RunningGateway]:
    """For validation that never reaches the store's state: the embedded store only."""
    async with running_gateway(RULES, None, **stripe_settings(fake)) as g:
        yield g


async def key(gw: RunningGateway, user: str = "ann", *, workspace: str | None = None,
              role: str = "billing", test: bool = False) -> dict[str, str]:
    _, secret = await gw.runtime.registry.create(user=user, workspace=workspace, role=role,
                                                 test=test)
    return {"X-Api-Key": secret}


async def call(gw: RunningGateway, method: str, path: str, headers: dict[str, str],
               **kw: Any) -> httpx.Response:
    async with client(gw.url) as c:
        return await c.request(method, path, headers=headers, **kw)


def problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert body["code"] == code
    return body


async def subscribe(gw: RunningGateway, account: Account, status: str = "active",
                    cancel_at_period_end: bool = False, sub_id: str = "sub_ann") -> None:
    """What the webhook writes once Stripe reports the subscription."""
    await gw.runtime.ledger.apply_subscription(
        account, plan="starter", status=status, period_start_ms=PERIOD_START_MS,
        period_end_ms=PERIOD_END_MS, cancel_at_period_end=cancel_at_period_end,
        subscription_id=sub_id, billing_cycle="monthly")


# --- checkout ---------------------------------------------------------------------------

async def test_checkout_creates_a_subscription_session_for_the_callers_customer(
        gw: RunningGateway, fake: FakeStripe) -> None:
    h = await key(gw, "ann")
    r = await call(gw, "POST", "/billing/checkout", h,
                   json={"plan": "starter", "billing_cycle": "annual"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"checkout_url", "session_id"}
    assert body["session_id"].startswith("cs_test_")
    assert body["checkout_url"] == f"https://checkout.stripe.test/c/pay/{body['session_id']}"

    [customer_form] = fake.calls("POST", "/v1/customers")
    assert customer_form["metadata"] == {"gateway_scope": "user", "gateway_id": "ann"}
    [customer] = fake.all("customer")
    account = Account("user", "ann")
    assert await Customers(gw.runtime.store, gw.runtime.stripe).find(account) == customer["id"]

    form = dict(fake.calls("POST", "/v1/checkout/sessions")[0])
    # The session lives an hour (so a stale one cannot complete days later).
    assert abs(int(form.pop("expires_at")) - (int(time.time()) + 3600)) < 60
    metadata = {"gateway_scope": "user", "gateway_id": "ann", "plan": "starter",
                "billing_cycle": "annual", "kind": "subscription"}
    assert form == {
        "mode": "subscription",
        "customer": customer["id"],
        "line_items": [{"price": "price_starter_annual", "quantity": "1"}],
        "client_reference_id": "user:ann",
        "metadata": metadata,
        "subscription_data": {"metadata": metadata},
        "success_url": "https://example.com/billing/done?session={CHECKOUT_SESSION_ID}",
        "cancel_url": "https://example.com/pricing",  # defaults to upgrade_url
    }
    assert fake.get("checkout.session", body["session_id"])["mode"] == "subscription"
    # Checkout grants nothing: the account has no plan until the webhook says so.
    assert "plan" not in await gw.runtime.ledger.config(account)

    # A second checkout reuses the customer; billing_cycle defaults to monthly.
    r = await call(gw, "POST", "/billing/checkout", h, json={"plan": "pro"})
    assert r.status_code == 200, r.text
    assert len(fake.calls("POST", "/v1/customers")) == 1
    second = fake.calls("POST", "/v1/checkout/sessions")[-1]  # after expiring the first
    assert second["customer"] == customer["id"]
    assert second["line_items"] == [{"price": "price_pro_monthly", "quantity": "1"}]
    assert second["metadata"]["billing_cycle"] == "monthly"
    # Another plan: the first session is expired, so it can no longer be paid as well.
    assert fake.get("checkout.session", body["session_id"])["status"] == "expired"


async def test_one_open_checkout_per_account(gw: RunningGateway, fake: FakeStripe) -> None:
    """Asked twice (or twice at once), one session: two completed checkouts would be two
    live subscriptions billing one account."""
    h = await key(gw, "ann")
    first = await call(gw, "POST", "/billing/checkout", h, json={"plan": "starter"})
    again = await call(gw, "POST", "/billing/checkout", h, json={"plan": "starter"})
    assert first.status_code == again.status_code == 200
    assert again.json() == {**first.json(), "reused": True}
    h2 = await key(gw, "bob")
    both = await asyncio.gather(*(call(gw, "POST", "/billing/checkout", h2,
                                       json={"plan": "pro"}) for _ in range(2)))
    assert [r.status_code for r in both] == [200, 200]
    assert both[0].json()["session_id"] == both[1].json()["session_id"]
    assert len(fake.calls("POST", "/v1/checkout/sessions")) == 2
    # Completed: the next checkout is a conflict with the subscription, not a reuse.
    session = fake.get("checkout.session", first.json()["session_id"])
    session.update(status="complete", payment_status="paid")
    await subscribe(gw, Account("user", "ann"))
    problem(await call(gw, "POST", "/billing/checkout", h, json={"plan": "starter"}),
            409, "CONFLICT")


async def test_checkout_for_the_workspace_needs_a_workspace_key(
        gw: RunningGateway, fake: FakeStripe) -> None:
    h = await key(gw, "ann", workspace="acme")
    r = await call(gw, "POST", "/billing/checkout", h,
                   json={"plan": "starter", "scope": "workspace"})
    assert r.status_code == 200, r.text
    form = fake.calls("POST", "/v1/checkout/sessions")[0]
    assert form["metadata"]["gateway_scope"] == "workspace"
    assert form["metadata"]["gateway_id"] == "acme"
    assert form["client_reference_id"] == "workspace:acme"
    assert fake.calls("POST", "/v1/customers")[0]["metadata"] == {
        "gateway_scope": "workspace", "gateway_id": "acme"}

    lone = await key(gw, "bob")
    r = await call(gw, "POST", "/billing/checkout", lone,
                   json={"plan": "starter", "scope": "workspace"})
    assert "workspace" in problem(r, 400, "BAD_REQUEST")["detail"]
    r = await call(gw, "POST", "/billing/checkout", lone,
                   json={"plan": "starter", "scope": "team"})
    problem(r, 400, "BAD_REQUEST")
    assert len(fake.calls("POST", "/v1/checkout/sessions")) == 1


@pytest.mark.parametrize(("body", "fragment"), [
    ({"plan": "gold"}, "no plan 'gold'"),
    ({"plan": "free"}, "plan 'free' has no Stripe price for monthly"),
    ({"plan": "pro", "billing_cycle": "annual"}, "plan 'pro' has no Stripe price for annual"),
])
async def test_checkout_refuses_plans_it_cannot_sell(
        gw_one: RunningGateway, fake: FakeStripe, body: dict[str, str], fragment: str) -> None:
    r = await call(gw_one, "POST", "/billing/checkout", await key(gw_one), json=body)
    assert fragment in problem(r, 400, "INVALID_PLAN")["detail"]
    assert fake.requests == []


@pytest.mark.parametrize("status", ["active", "trialing", "past_due"])
async def test_checkout_conflicts_with_a_live_subscription(
        gw: RunningGateway, fake: FakeStripe, status: str) -> None:
    await subscribe(gw, Account("user", "ann"), status=status)
    r = await call(gw, "POST", "/billing/checkout", await key(gw), json={"plan": "pro"})
    assert "portal" in problem(r, 409, "CONFLICT")["detail"]
    assert fake.requests == []


async def test_checkout_after_a_cancelled_subscription_is_allowed(
        gw: RunningGateway, fake: FakeStripe) -> None:
    await subscribe(gw, Account("user", "ann"), status="canceled")
    r = await call(gw, "POST", "/billing/checkout", await key(gw), json={"plan": "pro"})
    assert r.status_code == 200, r.text
    assert len(fake.calls("POST", "/v1/checkout/sessions")) == 1


@pytest.mark.parametrize("content", [
    b"{not json", b"[1, 2]", b'"starter"', b'{"plan": "starter", "coupon": "FREE"}',
    b'{"plan": 5}', b'{"plan": "starter", "billing_cycle": "weekly"}',
    b'{"plan": "starter", "billing_cycle": true}', b"{}",
])
async def test_checkout_rejects_malformed_bodies(
        gw_one: RunningGateway, fake: FakeStripe, content: bytes) -> None:
    r = await call(gw_one, "POST", "/billing/checkout", await key(gw_one), content=content)
    problem(r, 400, "BAD_REQUEST")
    assert fake.requests == []


# --- roles and test keys ----------------------------------------------------------------

WRITES = [("POST", "/billing/checkout", {"plan": "starter"}),
          ("POST", "/billing/topup", {"tier": "small"}),
          ("POST", "/billing/portal", {"return_url": "https://example.com/account"}),
          ("DELETE", "/billing/subscription", None)]


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
async def test_members_may_not_spend_or_cancel(
        gw_one: RunningGateway, fake: FakeStripe, method: str, path: str,
        body: dict[str, str] | None) -> None:
    member = await key(gw_one, role="member")
    r = await call(gw_one, method, path, member, json=body)
    assert "billing role" in problem(r, 403, "FORBIDDEN")["detail"]
    assert fake.requests == []


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
async def test_test_keys_never_reach_stripe(
        gw: RunningGateway, fake: FakeStripe, method: str, path: str,
        body: dict[str, str] | None) -> None:
    await subscribe(gw, Account("user", "ann"))
    test_key = await key(gw, test=True)
    assert test_key["X-Api-Key"].startswith("gw_test_")
    r = await call(gw, method, path, test_key, json=body)
    assert "test keys" in problem(r, 403, "FORBIDDEN")["detail"]
    r = await call(gw, "GET", "/billing/invoices", test_key)
    assert r.json() == {"invoices": [], "has_more": False, "next": None, "test": True}
    assert fake.requests == []


async def test_members_may_read(gw: RunningGateway, fake: FakeStripe) -> None:
    member = await key(gw, role="member")
    await subscribe(gw, Account("user", "ann"))
    r = await call(gw, "GET", "/billing/subscription", member)
    assert (r.status_code, r.json()["plan"]) == (200, "starter")
    r = await call(gw, "GET", "/billing/invoices", member)
    assert (r.status_code, r.json()) == (200, {"invoices": [], "has_more": False, "next": None})
    assert fake.requests == []  # no customer yet: nothing to ask Stripe


async def test_no_key_is_401(gw_one: RunningGateway) -> None:
    r = await call(gw_one, "GET", "/billing/subscription", {})
    problem(r, 401, "UNAUTHENTICATED")


async def test_a_wrong_method_names_every_method_of_the_path(gw_one: RunningGateway) -> None:
    h = await key(gw_one)
    for method, path, allowed in (("PUT", "/billing/subscription", {"GET", "HEAD", "DELETE"}),
                                  ("PATCH", "/billing/budget", {"GET", "HEAD", "POST", "DELETE"})):
        r = await call(gw_one, method, path, h)
        problem(r, 405, "METHOD_NOT_ALLOWED")
        assert set(r.headers["allow"].split(", ")) == allowed, path


# --- top-up -----------------------------------------------------------------------------

async def test_topup_by_tier_sells_credits_without_granting_them(
        gw: RunningGateway, fake: FakeStripe) -> None:
    r = await call(gw, "POST", "/billing/topup", await key(gw), json={"tier": "medium"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body == {"checkout_url": f"https://checkout.stripe.test/c/pay/{body['session_id']}",
                    "session_id": body["session_id"], "amount_usd": "25.00",
                    "credits_micro_usd": 25_000_000}
    [customer] = fake.all("customer")
    form = fake.calls("POST", "/v1/checkout/sessions")[0]
    metadata = {"kind": "topup", "gateway_scope": "user", "gateway_id": "ann",
                "credits_micro_usd": "25000000"}
    assert form == {
        "mode": "payment",
        "customer": customer["id"],
        "line_items": [{"quantity": "1", "price_data": {
            "currency": "usd", "unit_amount": "2500",
            "product_data": {"name": "Prepaid credits"}}}],
        "client_reference_id": "user:ann",
        "metadata": metadata,
        "payment_intent_data": {"metadata": metadata},
        "success_url": "https://example.com/billing/top-up",
        "cancel_url": "https://example.com/billing/top-up",
    }
    view = await gw.runtime.ledger.view(gw.runtime.rules, gw.runtime.routing.tables,
                                        Account("user", "ann"))
    assert view["credits_micro_usd"] == 0  # the webhook grants them once paid


async def test_a_retried_topup_with_an_idempotency_key_makes_one_session(
        gw_one: RunningGateway, fake: FakeStripe) -> None:
    h = {**await key(gw_one), "Idempotency-Key": "order-77"}
    first = await call(gw_one, "POST", "/billing/topup", h, json={"tier": "small"})
    again = await call(gw_one, "POST", "/billing/topup", h, json={"tier": "small"})
    assert first.status_code == again.status_code == 200, again.text
    assert first.json() == again.json()
    assert len(fake.all("checkout.session")) == 1
    other = await call(gw_one, "POST", "/billing/topup", {**h, "Idempotency-Key": "order-78"},
                       json={"tier": "small"})
    assert other.json()["session_id"] != first.json()["session_id"]
    assert len(fake.all("checkout.session")) == 2


@pytest.mark.parametrize(("amount", "cents", "micro"), [
    (3, "300", 3_000_000), ("12.34", "1234", 12_340_000), (12.34, "1234", 12_340_000),
    (10000, "1000000", 10_000_000_000), ("9999.99", "999999", 9_999_990_000),
])
async def test_topup_by_amount_is_exact(gw_one: RunningGateway, fake: FakeStripe,
                                        amount: object, cents: str, micro: int) -> None:
    r = await call(gw_one, "POST", "/billing/topup", await key(gw_one), json={"amount_usd": amount})
    assert r.status_code == 200, r.text
    assert r.json()["credits_micro_usd"] == micro
    form = fake.calls("POST", "/v1/checkout/sessions")[0]
    assert form["line_items"][0]["price_data"]["unit_amount"] == cents
    assert form["metadata"]["credits_micro_usd"] == str(micro)


@pytest.mark.parametrize(("amount", "micro"), [("medium", 25_000_000), ("12.50", 12_500_000),
                                              (7, 7_000_000)])
async def test_topup_by_the_references_amount_field(
        gw_one: RunningGateway, fake: FakeStripe, amount: object, micro: int) -> None:
    """The reference's top-up takes `amount`: a tier's name, or here also a USD amount."""
    r = await call(gw_one, "POST", "/billing/topup", await key(gw_one), json={"amount": amount})
    assert r.status_code == 200, r.text
    assert r.json()["credits_micro_usd"] == micro


@pytest.mark.parametrize("content", [
    b'{"amount_usd": 2.99}', b'{"amount_usd": 10000.01}', b'{"amount_usd": "2.99"}',
    b'{"amount_usd": 0}', b'{"amount_usd": -5}', b'{"amount_usd": 12.345}',
    b'{"amount_usd": "ten"}', b'{"amount_usd": 1e400}', b'{"amount_usd": true}',
    b'{"tier": "small", "amount_usd": 5}', b"{}", b'{"tier": "huge"}', b'{"tier": 5}',
    b'{"amount_usd": "1_000"}', b'{"amount_usd": " 5"}', b'{"amount_usd": "1e3"}',
    b'{"amount_usd": 5, "amount_usd": 9000}',           # which one? neither
    b'{"amount": "huge"}', b'{"amount": "2.99"}', b'{"amount": "small", "tier": "small"}',
    b'{"amount": 5, "amount_usd": 5}',
])
async def test_topup_refuses_amounts_out_of_range_or_ambiguous(
        gw_one: RunningGateway, fake: FakeStripe, content: bytes) -> None:
    r = await call(gw_one, "POST", "/billing/topup", await key(gw_one), content=content)
    problem(r, 400, "BAD_REQUEST")
    assert fake.requests == []


# --- portal -----------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "allowed"), [
    ("https://example.com/account", True),
    ("https://example.com/account/billing?x=1", True),
    ("https://app.example.com/settings", True),
    ("https://a.b.example.com/", True),
    ("https://localhost:8443/back", True),
    ("https://example.com/accounting", False),        # a prefix ends at a segment
    ("https://example.com/", False),                  # apex: not *.example.com
    ("http://app.example.com/settings", False),       # host globs need https
    ("https://example.com.evil.test/account", False),
    ("https://evilexample.com/", False),
    ("https://example.com@evil.test/account", False),
    ("https://evil.test/?https://example.com/account", False),
    ("https://app.example.com:8443/", False),
    ("https://localhost/back", False),
    ("https://example.com/account\\@evil.test", False),
    ("javascript:alert(1)//example.com/account", False),
    ("https://app.example.com/ x", False),
    ("https://example.com/account/../../x", False),   # the browser goes to /x
    ("https://example.com/account/%2e%2e/x", False),
    ("https://example.com:443/account", True),        # the default port, spelled out
    ("https://example.com:8443/account", False),
])
def test_return_url_allowlist(url: str, allowed: bool) -> None:
    assert return_url_allowed(url, ALLOWLIST) is allowed


async def test_portal_session_for_an_allowed_return_url(
        gw: RunningGateway, fake: FakeStripe) -> None:
    h = await key(gw)
    r = await call(gw, "POST", "/billing/portal", h,
                   json={"return_url": "https://example.com/account"})
    assert "no Stripe customer" in problem(r, 404, "NOT_FOUND")["detail"]
    customer = await Customers(gw.runtime.store, gw.runtime.stripe).ensure(
        Account("user", "ann"))
    r = await call(gw, "POST", "/billing/portal", h,
                   json={"return_url": "https://app.example.com/billing"})
    assert r.status_code == 200, r.text
    [form] = fake.calls("POST", "/v1/billing_portal/sessions")
    assert form == {"customer": customer, "return_url": "https://app.example.com/billing"}
    [session] = fake.all("billing_portal.session")
    assert r.json() == {"url": f"https://billing.stripe.test/p/session/{session['id']}"}


@pytest.mark.parametrize("url", ["https://evil.test/account", "https://example.com/",
                                 "http://app.example.com/", "not a url"])
async def test_portal_refuses_other_return_urls(
        gw_one: RunningGateway, fake: FakeStripe, url: str) -> None:
    await Customers(gw_one.runtime.store, gw_one.runtime.stripe).ensure(Account("user", "ann"))
    r = await call(gw_one, "POST", "/billing/portal", await key(gw_one), json={"return_url": url})
    body = problem(r, 400, "RETURN_URL_NOT_ALLOWED")
    assert body["allowed"] == list(ALLOWLIST)
    assert fake.calls("POST", "/v1/billing_portal/sessions") == []


# --- subscription -----------------------------------------------------------------------

@pytest.mark.parametrize(("status", "cancel", "shown"), [
    ("active", False, "active"), ("trialing", False, "trial"), ("past_due", False, "past_due"),
    ("unpaid", False, "unpaid"), ("canceled", False, "cancelled"),
    ("active", True, "cancelled"), ("trialing", True, "cancelled"),
    ("past_due", True, "past_due"), ("incomplete_expired", False, "cancelled"),
])
def test_status_shown_to_users(status: str, cancel: bool, shown: str) -> None:
    assert shown_status(status, cancel) == shown


async def test_subscription_is_read_from_the_ledger(gw: RunningGateway,
                                                    fake: FakeStripe) -> None:
    h = await key(gw, "ann", workspace="acme", role="member")
    r = await call(gw, "GET", "/billing/subscription", h)
    assert "no subscription" in problem(r, 404, "NOT_FOUND")["detail"]
    await subscribe(gw, Account("workspace", "acme"), status="trialing")
    r = await call(gw, "GET", "/billing/subscription", h, params={"scope": "workspace"})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "plan": "starter", "status": "trial", "cancel_at_period_end": False,
        "current_period_start": "2026-01-01T00:00:00Z",
        "current_period_end": "2026-02-01T00:00:00Z",
        "billing_cycle": "monthly", "scope": "workspace", "source": "stripe",
        "subscription_id": "sub_ann", "other_subscription_id": None}
    problem(await call(gw, "GET", "/billing/subscription", h), 404, "NOT_FOUND")
    r = await call(gw, "GET", "/billing/subscription", h, params={"scope": "galaxy"})
    problem(r, 400, "BAD_REQUEST")
    assert fake.requests == []


async def test_a_plan_given_by_an_operator_is_shown_but_not_stripes_to_cancel(
        gw: RunningGateway, fake: FakeStripe) -> None:
    account = Account("user", "ann")
    await subscribe(gw, account, status="canceled")  # an old Stripe subscription, over
    await gw.runtime.ledger.set_plan(gw.runtime.rules, account, "pro")  # then a comp
    h = await key(gw)
    r = await call(gw, "GET", "/billing/subscription", h)
    assert r.json() == {
        "plan": "pro", "status": "active", "cancel_at_period_end": False,
        "current_period_start": None, "current_period_end": None,
        "billing_cycle": None, "scope": "user", "source": "manual",
        "subscription_id": None, "other_subscription_id": None}
    r = await call(gw, "DELETE", "/billing/subscription", h)
    assert "given by an operator" in problem(r, 404, "NOT_FOUND")["detail"]
    r = await call(gw, "POST", "/billing/checkout", h, json={"plan": "starter"})
    assert r.status_code == 200, r.text  # a comp does not block buying a plan
    assert fake.calls("POST", "/v1/subscriptions") == []


async def test_cancel_at_period_end_keeps_the_service_running(
        gw: RunningGateway, fake: FakeStripe) -> None:
    account = Account("user", "ann")
    h = await key(gw)
    problem(await call(gw, "DELETE", "/billing/subscription", h), 404, "NOT_FOUND")
    fake.put("subscription", {"id": "sub_ann", "object": "subscription", "status": "active",
                              "cancel_at_period_end": False, "customer": "cus_x",
                              "current_period_end": PERIOD_END_MS // 1000, "metadata": {}})
    await subscribe(gw, account)
    r = await call(gw, "DELETE", "/billing/subscription", h)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "plan": "starter", "status": "cancelled", "cancel_at_period_end": True,
        "current_period_start": "2026-01-01T00:00:00Z",
        "current_period_end": "2026-02-01T00:00:00Z",
        "billing_cycle": "monthly", "scope": "user", "source": "stripe",
        "subscription_id": "sub_ann", "other_subscription_id": None}
    assert fake.calls("POST", "/v1/subscriptions/sub_ann") == [{"cancel_at_period_end": "true"}]
    assert fake.get("subscription", "sub_ann")["cancel_at_period_end"] is True
    config = await gw.runtime.ledger.config(account)
    # Still active until the period ends: only the flag changed.
    assert (config["status"], config["plan"], config["cancel_at_period_end"]) == (
        "active", "starter", "1")
    assert config["period_end"] == str(PERIOD_END_MS)


# --- invoices ---------------------------------------------------------------------------

async def test_invoices_of_the_accounts_customer(gw: RunningGateway, fake: FakeStripe) -> None:
    customer = await Customers(gw.runtime.store, gw.runtime.stripe).ensure(
        Account("user", "ann"))
    for n, (status, created) in enumerate([("paid", 1_767_225_600), ("open", 1_769_904_000)]):
        fake.put("invoice", {
            "id": f"in_{n}", "object": "invoice", "customer": customer,
            "number": f"ANN-000{n}", "status": status, "amount_due": 900,
            "amount_paid": 900 if status == "paid" else 0, "currency": "usd",
            "hosted_invoice_url": f"https://invoice.stripe.test/i/{n}",
            "invoice_pdf": f"https://invoice.stripe.test/i/{n}/pdf", "created": created})
    fake.put("invoice", {"id": "in_other", "object": "invoice", "customer": "cus_other",
                         "status": "paid", "created": 1_769_904_000})
    r = await call(gw, "GET", "/billing/invoices", await key(gw, role="member"))
    assert r.status_code == 200, r.text
    assert r.json() == {"has_more": False, "next": None, "invoices": [
        {"id": "in_1", "number": "ANN-0001", "status": "open", "amount_due": 900,
         "amount_paid": 0, "amount_due_usd": "9.00", "amount_paid_usd": "0.00",
         "currency": "usd",
         "hosted_invoice_url": "https://invoice.stripe.test/i/1",
         "invoice_pdf": "https://invoice.stripe.test/i/1/pdf",
         "created": "2026-02-01T00:00:00Z"},
        {"id": "in_0", "number": "ANN-0000", "status": "paid", "amount_due": 900,
         "amount_paid": 900, "amount_due_usd": "9.00", "amount_paid_usd": "9.00",
         "currency": "usd",
         "hosted_invoice_url": "https://invoice.stripe.test/i/0",
         "invoice_pdf": "https://invoice.stripe.test/i/0/pdf",
         "created": "2026-01-01T00:00:00Z"}]}
    assert fake.calls("GET", "/v1/invoices")[-1] == {"customer": customer, "limit": "20"}
    # A page at a time.
    h = await key(gw, role="member")
    first = (await call(gw, "GET", "/billing/invoices?limit=1", h)).json()
    assert ([i["id"] for i in first["invoices"]], first["has_more"], first["next"]) == (
        ["in_1"], True, "in_1")
    rest = (await call(gw, "GET", "/billing/invoices?limit=1&starting_after=in_1", h)).json()
    assert ([i["id"] for i in rest["invoices"]], rest["has_more"], rest["next"]) == (
        ["in_0"], False, None)
    for query in ("limit=0", "limit=101", "limit=x", "starting_after=cus_1", "page=2"):
        problem(await call(gw, "GET", f"/billing/invoices?{query}", h), 400, "BAD_REQUEST")


# --- failures ---------------------------------------------------------------------------

async def test_stripe_outage_is_502_and_changes_nothing(
        gw: RunningGateway, fake: FakeStripe) -> None:
    account = Account("user", "ann")
    h = await key(gw)
    fake.down = True
    r = await call(gw, "POST", "/billing/checkout", h, json={"plan": "starter"})
    assert problem(r, 502, "STRIPE_UNAVAILABLE")
    assert r.headers["retry-after"] == "5"
    assert await gw.runtime.ledger.config(account) == {}  # no customer recorded
    fake.down = False
    customer = await Customers(gw.runtime.store, gw.runtime.stripe).ensure(account)
    await subscribe(gw, account, status="canceled")
    before = await gw.runtime.ledger.config(account)
    fake.down = True
    for method, path, body in [
            ("POST", "/billing/checkout", {"plan": "starter"}),
            ("POST", "/billing/topup", {"amount_usd": "50"}),
            ("POST", "/billing/portal", {"return_url": "https://example.com/account"}),
            ("GET", "/billing/invoices", None)]:
        r = await call(gw, method, path, h, json=body)
        problem(r, 502, "STRIPE_UNAVAILABLE")
    assert await gw.runtime.ledger.config(account) == before
    assert before["stripe_customer"] == customer

    await subscribe(gw, account, status="active")
    fake.put("subscription", {"id": "sub_ann", "object": "subscription", "status": "active",
                              "cancel_at_period_end": False})
    r = await call(gw, "DELETE", "/billing/subscription", h)
    problem(r, 502, "STRIPE_UNAVAILABLE")
    assert (await gw.runtime.ledger.config(account))["cancel_at_period_end"] == "0"
    assert fake.get("subscription", "sub_ann")["cancel_at_period_end"] is False


async def test_a_stripe_that_never_answers_is_502_within_the_timeouts(
        store_url: str | None, fake: FakeStripe, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two attempts of STRIPE_TIMEOUT_S each (here 0.3 s), not the SDK's 80 s."""
    monkeypatch.setattr(stripe_client, "STRIPE_TIMEOUT_S", 0.3)
    async with running_gateway(RULES, store_url, **stripe_settings(fake)) as gw:
        h = await key(gw)
        fake.hang_s = 5
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        r = await call(gw, "POST", "/billing/topup", h, json={"tier": "small"})
        elapsed = loop.time() - t0
        fake.hang_s = 0
    problem(r, 502, "STRIPE_UNAVAILABLE")
    assert elapsed < 3, f"took {elapsed:.1f} s"


async def test_without_stripe_billing_is_503_and_the_proxy_keeps_working() -> None:
    upstream = RecordingUpstream()
    await upstream.start()
    try:
        rules = RULES.replace("http://127.0.0.1:9", upstream.url)
        async with running_gateway(rules, None, stripe_api_key="") as gw:
            h = await key(gw)
            for method, path, body in [*WRITES, ("GET", "/billing/subscription", None),
                                       ("GET", "/billing/invoices", None)]:
                r = await call(gw, method, path, h, json=body)
                assert "STRIPE_API_KEY" in problem(r, 503, "BILLING_DISABLED")["detail"]
            r = await call(gw, "GET", "/api/echo", h)
            assert r.status_code == 200, r.text
    finally:
        await upstream.stop()


async def test_a_customer_deleted_on_stripes_side_is_replaced_once(
        gw: RunningGateway, fake: FakeStripe) -> None:
    account = Account("user", "ann")
    h = await key(gw)
    gone = await Customers(gw.runtime.store, gw.runtime.stripe).ensure(account)
    del fake.objects["customer"][gone]          # an operator cleaned up in the dashboard
    r = await call(gw, "POST", "/billing/topup", h, json={"tier": "small"})
    assert r.status_code == 200, r.text
    now = await Customers(gw.runtime.store, gw.runtime.stripe).find(account)
    assert now is not None and now != gone
    assert fake.calls("POST", "/v1/checkout/sessions")[-1]["customer"] == now
    # A refusal that a retry cannot fix is said so: no retry hint.
    del fake.objects["customer"][now]
    r = await call(gw, "POST", "/billing/portal", h,
                   json={"return_url": "https://example.com/account"})
    body = problem(r, 502, "STRIPE_REJECTED")
    assert "No such customer" in body["detail"] and "retry-after" not in r.headers
