"""Times as the gateway shows them: RFC 3339 in UTC with a Z ("2026-12-01T00:00:00Z")."""

from __future__ import annotations

from datetime import UTC, datetime


def iso_s(seconds: float) -> str:
    """Seconds since the epoch (Stripe's timestamps)."""
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat().replace("+00:00", "Z")


def iso_ms(ms: int) -> str:
    """Milliseconds since the epoch (the store's times)."""
    return iso_s(ms / 1000)
