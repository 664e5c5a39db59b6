"""What each Stripe webhook event does to the ledger (the endpoint is `webhooks.py`).

Handlers never trust a payload's copy of state that can change: subscriptions, checkout
sessions and charges are re-fetched from Stripe, so events arriving out of order still
leave the account in Stripe's current state. A handler returns the JSON body of the 200
answer; any exception (Stripe or the store failing) makes the endpoint answer 500 so
Stripe delivers the event again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import stripe

from gateway.billing.alerts import Notice
from gateway.billing.customers import Customers
from gateway.metering.accounts import Account, parse_scope
from gateway.rules.model import Plan
from gateway.runtime import Runtime

log = logging.getLogger("gateway.billing.webhook")

Result = dict[str, Any]
MICRO_PER_CENT = 10_000
QUOTA_REASONS = frozenset({"subscription_create", "subscription_cycle"})
ENDED = frozenset({"canceled", "incomplete_expired"})
LIVE = frozenset({"active", "trialing", "past_due"})
# A period's own invoice is made at its start; Stripe's clocks may differ a little.
PERIOD_SLACK_S = 300

RECEIVED: Result = {"received": True}


def ignored(reason: str) -> Result:
    return {"received": True, "ignored": True, "reason": reason}


@dataclass(frozen=True, slots=True)
class Ctx:
    """One event being handled: the runtime, its Stripe client and the event's type."""

    runtime: Runtime
    stripe: stripe.StripeClient
    event_type: str

    @property
    def customers(self) -> Customers:
        return Customers(self.runtime.store, self.stripe)

    def now_ms(self) -> int:
        clock = self.runtime.clock_ms
        return clock() if clock is not None else int(time.time() * 1000)

    def problem(self, kind: str) -> None:
        self.runtime.metrics.billing_webhook_problems.labels(kind).inc()


def _get(obj: Mapping[str, Any] | None, *path: str) -> Any:
    """obj[a][b]…, or None where anything along the way is missing."""
    node: Any = obj
    for part in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def _id(value: Any) -> str | None:
    """An id field that may be expanded into an object."""
    if isinstance(value, Mapping):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def account_from_metadata(metadata: Any) -> Account | None:
    scope, ident = _get(metadata, "gateway_scope"), _get(metadata, "gateway_id")
    if not isinstance(scope, str) or not isinstance(ident, str) or not ident:
        return None
    try:
        return Account(parse_scope(scope), ident)
    except ValueError:
        return None


async def resolve_account(ctx: Ctx, customer: str | None, *metadatas: Any) -> Account | None:
    """The account of a Stripe customer (reverse index), else gateway_scope/gateway_id."""
    if customer:
        account = await ctx.customers.account_for(customer)
        if account is not None:
            return account
    for metadata in metadatas:
        account = account_from_metadata(metadata)
        if account is not None:
            return account
    return None


def plan_for_price(plans: Mapping[str, Plan], price: str | None) -> tuple[str, str] | None:
    """(plan name, billing cycle) of the rules plan selling `price`."""
    for plan in plans.values():
        for cycle, price_id in plan.stripe_prices.items():
            if price and price_id == price:
                return plan.name, cycle
    return None


def _period_s(sub: Mapping[str, Any], field: str) -> int | None:
    """current_period_start/end: on the subscription (older API versions) or on its
    first item (2025-03-31 and later)."""
    value = sub.get(field)
    if not isinstance(value, int):
        items = _get(sub, "items", "data")
        value = items[0].get(field) if isinstance(items, list) and items else None
    return value if isinstance(value, int) else None


async def _retrieve(make: Callable[[], Awaitable[Any]]) -> dict[str, Any] | None:
    """A Stripe object as a dict; None if Stripe says it does not exist. Other Stripe
    failures propagate (the endpoint answers 500 and Stripe retries)."""
    try:
        obj = await make()
    except stripe.InvalidRequestError as exc:
        if exc.code == "resource_missing":
            return None
        raise
    result: dict[str, Any] = obj.to_dict()
    return result


