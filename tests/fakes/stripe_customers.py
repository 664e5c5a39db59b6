"""Fake Stripe customers (see tests/fakes/stripe_server.py)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.stripe_server import FakeStripe, form_of, stripe_error


def routes(fake: FakeStripe) -> list[Route]:
    async def create(request: Request) -> Response:
        form = form_of(request)
        customer = fake.put("customer", {
            "id": fake.new_id("cus"), "object": "customer", "email": form.get("email"),
            "metadata": form.get("metadata", {}), "created": fake.now()})
        return JSONResponse(customer)

    async def retrieve(request: Request) -> Response:
        customer = fake.get("customer", request.path_params["id"])
        if customer is None:
            return stripe_error(404, "No such customer", code="resource_missing")
        return JSONResponse(customer)

    return [Route("/v1/customers", create, methods=["POST"]),
            Route("/v1/customers/{id}", retrieve, methods=["GET"])]
