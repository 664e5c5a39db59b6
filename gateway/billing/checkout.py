"""Money in: Stripe Checkout for subscriptions and prepaid top-ups, and the customer portal.

Nothing is granted here: the session only collects the payment. The webhook grants the
plan or the credits once Stripe says the money arrived (metadata carries the account).

An account has at most one open subscription checkout (`gw:{tag}:checkout`, as long as
the session lives): asking again for the same plan and cycle returns the same
`checkout_url`, another plan expires the old session first. Two checkouts completed side
by side would be two live subscriptions billing one account.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import stripe
from starlette.requests import Request
from starlette.responses import JSONResponse
from stripe import RequestOptions
from stripe.params.billing_portal import SessionCreateParams as PortalSessionCreateParams
from stripe.params.checkout import SessionCreateParams

from gateway.billing.customers import Customers
from gateway.billing.selfservice import (
    AMOUNT,
    TEXT,
    Context,
    account_of,
    context,
    idempotency_key,
    json_body,
)
from gateway.billing.stripe_client import stripe_errors
from gateway.errors import GatewayError
from gateway.metering.accounts import Account
from gateway.money import MICRO, micro_to_usd, usd_to_micro
from gateway.rules.model import TOPUP_MAX_USD, TOPUP_MIN_USD, BillingConfig

CYCLES = ("monthly", "annual")
# Stripe subscription statuses that already bill the account: a second checkout would
# double-charge it, so plan changes go through the portal instead.
LIVE_STATUSES = frozenset({"active", "trialing", "past_due"})
MICRO_PER_CENT = MICRO // 100
TOPUP_PRODUCT = "Prepaid credits"
CHECKOUT_TTL_S = 3600      # a subscription session's life (Stripe allows 30 min to 24 h)
CHECKOUT_LOCK_MS = 30_000  # one session is created at a time per account
LOCK_WAIT_S = 10.0


def _options(key: str | None) -> RequestOptions:
    return {"idempotency_key": key} if key else {}


def _return_urls(billing: BillingConfig, topup: bool) -> tuple[str, str]:
    success = (billing.top_up_url if topup else None) or billing.checkout_success_url
    cancel = (billing.top_up_url if topup else None) or billing.checkout_cancel_url
    if not success or not cancel:
        raise GatewayError("BILLING_DISABLED", "checkout needs billing.checkout_success_url "
                           "(or upgrade_url) in the rules file")
    return success, cancel


async def create_checkout(request: Request) -> JSONResponse:
    ctx = context(request, write=True)
    body = await json_body(request, {"plan": TEXT, "billing_cycle": TEXT, "scope": TEXT,
                                     "email": TEXT}, required=("plan",))
    cycle = body.get("billing_cycle", "monthly")
    if cycle not in CYCLES:
        raise GatewayError("BAD_REQUEST", f"billing_cycle must be monthly or annual, "
                           f"not {cycle!r}")
    account = account_of(ctx.caller, body.get("scope"))
    rules = ctx.runtime.rules
    name = body["plan"]
    plan = rules.plans.get(name)
    priced = sorted(p.name for p in rules.plans.values() if p.stripe_prices.get(cycle))
    if plan is None or not plan.stripe_prices.get(cycle):
        why = f"no plan {name!r} in the rules" if plan is None else \
            f"plan {name!r} has no Stripe price for {cycle} billing"
        raise GatewayError("INVALID_PLAN", f"{why}; plans sold {cycle}: "
                           f"{', '.join(priced) or 'none'}")
    price = plan.stripe_prices[cycle]
    config = await ctx.runtime.ledger.config(account)
    if (config.get("source") == "stripe" and config.get("stripe_subscription")
            and config.get("status") in LIVE_STATUSES):
        status = config.get("status") or ""
        raise GatewayError("CONFLICT", f"this {account.scope} already has "
                           f"{'an' if status[:1] in 'aeiou' else 'a'} {status} subscription to "
                           f"{config.get('plan')!r}; change plans in the billing portal "
                           "(POST /billing/portal)")
    success, cancel = _return_urls(rules.billing, topup=False)
    key = idempotency_key(request, "checkout", account)
    store = ctx.runtime.store
    lock, token = account.key("checkout-lock"), secrets.token_hex(8)
    await _take_lock(store, lock, token)
    try:
        open_ = await _open_checkout(ctx, account)
        if open_ is not None and (open_["plan"], open_["cycle"]) == (name, cycle):
            return JSONResponse({"checkout_url": open_["url"], "session_id": open_["session"],
                                 "reused": True})
        if open_ is not None:
            await _expire_session(ctx, open_["session"])
        metadata = {"gateway_scope": account.scope, "gateway_id": account.id, "plan": name,
                    "billing_cycle": cycle, "kind": "subscription"}
        expires_at = int(time.time()) + CHECKOUT_TTL_S

        def params(customer: str) -> SessionCreateParams:
            return {
                "mode": "subscription", "customer": customer,
                "line_items": [{"price": price, "quantity": 1}],
                "client_reference_id": f"{account.scope}:{account.id}",
                "metadata": metadata, "subscription_data": {"metadata": metadata},
                "success_url": success, "cancel_url": cancel, "expires_at": expires_at}

        session = await create_session(ctx, account, body.get("email"), params, key)
        await store.call(store.client.hset(account.key("checkout"), mapping={
            "session": session.id, "url": session.url, "plan": name, "cycle": cycle}))
        await store.call(store.client.expireat(account.key("checkout"), expires_at))
    finally:
        await _release_lock(store, lock, token)
    return JSONResponse({"checkout_url": session.url, "session_id": session.id})


async def create_session(ctx: Context, account: Account, email: str | None,
                         params: Any, key: str | None) -> stripe.checkout.Session:
    """A Checkout session for the account's customer. A customer deleted on Stripe's side
    (an operator's clean-up) is replaced once instead of failing every later checkout."""
    customers = Customers(ctx.runtime.store, ctx.stripe)
    customer = await customers.ensure(account, email)
    for attempt in (1, 2):
        try:
            with stripe_errors():
                return await ctx.stripe.v1.checkout.sessions.create_async(
                    params=params(customer), options=_options(key))
        except GatewayError as exc:
            cause = exc.__cause__
            if attempt == 2 or not _customer_missing(cause):
                raise
            customer = await customers.replace(account, customer, email)
    raise AssertionError("unreachable")


def _customer_missing(exc: BaseException | None) -> bool:
    """Stripe's "No such customer" (HTTP 400 resource_missing, param customer)."""
    return (isinstance(exc, stripe.InvalidRequestError) and exc.code == "resource_missing"
            and (exc.param == "customer" or "No such customer" in str(exc)))


async def _open_checkout(ctx: Context, account: Account) -> dict[str, str] | None:
    store = ctx.runtime.store
    raw = await store.read(lambda: store.client.hgetall(account.key("checkout")))
    found = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes)
                                                           else v) for k, v in raw.items()}
    return found if {"session", "url", "plan", "cycle"} <= set(found) else None


