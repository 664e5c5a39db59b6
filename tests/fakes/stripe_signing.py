"""Sign webhook payloads locally, the way Stripe does, with the SDK's own code.

`stripe.WebhookSignature.generate_signature_header` computes `t=<ts>,v1=<hmac>` with
`WebhookSignature._compute_signature` (HMAC-SHA256 of "<ts>.<payload>"), the same
function the gateway's verifier uses.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

import stripe

from tests.fakes.stripe_server import WEBHOOK_SECRET

_ids = itertools.count(1)


def sign(payload: str, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    """The Stripe-Signature header for `payload` (default: signed now)."""
    header: str = stripe.WebhookSignature.generate_signature_header(
        payload, secret, timestamp=int(time.time()) if timestamp is None else timestamp)
    return header


def event(event_type: str, obj: dict[str, Any], event_id: str | None = None,
          created: int | None = None) -> dict[str, Any]:
    """A Stripe event envelope around `obj` (API version 2025-03-31.basil)."""
    return {
        "id": event_id or f"evt_test{next(_ids):08d}",
        "object": "event",
        "api_version": "2025-03-31.basil",
        "created": created or int(time.time()),
        "type": event_type,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "data": {"object": obj},
    }


def signed(evt: dict[str, Any], secret: str = WEBHOOK_SECRET,
           timestamp: int | None = None) -> tuple[bytes, dict[str, str]]:
    """(raw body, headers) for POSTing `evt` to /billing/webhook."""
    payload = json.dumps(evt)
    return payload.encode(), {"Stripe-Signature": sign(payload, secret, timestamp),
                              "Content-Type": "application/json"}


def subscription(sub_id: str, customer: str, price: str, *, status: str = "active",
                 start: int, end: int, on_items: bool = False,
                 metadata: dict[str, str] | None = None,
                 cancel_at_period_end: bool = False) -> dict[str, Any]:
    """A subscription object; the period on the subscription (older API versions) or on
    its first item (`on_items`, 2025-03-31 and later)."""
    item: dict[str, Any] = {"id": f"si_{sub_id}", "object": "subscription_item",
                            "price": {"id": price, "object": "price"}, "quantity": 1}
    sub: dict[str, Any] = {
        "id": sub_id, "object": "subscription", "customer": customer, "status": status,
        "cancel_at_period_end": cancel_at_period_end, "metadata": metadata or {},
        "items": {"object": "list", "data": [item]},
    }
    target = item if on_items else sub
    target["current_period_start"] = start
    target["current_period_end"] = end
    return sub
