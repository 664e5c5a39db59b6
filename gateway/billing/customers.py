"""Accounts ↔ Stripe customers.

The customer id lives in the account's config hash (`stripe_customer`); a reverse index
`gw:stripe:customer:<cus_…>` → `<scope>:<id>` lets webhooks find the account.
"""

from __future__ import annotations

from dataclasses import dataclass

import stripe
from stripe.params._customer_create_params import CustomerCreateParams

from gateway.billing.stripe_client import stripe_errors
from gateway.metering.accounts import Account, parse_scope
from gateway.store import Store

REVERSE_PREFIX = "gw:stripe:customer:"


def _text(v: object) -> str | None:
    if v is None:
        return None
    return v.decode() if isinstance(v, bytes) else str(v)


@dataclass(frozen=True, slots=True)
class Customers:
    store: Store
    stripe: stripe.StripeClient

    async def find(self, account: Account) -> str | None:
        raw = await self.store.read(
            lambda: self.store.client.hget(account.config_key, "stripe_customer"))
        return _text(raw)

    async def ensure(self, account: Account, email: str | None = None) -> str:
        """The account's Stripe customer, created on first use."""
        existing = await self.find(account)
        if existing:
            return existing
        # One customer per account even if two requests race to create it.
        return await self._create(account, email, f"gw-customer-{account.scope}-{account.id}")

    async def replace(self, account: Account, gone: str, email: str | None = None) -> str:
        """A new customer for an account whose customer `gone` no longer exists."""
        await self.store.call(self.store.client.hdel(account.config_key, "stripe_customer"))
        await self.store.call(self.store.client.delete(REVERSE_PREFIX + gone))
        return await self._create(account, email,
                                  f"gw-customer-{account.scope}-{account.id}-{gone}")

    async def _create(self, account: Account, email: str | None, idempotency_key: str) -> str:
        params: CustomerCreateParams = {
            "metadata": {"gateway_scope": account.scope, "gateway_id": account.id}}
        if email:
            params["email"] = email
        with stripe_errors():
            customer = await self.stripe.v1.customers.create_async(
                params=params, options={"idempotency_key": idempotency_key})
        await self.link(account, customer.id)
        return str(customer.id)

    async def link(self, account: Account, customer_id: str) -> None:
        await self.store.call(self.store.client.hset(
            account.config_key, "stripe_customer", customer_id))
        await self.store.call(self.store.client.set(
            REVERSE_PREFIX + customer_id, f"{account.scope}:{account.id}"))

    async def account_for(self, customer_id: str) -> Account | None:
        raw = _text(await self.store.read(
            lambda: self.store.client.get(REVERSE_PREFIX + customer_id)))
        if not raw:
            return None
        scope, _, account_id = raw.partition(":")
        return Account(parse_scope(scope), account_id)