async def sync_subscription(ctx: Ctx, sub_id: str, account: Account | None = None,
                            fallback: Mapping[str, Any] | None = None, *,
                            advance: bool = False) -> Result:
    """Re-fetch a subscription and record its current state on the account.

    A subscription's first period is recorded whatever the event. A later one only once
    it is paid: with `advance` (invoice.paid for subscription_cycle, a completed
    checkout), or when the subscription's latest invoice, made for the new period, is
    paid (a change of billing cycle starts a period and charges it at once). Quota
    counters are keyed by period, so moving the period is granting the quota; until a
    renewal is paid the account goes on in the period it had (the debit script extends
    it), and if the payment fails the status policy takes over.

    One account, one tracked subscription: a second live one is named on the account
    (`other_subscription`) but does not take over, so the plan never flips between the
    two; it takes over only when the tracked one ends.
    """
    # Only the subscription the event is about was deleted (not one synced on its behalf).
    deleted = (ctx.event_type == "customer.subscription.deleted" and fallback is not None
               and _id(fallback.get("id")) == sub_id)
    sub = await _retrieve(lambda: ctx.stripe.v1.subscriptions.retrieve_async(sub_id))
    if sub is None:
        if not deleted or fallback is None:
            log.warning("stripe webhook: subscription %s does not exist; ignored", sub_id)
            return ignored("subscription not found")
        sub = {**fallback, "status": "canceled"}  # deleted, and gone from Stripe
    if account is None:
        account = await resolve_account(ctx, _id(sub.get("customer")), sub.get("metadata"))
    if account is None:
        log.warning("stripe webhook: subscription %s of unknown customer %s; ignored",
                    sub_id, _id(sub.get("customer")))
        ctx.problem("unknown_customer")
        return ignored("unknown customer")
    items = _get(sub, "items", "data")
    price = _id(_get(items[0], "price")) if isinstance(items, list) and items else None
    rules = ctx.runtime.rules
    found = plan_for_price(rules.plans, price)
    if found is None:
        log.error("stripe webhook: subscription %s has price %s, which no plan in the rules "
                  "sells (plans.*.stripe); account %s:%s left unchanged",
                  sub_id, price, account.scope, account.id)
        ctx.problem("unknown_price")
        return ignored("unknown price")
    plan, cycle = found
    status = str(sub.get("status") or "incomplete")
    if deleted and status not in ENDED:
        status = "canceled"
    config = await ctx.runtime.ledger.config(account)
    if (config.get("source") == "manual"
            and sub_id in config.get("replaced_subscriptions", "").split(",")):
        # An operator's plan replaced this subscription: its events no longer change it.
        log.info("stripe webhook: %s:%s subscription %s (%s) was replaced by a manual plan; "
                 "ignored", account.scope, account.id, sub_id, status)
        return ignored("replaced by a plan an operator set")
    current = config.get("stripe_subscription")
    other = config.get("other_subscription")
    store = ctx.runtime.store
    if current and current != sub_id and (status in ENDED or config.get("status") in LIVE):
        if status in ENDED:
            if other == sub_id:
                await store.call(store.client.hdel(account.config_key, "other_subscription"))
                return ignored("the other subscription ended")
            # An old subscription ending must not cancel the one that replaced it.
            return ignored("superseded subscription")
        if other != sub_id:
            log.error("stripe webhook: %s:%s has two live subscriptions, %s (tracked) and "
                      "%s; cancel one in Stripe", account.scope, account.id, current, sub_id)
            ctx.problem("duplicate_subscription")
            await store.call(store.client.hset(account.config_key, "other_subscription",
                                               sub_id))
        return ignored("another live subscription is tracked")
    if other == sub_id:  # the tracked one had ended: this one takes over
        await store.call(store.client.hdel(account.config_key, "other_subscription"))
        other = None
    start, end = _period_s(sub, "current_period_start"), _period_s(sub, "current_period_end")
    if start is None or end is None:
        raise ValueError(f"subscription {sub_id} has no current period")
    start_ms, end_ms = start * 1000, end * 1000
    kept_start, kept_end = config.get("period_start"), config.get("period_end")
    if (not advance and current == sub_id and kept_start and kept_end
            and int(kept_start) < start_ms and not await _period_paid(ctx, sub, start)):
        start_ms, end_ms = int(kept_start), int(kept_end)  # renewal not paid yet
    past_due_until: int | None = None
    if status == "past_due":
        kept = config.get("past_due_until")
        if current == sub_id and config.get("status") == "past_due" and kept:
            past_due_until = int(kept)  # the grace started when it first became past_due
        else:
            past_due_until = ctx.now_ms() + rules.billing.past_due_grace_s * 1000
    await ctx.runtime.ledger.apply_subscription(
        account, plan=plan, status=status, period_start_ms=start_ms,
        period_end_ms=end_ms, past_due_until_ms=past_due_until,
        cancel_at_period_end=bool(sub.get("cancel_at_period_end")),
        subscription_id=sub_id, billing_cycle=cycle)
    log.info("stripe webhook: %s:%s subscription %s → plan %s, status %s",
             account.scope, account.id, sub_id, plan, status)
    if status in ENDED and other:
        # The tracked subscription ended while another is live: the account goes on
        # with that one.
        return await sync_subscription(ctx, other, account, advance=True)
    return {"received": True, "plan": plan, "status": status}


