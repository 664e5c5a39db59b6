"""Fake Stripe Billing Meter events (see tests/fakes/stripe_server.py).

`POST /v1/billing/meter_events` stores the event (kind "billing.meter_event", keyed by its
identifier). An identifier seen within the last 24 hours is refused the way Stripe refuses
it: HTTP 400 invalid_request_error "An event already exists with identifier …" (here also
with code `resource_already_exists`), and nothing is stored. `fake.meter_events()` lists
the stored events in arrival order.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.stripe_server import FakeStripe, form_of, stripe_error

KIND = "billing.meter_event"
DEDUP_S = 24 * 3600


def meter_events(fake: FakeStripe) -> list[dict[str, Any]]:
    return fake.all(KIND)


def routes(fake: FakeStripe) -> list[Route]:
    async def create(request: Request) -> Response:
        form = form_of(request)
        name = form.get("event_name")
        payload = form.get("payload")
        if not name:
            return stripe_error(400, "Missing required param: event_name.",
                                code="parameter_missing")
        if not isinstance(payload, dict) or "stripe_customer_id" not in payload \
                or "value" not in payload:
            return stripe_error(400, "payload must contain stripe_customer_id and value",
                                code="parameter_missing")
        if fake.get("customer", payload["stripe_customer_id"]) is None:
            # Stripe checks the customer asynchronously; the fake is stricter on purpose.
            return stripe_error(400, f"No such customer: '{payload['stripe_customer_id']}'",
                                code="resource_missing")
        now = fake.now()
        ident = form.get("identifier") or fake.new_id("mev")
        prior = fake.get(KIND, ident)
        if prior is not None and now - prior["created"] < DEDUP_S:
            return stripe_error(400, f"An event already exists with identifier {ident}.",
                                code="resource_already_exists")
        event = fake.put(KIND, {
            "id": ident, "object": KIND, "event_name": name, "identifier": ident,
            "payload": payload, "timestamp": int(form.get("timestamp") or now),
            "created": now, "livemode": False})
        return JSONResponse({k: v for k, v in event.items() if k != "id"})

    return [Route("/v1/billing/meter_events", create, methods=["POST"])]