async def _expire_session(ctx: Context, session_id: str) -> None:
    """End an open session so it can no longer be paid; a session that was completed
    meanwhile means a subscription is on its way: 409."""
    try:
        with stripe_errors():
            await ctx.stripe.v1.checkout.sessions.expire_async(session_id)
        return
    except GatewayError as exc:
        if exc.code != "STRIPE_REJECTED":
            raise
    with stripe_errors():
        session = await ctx.stripe.v1.checkout.sessions.retrieve_async(session_id)
    if session.status == "complete":
        raise GatewayError("CONFLICT", "a checkout of this account has just been completed; "
                           "its subscription is being set up (GET /billing/subscription)")


async def _take_lock(store: Any, lock: str, token: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LOCK_WAIT_S
    while not await store.call(store.client.set(lock, token, nx=True, px=CHECKOUT_LOCK_MS)):
        if loop.time() >= deadline:
            raise GatewayError("CONFLICT", "another checkout of this account is being "
                               "created; retry in a moment", headers={"Retry-After": "5"})
        await asyncio.sleep(0.05)


async def _release_lock(store: Any, lock: str, token: str) -> None:
    current = await store.read(lambda: store.client.get(lock))
    if current is not None and (current.decode() if isinstance(current, bytes)
                                else current) == token:
        await store.call(store.client.delete(lock))


def topup_micro(billing: BillingConfig, tier: object, amount: object) -> int:
    """The top-up in micro-USD: a named tier or an amount, whole cents, $3 to $10,000."""
    if (tier is None) == (amount is None):
        raise GatewayError("BAD_REQUEST", "send exactly one of tier ("
                           + "|".join(billing.topup_tiers) + ") or amount_usd")
    if tier is not None:
        usd = billing.topup_tiers.get(str(tier))
        if usd is None:
            raise GatewayError("BAD_REQUEST", f"unknown tier {tier!r}; tiers: " + ", ".join(
                f"{n} (${v})" for n, v in billing.topup_tiers.items()))
        return usd_to_micro(usd)
    try:
        micro = usd_to_micro(amount)
    except ValueError as exc:
        raise GatewayError("BAD_REQUEST", f"amount_usd: {exc}") from None
    if micro % MICRO_PER_CENT:
        raise GatewayError("BAD_REQUEST", "amount_usd must be whole cents")
    if not usd_to_micro(TOPUP_MIN_USD) <= micro <= usd_to_micro(TOPUP_MAX_USD):
        raise GatewayError("BAD_REQUEST", f"amount_usd must be between ${TOPUP_MIN_USD} "
                           f"and ${TOPUP_MAX_USD:,}")
    return micro


def _usd(micro: int) -> str:
    """12340000 → "12.34" (whole cents, as Stripe shows it)."""
    return str(Decimal(micro_to_usd(micro)).quantize(Decimal("0.01")))


async def create_topup(request: Request) -> JSONResponse:
    ctx = context(request, write=True)
    body = await json_body(request, {"tier": TEXT, "amount_usd": AMOUNT, "amount": AMOUNT,
                                     "scope": TEXT, "email": TEXT})
    billing = ctx.runtime.rules.billing
    tier, amount = body.get("tier"), body.get("amount_usd")
    if "amount" in body:
        # The reference's field: a tier's name ("small") or, here, an amount in USD.
        given = body["amount"]
        if tier is not None or amount is not None:
            raise GatewayError("BAD_REQUEST", "send one of tier, amount_usd or amount")
        if isinstance(given, str) and given in billing.topup_tiers:
            tier = given
        else:
            amount = given
    micro = topup_micro(billing, tier, amount)
    account = account_of(ctx.caller, body.get("scope"))
    success, cancel = _return_urls(billing, topup=True)
    key = idempotency_key(request, "topup", account)
    metadata = {"kind": "topup", "gateway_scope": account.scope, "gateway_id": account.id,
                "credits_micro_usd": str(micro)}

    def params(customer: str) -> SessionCreateParams:
        return {
            "mode": "payment", "customer": customer,
            "line_items": [{"quantity": 1, "price_data": {
                "currency": "usd", "unit_amount": micro // MICRO_PER_CENT,
                "product_data": {"name": TOPUP_PRODUCT}}}],
            "client_reference_id": f"{account.scope}:{account.id}",
            "metadata": metadata, "payment_intent_data": {"metadata": metadata},
            "success_url": success, "cancel_url": cancel}

    session = await create_session(ctx, account, body.get("email"), params, key)
    return JSONResponse({"checkout_url": session.url, "session_id": session.id,
                         "amount_usd": _usd(micro), "credits_micro_usd": micro})


def return_url_allowed(url: str, allowlist: tuple[str, ...]) -> bool:
    """Whether `url` matches an entry: a URL prefix (`https://example.com/app/`), or a
    host (`localhost`, `example.com:8443`) or host glob (`*.example.com`, subdomains only)
    matched against the URL's host over https."""
    if any(c.isspace() or not c.isprintable() or c == "\\" for c in url):
        return False
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host or "@" in parts.netloc:
        return False
    # A browser resolves dot segments before it goes there: /account/../x is /x.
    segments = parts.path.split("/")
    if any(seg.lower().replace("%2e", ".") in (".", "..") for seg in segments):
        return False
    for entry in allowlist:
        if "://" in entry:
            if _prefix_matches(parts.scheme, host, _port(parts.scheme, port),
                               parts.path or "/", entry):
                return True
            continue
        if parts.scheme != "https":
            continue
        pattern, _, want_port = entry.lower().partition(":")
        if (int(want_port) if want_port else None) != (None if port == 443 else port):
            continue
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


def _port(scheme: str, port: int | None) -> int:
    return port if port is not None else (443 if scheme == "https" else 80)


def _prefix_matches(scheme: str, host: str, port: int, path: str, entry: str) -> bool:
    e = urlsplit(entry)
    # https://example.com:443/ is https://example.com/.
    if (scheme, host, port) != (e.scheme, (e.hostname or "").lower(), _port(e.scheme, e.port)):
        return False
    prefix = e.path or "/"
    # `/app` matches `/app` and `/app/x`, not `/application`.
    return path == prefix or path.startswith(prefix if prefix.endswith("/") else prefix + "/")


async def create_portal(request: Request) -> JSONResponse:
    ctx = context(request, write=True)
    body = await json_body(request, {"return_url": TEXT, "scope": TEXT},
                           required=("return_url",))
    account = account_of(ctx.caller, body.get("scope"))
    return_url: str = body["return_url"]
    allowlist = ctx.runtime.rules.billing.return_url_allowlist
    if not return_url_allowed(return_url, allowlist):
        raise GatewayError("RETURN_URL_NOT_ALLOWED", "return_url must match "
                           "billing.return_url_allowlist: " + (", ".join(allowlist) or
                                                               "(empty)"),
                           allowed=list(allowlist))
    url = await portal_url(ctx, account, return_url)
    return JSONResponse({"url": url})


async def portal_url(ctx: Context, account: Account, return_url: str) -> str:
    customer = await Customers(ctx.runtime.store, ctx.stripe).find(account)
    if customer is None:
        raise GatewayError("NOT_FOUND", f"this {account.scope} has no Stripe customer yet; "
                           "start with POST /billing/checkout or /billing/topup")
    params: PortalSessionCreateParams = {"customer": customer, "return_url": return_url}
    with stripe_errors():
        session = await ctx.stripe.v1.billing_portal.sessions.create_async(params=params)
    return str(session.url)
