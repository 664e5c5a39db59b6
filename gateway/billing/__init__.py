"""Money: Stripe subscriptions, top-ups, portal, webhooks, budget caps, usage reporting.

Stripe is the record of money; Redis holds entitlements and counters; Stripe is never
called on the proxy's hot path. One async `StripeClient` is built at start-up
(`stripe_client.py`); without STRIPE_API_KEY the billing endpoints answer 503
BILLING_DISABLED and the proxy keeps working.
"""
