"""POST /billing/webhook: Stripe's events, verified and processed exactly once.

- The Stripe-Signature header is checked on the raw body with the SDK's own verifier;
  timestamps older than 300 s are refused (a captured delivery cannot be replayed).
  Failures answer 400 INVALID_SIGNATURE; without STRIPE_WEBHOOK_SECRET (or
  STRIPE_API_KEY) the endpoint answers 503 BILLING_DISABLED.
- Exactly once by event id: the marker `gw:stripe:event:<id>` is claimed as `processing`
  for a lease (LEASE_S) before the handler runs and becomes `done` (kept 7 days, longer
  than Stripe retries) after it. A delivery of a `done` event answers 200
  {"received": true, "duplicate": true}. A delivery that finds the event `processing`
  (Stripe sending it twice at once) waits up to WAIT_S for the first to finish: then it
  is a duplicate if that succeeded, or runs the handler itself if it failed; still
  running after WAIT_S, it answers 409 EVENT_IN_PROGRESS and Stripe delivers it again
  later. When the handler fails the marker is deleted and the answer is 500, so Stripe
  delivers the event again; a process that dies mid-handler leaves a claim that expires
  with its lease, so the event is never lost to a crash.
- The handlers (`events.py`) re-fetch state from Stripe, so order does not matter.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import stripe
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.billing import events
from gateway.billing.stripe_client import is_outage
from gateway.errors import GatewayError
from gateway.jsonbody import read_body
from gateway.runtime import Runtime
from gateway.store import Store

log = logging.getLogger("gateway.billing.webhook")

PATH = "/billing/webhook"
TOLERANCE_S = 300
EVENT_PREFIX = "gw:stripe:event:"
MARKER_TTL_S = 7 * 24 * 3600  # longer than Stripe retries a delivery (3 days)
LEASE_S = 300                 # handlers re-fetch from Stripe (SDK retries included)
WAIT_S = 10.0
POLL_S = 0.05
MAX_BODY = 1024 * 1024


def verify(body: bytes, header: str | None, secret: str) -> dict[str, Any]:
    """The event in a correctly signed, recent body; GatewayError INVALID_SIGNATURE else."""
    try:
        stripe.WebhookSignature.verify_header(body, header, secret, TOLERANCE_S)
    except (stripe.SignatureVerificationError, UnicodeDecodeError) as exc:
        raise GatewayError("INVALID_SIGNATURE", f"Stripe-Signature check failed: "
                           f"{getattr(exc, 'user_message', None) or exc}") from None
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise GatewayError("BAD_REQUEST", "the webhook body is not JSON") from None
    if not isinstance(event, dict) or not isinstance(event.get("id"), str) \
            or not event["id"] or not isinstance(event.get("type"), str):
        raise GatewayError("BAD_REQUEST", "the webhook body is not a Stripe event "
                           "(id and type)")
    return event


async def receive(request: Request) -> JSONResponse:
    runtime: Runtime = request.app.state.runtime
    secret = runtime.settings.stripe_webhook_secret
    client = runtime.stripe
    if not secret or client is None:
        raise GatewayError("BILLING_DISABLED", "Stripe webhooks are not configured on this "
                           "gateway (STRIPE_WEBHOOK_SECRET and STRIPE_API_KEY)")
    body = await read_body(request, MAX_BODY)  # a Stripe event is never this large
    event = verify(body, request.headers.get("stripe-signature"), secret)
    event_id, event_type = event["id"], event["type"]
    metrics = runtime.metrics.billing_webhooks
    label = event_type if event_type in events.HANDLERS else "other"
    store = runtime.store
    marker = EVENT_PREFIX + event_id
    state = await _claim(store, marker)
    if state == "done":
        metrics.labels(label, "duplicate").inc()
        return JSONResponse({"received": True, "duplicate": True})
    if state is not None:
        metrics.labels(label, "in_progress").inc()
        raise GatewayError("EVENT_IN_PROGRESS", f"event {event_id} is being processed by "
                           "another delivery; retry", headers={"Retry-After": "30"},
                           retry_after=30)
    try:
        result = await events.handle(runtime, client, event)
    except Exception as exc:
        log.exception("stripe webhook %s (%s) failed; Stripe will retry it",
                      event_id, event_type)
        metrics.labels(label, "failed").inc()
        await _forget(store, marker)
        code = ("INTERNAL" if not isinstance(exc, stripe.StripeError) else
                "STRIPE_UNAVAILABLE" if is_outage(exc) else "STRIPE_REJECTED")
        # (Stripe retries on any failure status: 502 for Stripe's own, as SPEC §6 says.)
        raise GatewayError(code, f"event {event_id} was not processed; retry") from exc
    except BaseException:
        # Cancelled (the sender went away): leave no marker, so a redelivery runs.
        await _forget(store, marker)
        raise
    await store.call(store.client.set(marker, "done", xx=True, ex=MARKER_TTL_S))
    metrics.labels(label, "ignored" if result.get("ignored") else "processed").inc()
    return JSONResponse(result)


async def _claim(store: Store, marker: str) -> str | None:
    """None when this delivery now owns the event; else "done", or "processing" when
    another delivery still holds it after WAIT_S."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    client = store.client
    while True:
        # SET NX is the claim (two deliveries never both win it); GET only reads whose
        # it is, and finding nothing means it was just given back: claim again.
        if await store.call(client.set(marker, "processing", nx=True, ex=LEASE_S)):
            return None
        state = await store.read(lambda: client.get(marker))
        if state is None:
            continue
        text = state.decode() if isinstance(state, bytes) else str(state)
        if text == "done" or loop.time() >= deadline:
            return text
        await asyncio.sleep(POLL_S)


async def _forget(store: Store, marker: str) -> None:
    """Delete an event's marker so Stripe's next delivery of it is processed."""
    try:
        await store.call(store.client.delete(marker))
    except GatewayError:
        log.error("could not clear %s; that event is processed again only after the "
                  "marker expires", marker)


def routes() -> list[Route]:
    return [Route(PATH, receive, methods=["POST"])]
