"""The gateway's errors, and how they reach a client.

Every failure a client can see is a `GatewayError` carrying one code from the catalogue
below; it renders as `application/problem+json` (RFC 9457). Foreign exceptions (httpx,
redis, stripe) are translated into these at the boundary where they occur, so no
traceback ever reaches a client.

    GatewayError
    ├── (catalogue codes: UNAUTHENTICATED, KEY_REVOKED, FORBIDDEN, NO_ROUTE, BAD_PATH, …)
    └── StoreUnavailable          STORE_UNAVAILABLE — Redis did not answer in time

`RulesError` (in gateway.rules) is separate: it is an operator's error at load time,
never a client's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.responses import Response

PROBLEM_TYPE_BASE = "https://gateway.dev/problems/"

# code -> (HTTP status, title). The codes are the contract of SPEC §6.
CATALOGUE: dict[str, tuple[int, str]] = {
    "UNAUTHENTICATED": (401, "Missing or unknown API key"),
    "KEY_REVOKED": (401, "API key revoked"),
    "FORBIDDEN": (403, "Forbidden"),
    "NOT_FOUND": (404, "Not found"),
    "NO_ROUTE": (404, "No route for this path"),
    "METHOD_NOT_ALLOWED": (405, "Method not allowed"),
    "BAD_PATH": (400, "Ambiguous or invalid request path"),
    "BAD_REQUEST": (400, "Bad request"),
    "CONFLICT": (409, "Conflict"),
    "EVENT_IN_PROGRESS": (409, "Webhook event being processed"),
    "REQUEST_ID_REUSED": (409, "Request id already used for another request"),
    "RATE_LIMITED": (429, "Too many requests"),
    "QUOTA_EXHAUSTED": (402, "Quota exhausted"),
    "INSUFFICIENT_CREDITS": (402, "Insufficient credits"),
    "BUDGET_HARD_CAP_HIT": (402, "Monthly budget cap reached"),
    "SUBSCRIPTION_INACTIVE": (402, "Subscription inactive"),
    "COST_EXCEEDS_LIMIT": (402, "Request cost exceeds any limit"),
    "PAYLOAD_TOO_LARGE": (413, "Payload too large"),
    "UNSUPPORTED_TRANSFER_CODING": (501, "Transfer coding not supported"),
    "UPGRADE_NOT_SUPPORTED": (501, "Protocol upgrade not supported"),
    "UPSTREAM_UNAVAILABLE": (502, "Upstream unavailable"),
    "UPSTREAM_TIMEOUT": (504, "Upstream timed out"),
    "STORE_UNAVAILABLE": (503, "Store unavailable"),
    "BILLING_DISABLED": (503, "Billing is not configured"),
    "PAYMENT_REQUIRED": (402, "Payment required"),
    "INVALID_PLAN": (400, "Invalid plan"),
    "RETURN_URL_NOT_ALLOWED": (400, "return_url not in allow-list"),
    "STRIPE_UNAVAILABLE": (502, "Stripe unavailable"),
    "STRIPE_REJECTED": (502, "Stripe refused the request"),
    "INVALID_SIGNATURE": (400, "Invalid webhook signature"),
    "RULES_INVALID": (422, "Rules file invalid"),
    "INTERNAL": (500, "Internal error"),
}


class GatewayError(Exception):
    """An error with a catalogue code, rendered to the client as problem+json."""

    def __init__(
        self,
        code: str,
        detail: str = "",
        *,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        default_status, title = CATALOGUE[code]
        self.code = code
        self.status = status if status is not None else default_status
        self.title = title
        self.detail = detail or title
        self.headers = dict(headers or {})
        self.extra = extra
        super().__init__(f"{code}: {self.detail}")

    def body(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": PROBLEM_TYPE_BASE + self.code.lower().replace("_", "-"),
            "title": self.title,
            "status": self.status,
            "code": self.code,
            "detail": self.detail,
        }
        doc.update({k: v for k, v in self.extra.items() if v is not None})
        return doc


class StoreUnavailable(GatewayError):
    """Redis failed or missed its deadline."""

    def __init__(self, detail: str = "the store did not answer in time") -> None:
        super().__init__("STORE_UNAVAILABLE", detail)


def problem_bytes(err: GatewayError) -> bytes:
    return orjson.dumps(err.body())


def problem_response(err: GatewayError) -> Response:
    return Response(
        problem_bytes(err),
        status_code=err.status,
        media_type="application/problem+json",
        headers=err.headers,
    )
