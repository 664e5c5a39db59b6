"""Self-service billing on the public listener (SPEC §7): who may do what, for which account.

    POST   /billing/checkout      {plan, billing_cycle?, scope?, email?}  billing role
    POST   /billing/topup         {tier | amount_usd, scope?, email?}     billing role
    POST   /billing/portal        {return_url, scope?}                    billing role
    GET    /billing/subscription  ?scope=                                 any key
    DELETE /billing/subscription  ?scope=                                 billing role
    GET    /billing/invoices      ?scope=                                 any key

The handlers live in `checkout.py` (money in) and `subscription.py` (reads, cancel); this
module holds what they share: the caller's gate, the account a request is about, and
strict JSON bodies. Test keys (`gw_test_…`) never reach Stripe.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import stripe
from starlette.requests import Request
from starlette.routing import Route

from gateway.billing import routes as billing_routes
from gateway.billing.stripe_client import require_stripe
from gateway.caller import Caller
from gateway.errors import GatewayError
from gateway.jsonbody import json_object
from gateway.metering.accounts import Account
from gateway.methods import route
from gateway.runtime import Runtime


@dataclass(frozen=True, slots=True)
class Context:
    """One billing request: the process's runtime and Stripe client, and the caller."""

    runtime: Runtime
    stripe: stripe.StripeClient
    caller: Caller


def context(request: Request, *, write: bool) -> Context:
    """The gate: billing configured (503), a caller (401), and for writes the billing
    role (403) and a live key (403: test keys never reach Stripe)."""
    runtime: Runtime = request.app.state.runtime
    client = require_stripe(runtime.stripe)
    caller = billing_routes.caller_of(request)
    if write:
        billing_routes.require_billing_role(caller)
        if caller.test:
            raise GatewayError("FORBIDDEN", "test keys (gw_test_…) never reach Stripe: use a "
                               "live key with the billing role for checkout, top-up, portal "
                               "and cancel")
    return Context(runtime, client, caller)


def account_of(caller: Caller, scope: object) -> Account:
    """`user` (default): the caller's own account; `workspace`: the caller's workspace."""
    if scope is None or scope == "user":
        return Account("user", caller.user)
    if scope == "workspace":
        if not caller.workspace:
            raise GatewayError("BAD_REQUEST", "scope workspace needs a key that belongs to a "
                               "workspace; this one does not")
        return Account("workspace", caller.workspace)
    raise GatewayError("BAD_REQUEST", f"scope must be user or workspace, not {scope!r}")


def query_account(request: Request, caller: Caller,
                  allowed: Collection[str] = ("scope",)) -> Account:
    unknown = set(request.query_params) - set(allowed)
    if unknown:
        raise GatewayError("BAD_REQUEST", f"unknown query parameter(s): "
                           f"{', '.join(sorted(unknown))} (allowed: "
                           f"{', '.join(sorted(allowed))})")
    return account_of(caller, request.query_params.get("scope"))


# JSON types a field may have. Numbers arrive as int or Decimal (never float).
Kinds = Mapping[str, tuple[type, ...]]
TEXT: tuple[type, ...] = (str,)
AMOUNT: tuple[type, ...] = (int, Decimal, str)


async def json_body(request: Request, kinds: Kinds,
                    required: Collection[str] = ()) -> dict[str, Any]:
    """A JSON object with only the known fields, each of its kind (else 400 BAD_REQUEST).

    An empty body is `{}`. Decimals are parsed exactly, so money never becomes a float.
    """
    body = await json_object(request, kinds, exact_numbers=True, empty_ok=True)
    for name, value in body.items():
        if isinstance(value, bool) or not isinstance(value, kinds[name]):
            names = dict.fromkeys(_KIND_NAMES[k] for k in kinds[name])  # once each, in order
            raise GatewayError("BAD_REQUEST", f"{name} must be " + " or ".join(names))
    missing = [name for name in required if name not in body]
    if missing:
        raise GatewayError("BAD_REQUEST", f"missing field(s): {', '.join(missing)}")
    return body


_KIND_NAMES = {str: "a string", int: "a number", Decimal: "a number", bool: "true or false"}


def idempotency_key(request: Request, action: str, account: Account) -> str | None:
    """A client's `Idempotency-Key` header, scoped to the action and account, so a
    retried request reuses the first Stripe object instead of creating a second one.
    Without it the SDK still makes its own retries idempotent."""
    given = request.headers.get("idempotency-key")
    if given is None:
        return None
    if not 1 <= len(given) <= 100 or not given.isprintable():
        raise GatewayError("BAD_REQUEST", "Idempotency-Key must be 1-100 printable characters")
    return f"gw-{action}-{account.scope}-{account.id}-{given}"


def routes() -> list[Route]:
    # Imported here: the handler modules build on this one.
    from gateway.billing.checkout import create_checkout, create_portal, create_topup
    from gateway.billing.subscription import (
        cancel_subscription,
        list_invoices,
        read_subscription,
    )

    return [
        Route("/billing/checkout", create_checkout, methods=["POST"]),
        Route("/billing/topup", create_topup, methods=["POST"]),
        Route("/billing/portal", create_portal, methods=["POST"]),
        route("/billing/subscription", {"GET": read_subscription,
                                        "DELETE": cancel_subscription}),
        Route("/billing/invoices", list_invoices, methods=["GET"]),
    ]
