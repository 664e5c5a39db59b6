"""The gateway's Stripe client against the local fake, over real HTTP."""

from __future__ import annotations

import pytest

from gateway.billing.stripe_client import build_stripe_client, require_stripe, stripe_errors
from gateway.config import Settings
from gateway.errors import GatewayError
from tests.fakes.stripe_server import running_fake_stripe, stripe_settings


async def test_the_sdk_reaches_the_fake_and_errors_become_502() -> None:
    async with running_fake_stripe() as fake:
        client = require_stripe(build_stripe_client(Settings(**stripe_settings(fake))))  # type: ignore[arg-type]
        customer = await client.v1.customers.create_async(
            params={"email": "a@example.com", "metadata": {"scope": "user", "id": "alice"}})
        assert customer.id.startswith("cus_")
        assert fake.get("customer", customer.id)["metadata"] == {"scope": "user", "id": "alice"}
        fake.down = True
        with pytest.raises(GatewayError) as err, stripe_errors():
            await client.v1.customers.retrieve_async(customer.id)
        assert (err.value.code, err.value.status) == ("STRIPE_UNAVAILABLE", 502)
        assert err.value.headers["Retry-After"] == "5"


def test_without_a_key_billing_is_disabled() -> None:
    assert build_stripe_client(Settings()) is None
    with pytest.raises(GatewayError) as err:
        require_stripe(None)
    assert (err.value.code, err.value.status) == ("BILLING_DISABLED", 503)
