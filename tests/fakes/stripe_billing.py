"""Fake Stripe resources (see tests/fakes/stripe_server.py)."""

from __future__ import annotations

from starlette.routing import Route

from tests.fakes.stripe_server import FakeStripe


def routes(fake: FakeStripe) -> list[Route]:
    return []