async def _period_paid(ctx: Ctx, sub: Mapping[str, Any], start_s: int) -> bool:
    """Whether the subscription's latest invoice is paid and was made for the period
    starting at `start_s` (not the invoice of the period before)."""
    latest = sub.get("latest_invoice")
    invoice: Mapping[str, Any] | None
    if isinstance(latest, Mapping):
        invoice = latest
    elif isinstance(latest, str) and latest:
        invoice = await _retrieve(lambda: ctx.stripe.v1.invoices.retrieve_async(latest))
    else:
        return False
    created = invoice.get("created") if invoice else None
    return (invoice is not None and invoice.get("status") == "paid"
            and isinstance(created, int) and created >= start_s - PERIOD_SLACK_S)


async def on_subscription(ctx: Ctx, obj: Mapping[str, Any]) -> Result:
    sub_id = _id(obj.get("id"))
    if sub_id is None:
        return ignored("no subscription id")
    return await sync_subscription(ctx, sub_id, fallback=obj)


async def on_checkout(ctx: Ctx, obj: Mapping[str, Any]) -> Result:
    """A finished checkout: a subscription (link the customer, apply the subscription)
    or a top-up (grant the credits once the payment is in, once per session)."""
    session_id = _id(obj.get("id"))
    if session_id is None:
        return ignored("no session id")
    session = await _retrieve(
        lambda: ctx.stripe.v1.checkout.sessions.retrieve_async(session_id)) or dict(obj)
    metadata = session.get("metadata") or obj.get("metadata")
    kind = _get(metadata, "kind")
    customer = _id(session.get("customer"))
    account = account_from_metadata(metadata) or await resolve_account(ctx, customer)
    if account is None:
        log.warning("stripe webhook: checkout session %s for no known account; ignored",
                    session_id)
        ctx.problem("unknown_customer")
        return ignored("unknown account")
    if kind == "subscription":
        if customer:
            await ctx.customers.link(account, customer)
        store = ctx.runtime.store
        open_ = await store.read(lambda: store.client.hget(account.key("checkout"),
                                                           "session"))
        if open_ is not None and (open_.decode() if isinstance(open_, bytes)
                                  else open_) == session_id:
            await store.call(store.client.delete(account.key("checkout")))
        sub_id = _id(session.get("subscription"))
        if sub_id is None:
            return {"received": True, "pending": True}
        # The first invoice is paid within the checkout.
        return await sync_subscription(ctx, sub_id, account, advance=True)
    if kind == "topup":
        return await _topup(ctx, session_id, session, account, customer)
    return ignored(f"checkout kind {kind!r}")


