"""The account's subscription (read from the ledger), cancelling it, and its invoices."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.billing.customers import Customers
from gateway.billing.selfservice import context, query_account
from gateway.billing.stripe_client import stripe_errors
from gateway.errors import GatewayError
from gateway.isotime import iso_ms, iso_s
from gateway.metering.accounts import Account

RUNNING = frozenset({"active", "trialing"})
ENDED = frozenset({"canceled", "incomplete_expired"})
# Stripe's status → the one a user sees: active | trial | cancelled | past_due | unpaid.
SHOWN = {"active": "active", "trialing": "trial", "canceled": "cancelled",
         "incomplete_expired": "cancelled", "past_due": "past_due", "unpaid": "unpaid",
         "incomplete": "unpaid", "paused": "unpaid"}
INVOICE_PAGE = 100     # Stripe's largest page
INVOICE_DEFAULT = 20


def shown_status(status: str, cancel_at_period_end: bool) -> str:
    """Cancelled-but-still-paid-for shows as "cancelled" (service runs to period end)."""
    if cancel_at_period_end and status in RUNNING:
        return "cancelled"
    return SHOWN.get(status, status)


def _iso_ms(value: str | None) -> str | None:
    if not value:
        return None
    return iso_ms(int(value))


def _iso_s(value: object) -> str | None:
    if not isinstance(value, int):
        return None
    return iso_s(value)


def subscription_document(account: Account, config: dict[str, str]) -> dict[str, Any] | None:
    """What GET /billing/subscription shows, from the account's config hash; None if the
    account has no plan of its own (it runs on the rules' default plan)."""
    plan = config.get("plan")
    if not plan:
        return None
    status = config.get("status") or "active"
    cancel = config.get("cancel_at_period_end") == "1"
    source = config.get("source") or "manual"
    stripe_id = (config.get("stripe_subscription") or None) if source == "stripe" else None
    return {
        "plan": plan,
        "status": shown_status(status, cancel),
        "cancel_at_period_end": cancel,
        "current_period_start": _iso_ms(config.get("period_start")),
        "current_period_end": _iso_ms(config.get("period_end")),
        "billing_cycle": (config.get("billing_cycle") or None) if stripe_id else None,
        "scope": account.scope,
        "source": source,
        "subscription_id": stripe_id,
        # Another live subscription Stripe reported for this account: it bills too.
        "other_subscription_id": (config.get("other_subscription") or None) if stripe_id
        else None,
    }


async def read_subscription(request: Request) -> JSONResponse:
    ctx = context(request, write=False)
    account = query_account(request, ctx.caller)
    doc = subscription_document(account, await ctx.runtime.ledger.config(account))
    if doc is None:
        raise GatewayError("NOT_FOUND", f"this {account.scope} has no subscription "
                           "(POST /billing/checkout to start one)")
    return JSONResponse(doc)


async def cancel_subscription(request: Request) -> JSONResponse:
    """Cancel at period end: Stripe first, then the ledger; service runs to period end."""
    ctx = context(request, write=True)
    account = query_account(request, ctx.caller)
    ledger = ctx.runtime.ledger
    config = await ledger.config(account)
    # A plan an operator gave later (source manual) is not Stripe's to cancel.
    sub_id = config.get("stripe_subscription") if config.get("source") == "stripe" else None
    if not sub_id:
        raise GatewayError("NOT_FOUND", f"this {account.scope} has no Stripe subscription "
                           "to cancel" + (" (its plan was given by an operator)"
                                          if config.get("plan") else ""))
    if config.get("status") in ENDED:
        raise GatewayError("CONFLICT", "the subscription has already ended")
    with stripe_errors():
        # Setting a flag: repeating it is harmless, so no idempotency key is needed.
        sub = await ctx.stripe.v1.subscriptions.update_async(
            sub_id, params={"cancel_at_period_end": True})
    cancelling = bool(sub.to_dict().get("cancel_at_period_end", True))
    store = ctx.runtime.store
    # Only the flag this action changes: plan, status and period stay as the webhooks
    # wrote them (with the grace bookkeeping), so a concurrent
    # customer.subscription.updated is never undone; that webhook confirms it too.
    await store.call(store.client.hset(account.config_key, "cancel_at_period_end",
                                       int(cancelling)))
    doc = subscription_document(account, await ledger.config(account))
    assert doc is not None
    return JSONResponse(doc)


def _cents_usd(cents: object) -> str | None:
    """Stripe's integer minor units as an exact amount: 1234 → "12.34"."""
    if not isinstance(cents, int) or isinstance(cents, bool):
        return None
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"


def _page_params(request: Request) -> tuple[int, str | None]:
    """?limit=1..100 (default 20) and ?starting_after=<invoice id> (the last one seen)."""
    raw = request.query_params.get("limit", str(INVOICE_DEFAULT))
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= INVOICE_PAGE:
        raise GatewayError("BAD_REQUEST", f"limit must be 1 to {INVOICE_PAGE}")
    after = request.query_params.get("starting_after") or None
    if after is not None and not (after.startswith("in_") and len(after) <= 255
                                  and after.isprintable()):
        raise GatewayError("BAD_REQUEST", "starting_after must be an invoice id (in_…)")
    return int(raw), after


async def list_invoices(request: Request) -> JSONResponse:
    """The account's invoices, newest first, a page at a time (`next` names the
    `starting_after` of the next page)."""
    ctx = context(request, write=False)
    account = query_account(request, ctx.caller, ("scope", "limit", "starting_after"))
    limit, after = _page_params(request)
    if ctx.caller.test:
        # Test keys never reach Stripe; they have no invoices of their own.
        return JSONResponse({"invoices": [], "has_more": False, "next": None, "test": True})
    customer = await Customers(ctx.runtime.store, ctx.stripe).find(account)
    if customer is None:
        return JSONResponse({"invoices": [], "has_more": False, "next": None})
    params: dict[str, Any] = {"customer": customer, "limit": limit}
    if after:
        params["starting_after"] = after
    with stripe_errors():
        page = await ctx.stripe.v1.invoices.list_async(params=params)  # type: ignore[arg-type]
    invoices = []
    for inv in page.data:
        d = inv.to_dict()
        invoices.append({
            "id": d.get("id"), "number": d.get("number"), "status": d.get("status"),
            "amount_due": d.get("amount_due"), "amount_paid": d.get("amount_paid"),
            "amount_due_usd": _cents_usd(d.get("amount_due")),
            "amount_paid_usd": _cents_usd(d.get("amount_paid")),
            "currency": d.get("currency"), "hosted_invoice_url": d.get("hosted_invoice_url"),
            "invoice_pdf": d.get("invoice_pdf"), "created": _iso_s(d.get("created"))})
    more = bool(page.has_more)
    return JSONResponse({"invoices": invoices, "has_more": more,
                         "next": invoices[-1]["id"] if more and invoices else None})
