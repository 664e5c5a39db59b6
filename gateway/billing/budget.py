"""Billing endpoints (being built): see gateway/billing/routes.py."""

from __future__ import annotations

from starlette.routing import Route


def routes() -> list[Route]:
    return []