async def _topup(ctx: Ctx, session_id: str, session: Mapping[str, Any], account: Account,
                 customer: str | None) -> Result:
    if session.get("payment_status") != "paid":
        # Async payment methods (bank debits) complete later with
        # checkout.session.async_payment_succeeded; nothing is granted before.
        log.info("stripe webhook: top-up %s for %s:%s not paid yet (%s)", session_id,
                 account.scope, account.id, session.get("payment_status"))
        return {"received": True, "pending": True}
    try:
        micro = int(str(_get(session, "metadata", "credits_micro_usd")))
    except ValueError:
        micro = 0
    if micro <= 0:
        log.error("stripe webhook: top-up %s has no credits_micro_usd; nothing granted",
                  session_id)
        ctx.problem("bad_topup")
        return ignored("top-up without credits")
    if customer:
        await ctx.customers.link(account, customer)
    # The marker and the balance move in one script (credits.lua): once, and never lost.
    granted, balance = await ctx.runtime.ledger.grant_once(account, session_id, micro)
    if not granted:
        return {"received": True, "duplicate_topup": True}
    log.info("stripe webhook: top-up %s granted %d micro-USD to %s:%s (balance %d)",
             session_id, micro, account.scope, account.id, balance)
    return {"received": True, "credits_micro_usd": micro}


def _invoice_subscription(invoice: Mapping[str, Any]) -> str | None:
    """invoice.subscription (older API versions) or
    invoice.parent.subscription_details.subscription (2025-03-31 and later)."""
    return _id(invoice.get("subscription")) or _id(
        _get(invoice, "parent", "subscription_details", "subscription"))


async def on_invoice_paid(ctx: Ctx, obj: Mapping[str, Any]) -> Result:
    """A paid first or renewal invoice: the new period (and so its quota) applies.
    Quota counters are keyed by period, so applying the period is the grant."""
    reason = obj.get("billing_reason")
    sub_id = _invoice_subscription(obj)
    if reason not in QUOTA_REASONS or sub_id is None:
        return ignored(f"billing_reason {reason}")
    return await sync_subscription(ctx, sub_id, advance=True)


async def on_payment_failed(ctx: Ctx, obj: Mapping[str, Any]) -> Result:
    """Flag the account; access follows the subscription's status (re-fetched)."""
    account = await resolve_account(ctx, _id(obj.get("customer")), obj.get("metadata"),
                                    _get(obj, "subscription_details", "metadata"),
                                    _get(obj, "parent", "subscription_details", "metadata"))
    if account is None:
        ctx.problem("unknown_customer")
        return ignored("unknown customer")
    store = ctx.runtime.store
    await store.call(store.client.hset(account.config_key, "payment_failed_at",
                                       ctx.now_ms()))
    log.warning("stripe webhook: payment failed for %s:%s (invoice %s)", account.scope,
                account.id, obj.get("id"))
    sub_id = _invoice_subscription(obj)
    if sub_id is None:
        return {"received": True, "flagged": True}
    result = await sync_subscription(ctx, sub_id, account)
    return {**result, "flagged": True}


