"""The one Stripe client of a process, and the boundary where Stripe's errors end.

`STRIPE_API_BASE` / `STRIPE_METER_EVENTS_BASE` point the SDK elsewhere (`base_addresses`):
at a local fake in tests, or through an operator's egress proxy.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import stripe
from stripe._base_address import BaseAddresses

from gateway.config import Settings
from gateway.errors import GatewayError

# The SDK waits 80 s per attempt by default: a Stripe that accepts connections but never
# answers kept a top-up (and a webhook) waiting four minutes. Two attempts of at most
# STRIPE_TIMEOUT_S each bound every call to about 20 s.
STRIPE_TIMEOUT_S = 8.0
STRIPE_CONNECT_TIMEOUT_S = 3.0
STRIPE_RETRIES = 1


def build_stripe_client(settings: Settings) -> stripe.StripeClient | None:
    """The process's Stripe client, or None when billing is not configured."""
    if not settings.stripe_api_key:
        return None
    bases: BaseAddresses = {}
    if settings.stripe_api_base:
        bases["api"] = settings.stripe_api_base
    if settings.stripe_meter_events_base:
        bases["meter_events"] = settings.stripe_meter_events_base
    return stripe.StripeClient(
        settings.stripe_api_key,
        base_addresses=bases,
        # Async requests go through httpx (the SDK's async client); retries are the SDK's
        # own, with idempotency keys, so a retried create never happens twice.
        http_client=stripe.HTTPXClient(
            timeout=httpx.Timeout(STRIPE_TIMEOUT_S, connect=STRIPE_CONNECT_TIMEOUT_S)),
        max_network_retries=STRIPE_RETRIES,
    )


def require_stripe(client: stripe.StripeClient | None) -> stripe.StripeClient:
    if client is None:
        raise GatewayError("BILLING_DISABLED",
                           "billing is not configured on this gateway (STRIPE_API_KEY)")
    return client


def is_outage(exc: stripe.StripeError) -> bool:
    """Stripe unreachable, overloaded or failing (retry later), as opposed to Stripe
    refusing the request (a 4xx: retrying the same request gets the same answer)."""
    if isinstance(exc, (stripe.APIConnectionError, stripe.RateLimitError)):
        return True
    status = getattr(exc, "http_status", None)
    return status is None or status >= 500


@contextmanager
def stripe_errors() -> Iterator[None]:
    """Translate Stripe failures: an outage is 502 STRIPE_UNAVAILABLE with a retry hint, a
    refusal 502 STRIPE_REJECTED with Stripe's reason (no hint: a retry would not help)."""
    try:
        yield
    except stripe.StripeError as exc:
        status = getattr(exc, "http_status", None)
        if not is_outage(exc):
            reason = getattr(exc, "user_message", None) or str(exc) or type(exc).__name__
            raise GatewayError(
                "STRIPE_REJECTED", f"Stripe refused the request (HTTP {status}): {reason}; "
                "nothing was changed", stripe_code=getattr(exc, "code", None)) from exc
        raise GatewayError(
            "STRIPE_UNAVAILABLE",
            f"Stripe did not complete the request ({type(exc).__name__}"
            f"{f', HTTP {status}' if status else ''}); nothing was changed, retry later",
            headers={"Retry-After": "5"}, retry_after=5) from exc
