"""Fake Stripe Checkout, customer portal, subscription updates and invoice lists.

See tests/fakes/stripe_server.py for the shared state and wire format. Retrieving a
checkout session, subscription or invoice by id is the core's generic GET route.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.stripe_server import FakeStripe, form_of, stripe_error

CHECKOUT_URL = "https://checkout.stripe.test/c/pay/"
PORTAL_URL = "https://billing.stripe.test/p/session/"


def _bool(value: object) -> bool:
    return str(value).lower() == "true"


def _missing_customer(fake: FakeStripe, customer: object) -> Response | None:
    if customer and fake.get("customer", str(customer)) is None:
        return stripe_error(400, f"No such customer: '{customer}'", code="resource_missing",
                            param="customer")
    return None


def routes(fake: FakeStripe) -> list[Route]:
    # Like Stripe: a create repeated with the same Idempotency-Key returns the first
    # object instead of a second one.
    replays: dict[str, str] = {}

    async def create_checkout_session(request: Request) -> Response:
        form = form_of(request)
        idem = request.headers.get("idempotency-key")
        if idem and idem in replays:
            return JSONResponse(fake.get("checkout.session", replays[idem]))
        if (problem := _missing_customer(fake, form.get("customer"))) is not None:
            return problem
        mode = form.get("mode")
        if mode not in ("payment", "subscription", "setup"):
            return stripe_error(400, "Missing required param: mode.", code="parameter_missing")
        line_items: list[dict[str, Any]] = form.get("line_items", [])
        if mode != "setup" and not line_items:
            return stripe_error(400, "line_items is required", code="parameter_missing")
        amount_total = 0
        for item in line_items:
            data = item.get("price_data") or {}
            amount_total += int(data.get("unit_amount", 0)) * int(item.get("quantity", 1))
        session_id = fake.new_id("cs_test")
        session = fake.put("checkout.session", {
            "id": session_id, "object": "checkout.session", "mode": mode,
            "url": CHECKOUT_URL + session_id, "status": "open", "payment_status": "unpaid",
            "customer": form.get("customer"), "metadata": form.get("metadata", {}),
            "line_items": line_items, "success_url": form.get("success_url"),
            "cancel_url": form.get("cancel_url"),
            "subscription_data": form.get("subscription_data"),
            "payment_intent_data": form.get("payment_intent_data"),
            "client_reference_id": form.get("client_reference_id"),
            "amount_total": amount_total or None, "currency": "usd",
            "subscription": None, "payment_intent": None, "created": fake.now(),
            "expires_at": int(form.get("expires_at") or fake.now() + 86_400),
            "livemode": False})
        if idem:
            replays[idem] = session_id
        return JSONResponse(session)

    async def expire_checkout_session(request: Request) -> Response:
        session = fake.get("checkout.session", request.path_params["id"])
        if session is None:
            return stripe_error(404, f"No such checkout.session: "
                                f"'{request.path_params['id']}'", code="resource_missing")
        if session["status"] != "open":
            return stripe_error(400, "Only Checkout Sessions with a status of `open` can be "
                                "expired.", code="checkout_session_not_open")
        session["status"] = "expired"
        return JSONResponse(session)

    async def create_portal_session(request: Request) -> Response:
        form = form_of(request)
        customer = form.get("customer")
        if not customer:
            return stripe_error(400, "Missing required param: customer.",
                                code="parameter_missing")
        if (problem := _missing_customer(fake, customer)) is not None:
            return problem
        session_id = fake.new_id("bps")
        session = fake.put("billing_portal.session", {
            "id": session_id, "object": "billing_portal.session", "customer": customer,
            "return_url": form.get("return_url"), "url": PORTAL_URL + session_id,
            "created": fake.now(), "livemode": False})
        return JSONResponse(session)

    async def update_subscription(request: Request) -> Response:
        sub_id = request.path_params["id"]
        sub = fake.get("subscription", sub_id)
        if sub is None:
            return stripe_error(404, f"No such subscription: '{sub_id}'",
                                code="resource_missing")
        form = form_of(request)
        if sub.get("status") in ("canceled", "incomplete_expired"):
            return stripe_error(400, "A canceled subscription can only update its "
                                "cancellation_details and metadata.")
        for key, value in form.items():
            if key == "metadata":
                sub.setdefault("metadata", {}).update(value)
            elif key == "cancel_at_period_end":
                sub["cancel_at_period_end"] = _bool(value)
                end = sub.get("current_period_end") or next(
                    (i.get("current_period_end") for i in
                     sub.get("items", {}).get("data", [])), None)
                sub["cancel_at"] = end if sub["cancel_at_period_end"] else None
            elif key not in ("expand",):
                sub[key] = value
        return JSONResponse(sub)

    async def list_invoices(request: Request) -> Response:
        form = form_of(request)
        invoices = [i for i in fake.all("invoice")
                    if (not form.get("customer") or i.get("customer") == form["customer"])
                    and (not form.get("status") or i.get("status") == form["status"])]
        invoices.sort(key=lambda i: (i.get("created", 0), i["id"]), reverse=True)
        if form.get("starting_after"):
            ids = [i["id"] for i in invoices]
            if form["starting_after"] not in ids:
                return stripe_error(400, f"No such invoice: '{form['starting_after']}'",
                                    code="resource_missing", param="starting_after")
            invoices = invoices[ids.index(form["starting_after"]) + 1:]
        limit = int(form.get("limit", 10))
        return JSONResponse({"object": "list", "url": "/v1/invoices",
                             "data": invoices[:limit], "has_more": len(invoices) > limit})

    return [
        Route("/v1/checkout/sessions", create_checkout_session, methods=["POST"]),
        Route("/v1/checkout/sessions/{id}/expire", expire_checkout_session,
              methods=["POST"]),
        Route("/v1/billing_portal/sessions", create_portal_session, methods=["POST"]),
        Route("/v1/subscriptions/{id}", update_subscription, methods=["POST"]),
        Route("/v1/invoices", list_invoices, methods=["GET"]),
    ]