def _cents(value: Any) -> int | None:
    """Stripe's integer minor units (None for anything else)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 \
        else None


async def on_charge_refunded(ctx: Ctx, obj: Mapping[str, Any]) -> Result:
    """Claw back top-up credits by the refunded amount. `amount_refunded` is cumulative:
    the total clawed back per charge is recorded and only the increase is taken."""
    charge_id = _id(obj.get("id"))
    if charge_id is None:
        return ignored("no charge id")
    charge = await _retrieve(
        lambda: ctx.stripe.v1.charges.retrieve_async(charge_id)) or dict(obj)
    metadata: Any = charge.get("metadata") or {}
    if _get(metadata, "kind") != "topup":
        pi_id = _id(charge.get("payment_intent"))
        if pi_id is not None:
            pi = await _retrieve(lambda: ctx.stripe.v1.payment_intents.retrieve_async(pi_id))
            metadata = (pi or {}).get("metadata") or {}
    if _get(metadata, "kind") != "topup":
        return ignored("not a top-up charge")
    account = await resolve_account(ctx, _id(charge.get("customer")), metadata)
    if account is None:
        ctx.problem("unknown_customer")
        return ignored("unknown customer")
    amount, refunded = _cents(charge.get("amount")), _cents(charge.get("amount_refunded"))
    if amount is None or refunded is None:
        log.error("stripe webhook: charge %s has no usable amount/amount_refunded; nothing "
                  "clawed back", charge_id)
        ctx.problem("bad_charge")
        return ignored("charge without amounts")
    try:
        credits = int(str(_get(metadata, "credits_micro_usd")))
    except ValueError:
        credits = 0
    # Credits bought by this charge, in proportion to the refunded share of it.
    target = (credits * refunded // amount if credits > 0 and amount > 0
              else refunded * MICRO_PER_CENT)
    # Atomic per charge (credits.lua): concurrent refund events never claw back twice.
    delta, balance = await ctx.runtime.ledger.claw_back_to(account, charge_id, target)
    if delta <= 0:
        return {"received": True, "clawed_back_micro_usd": 0}
    log.info("stripe webhook: charge %s refunded; clawed back %d micro-USD from %s:%s "
             "(balance %d)", charge_id, delta, account.scope, account.id, balance)
    return {"received": True, "clawed_back_micro_usd": delta}


_notify_tasks: set[asyncio.Task[list[str]]] = set()


async def on_trial_will_end(ctx: Ctx, obj: Mapping[str, Any]) -> Result:
    """Tell the account its trial ends soon: a log line, a counter, and its alert
    channels (webhook, email) if it has any, best effort in the background."""
    account = await resolve_account(ctx, _id(obj.get("customer")), obj.get("metadata"))
    if account is None:
        ctx.problem("unknown_customer")
        return ignored("unknown customer")
    trial_end = obj.get("trial_end")
    log.info("billing notification kind=trial_will_end scope=%s account=%s "
             "subscription=%s trial_end=%s", account.scope, account.id, obj.get("id"),
             trial_end, extra={
        "kind": "trial_will_end", "scope": account.scope, "account": account.id,
        "subscription": obj.get("id"), "trial_end": trial_end})
    ctx.runtime.metrics.billing_notifications.labels("trial_will_end").inc()
    checker = ctx.runtime.alert_checker
    channels = checker.channels(await ctx.runtime.ledger.config(account))
    if not channels:
        return {"received": True, "notified": False,
                "reason": "the account has no alert_webhook or alert_email"}
    ends = (datetime.fromtimestamp(trial_end, tz=UTC).isoformat().replace("+00:00", "Z")
            if isinstance(trial_end, int) else "soon")
    notice = Notice(
        "trial_will_end", f"{account.scope}:{account.id}:trial:{obj.get('id')}",
        f"Your trial ends {ends}", f"The trial of {account.scope} {account.id} "
        f"(subscription {obj.get('id')}) ends {ends}.\n",
        {"kind": "trial_will_end", "scope": account.scope, "id": account.id,
         "subscription": obj.get("id"), "trial_end": trial_end})
    task = asyncio.get_running_loop().create_task(checker.notify(notice, channels))
    _notify_tasks.add(task)
    task.add_done_callback(_notify_tasks.discard)
    return {"received": True, "notified": True, "channels": sorted(channels)}


Handler = Callable[[Ctx, Mapping[str, Any]], Awaitable[Result]]

HANDLERS: dict[str, Handler] = {
    "checkout.session.completed": on_checkout,
    "checkout.session.async_payment_succeeded": on_checkout,
    "checkout.session.async_payment_failed": on_checkout,
    "customer.subscription.created": on_subscription,
    "customer.subscription.updated": on_subscription,
    "customer.subscription.deleted": on_subscription,
    "invoice.paid": on_invoice_paid,
    "invoice.payment_failed": on_payment_failed,
    "charge.refunded": on_charge_refunded,
    "customer.subscription.trial_will_end": on_trial_will_end,
}


async def handle(runtime: Runtime, client: stripe.StripeClient, event: Mapping[str, Any]
                 ) -> Result:
    """Run the handler for one verified event (unknown types: ignored)."""
    event_type = str(event.get("type") or "")
    handler = HANDLERS.get(event_type)
    obj = _get(event, "data", "object")
    if handler is None or not isinstance(obj, Mapping):
        return {"received": True, "ignored": True}
    return await handler(Ctx(runtime, client, event_type), obj)
