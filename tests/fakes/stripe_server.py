"""A local fake of the Stripe API over real HTTP, stateful enough for the billing flows.

The SDK is pointed at it with `base_addresses` (STRIPE_API_BASE /
STRIPE_METER_EVENTS_BASE). Resources live in sibling modules (`stripe_*.py`), each
contributing routes; this module holds the shared state and the wire format:
form-encoded requests (`a[b][0]=c`), JSON responses, Stripe-shaped errors.

Failure knobs: `fake.fail_next(n, status=500)` makes the next n requests fail;
`fake.down = True` refuses everything with 503 (an outage); `fake.hang_s = 5` makes every
request wait that long before it is answered (a Stripe that accepts but does not answer).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

API_KEY = "sk_test_fake_gateway_tests"
WEBHOOK_SECRET = "whsec_fake_gateway_tests"


def parse_form(body: bytes) -> dict[str, Any]:
    """Stripe's bracketed form encoding into nested dicts/lists."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(body.decode(), keep_blank_values=True):
        parts = key.replace("]", "").split("[")
        node: Any = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            nxt_is_index = not last and parts[i + 1].isdigit()
            if isinstance(node, list):
                idx = int(part)
                while len(node) <= idx:
                    node.append({} if not last else None)
                if last:
                    node[idx] = value
                else:
                    if not isinstance(node[idx], (dict, list)):
                        node[idx] = [] if nxt_is_index else {}
                    node = node[idx]
            else:
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, [] if nxt_is_index else {})
    return root


def stripe_error(status: int, message: str, code: str | None = None,
                 type_: str = "invalid_request_error", param: str | None = None
                 ) -> JSONResponse:
    error: dict[str, Any] = {"type": type_, "message": message}
    if code:
        error["code"] = code
    if param:
        error["param"] = param
    return JSONResponse({"error": error}, status_code=status)


@dataclass
class FakeStripe:
    """All objects, by kind then id; `requests` logs (method, path, form) in order."""

    objects: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    down: bool = False
    hang_s: float = 0.0
    _failures: list[int] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    url: str = ""
    now: Callable[[], int] = field(default=lambda: int(time.time()))

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_fake{next(self._ids):06d}"

    def put(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        self.objects.setdefault(kind, {})[obj["id"]] = obj
        return obj

    def get(self, kind: str, obj_id: str) -> dict[str, Any] | None:
        return self.objects.get(kind, {}).get(obj_id)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return list(self.objects.get(kind, {}).values())

    def fail_next(self, n: int = 1, status: int = 500) -> None:
        self._failures.extend([status] * n)

    def calls(self, method: str, path_prefix: str) -> list[dict[str, Any]]:
        return [form for m, p, form in self.requests if m == method and p.startswith(path_prefix)]


def build_app(fake: FakeStripe) -> Starlette:
    from tests.fakes import stripe_billing, stripe_checkout, stripe_customers

    routes: list[Route] = [
        *stripe_customers.routes(fake), *stripe_checkout.routes(fake),
        *stripe_billing.routes(fake), *_retrieve_routes(fake),
    ]
    async def gatekeeper(request: Request, call_next: Any) -> Response:
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return stripe_error(401, "Invalid API Key provided", type_="authentication_error")
        body = await request.body()
        form = parse_form(body) if body else dict(request.query_params)
        request.state.form = form
        fake.requests.append((request.method, request.url.path, form))
        if fake.hang_s:
            await asyncio.sleep(fake.hang_s)
        if fake.down:
            return stripe_error(503, "Stripe is down (fake outage)", type_="api_error")
        if fake._failures:
            status = fake._failures.pop(0)
            if status == 429:
                return stripe_error(429, "Too many requests", code="rate_limit",
                                    type_="rate_limit_error")
            return stripe_error(status, "fake failure", type_="api_error")
        response: Response = await call_next(request)
        return response

    return Starlette(routes=routes,
                     middleware=[Middleware(BaseHTTPMiddleware, dispatch=gatekeeper)])


# GET /v1/<plural>/{id} for objects tests or other fake modules put into the state.
RETRIEVABLE = {"subscriptions": "subscription", "invoices": "invoice", "charges": "charge",
               "payment_intents": "payment_intent", "checkout/sessions": "checkout.session",
               "prices": "price", "events": "event"}


def _retrieve_routes(fake: FakeStripe) -> list[Route]:
    def make(kind: str) -> Callable[[Request], Any]:
        async def retrieve(request: Request) -> Response:
            obj = fake.get(kind, request.path_params["id"])
            if obj is None:
                return stripe_error(404, f"No such {kind}: '{request.path_params['id']}'",
                                    code="resource_missing")
            return JSONResponse(obj)
        return retrieve

    return [Route(f"/v1/{plural}/{{id}}", make(kind), methods=["GET"])
            for plural, kind in RETRIEVABLE.items()]


def form_of(request: Request) -> dict[str, Any]:
    form: dict[str, Any] = request.state.form
    return form


@asynccontextmanager
async def running_fake_stripe() -> AsyncIterator[FakeStripe]:
    fake = FakeStripe()
    server = uvicorn.Server(uvicorn.Config(build_app(fake), host="127.0.0.1", port=0,
                                           lifespan="off", access_log=False, log_config=None))
    task = asyncio.create_task(server._serve())
    while not server.started:
        if task.done():
            raise RuntimeError("the fake Stripe server did not start")
        await asyncio.sleep(0.01)
    fake.url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    try:
        yield fake
    finally:
        server.should_exit = True
        await task


def stripe_settings(fake: FakeStripe) -> dict[str, object]:
    """Overrides for `running_gateway` that point the gateway's SDK at the fake."""
    return {"stripe_api_key": API_KEY, "stripe_webhook_secret": WEBHOOK_SECRET,
            "stripe_api_base": fake.url, "stripe_meter_events_base": fake.url}
