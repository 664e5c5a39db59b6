"""The billing section: checkout return URLs and top-up tiers (defaults and each error)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from gateway.rules import BillingConfig, RulesError, parse_rules

BASE = """\
version: 1
upstreams:
  compute: {url: "http://127.0.0.1:9001", timeout: 30s}
routes:
  - {prefix: /api/v1/, upstream: compute}
meters:
  fcu: {usd_per_unit: 0.000002}
weights:
  default: {meter: fcu, units: 1}
plans:
  free: {throughput: [{limit: 60, window: 60s}], quota: {fcu: 10000}}
defaults: {user_plan: free}
billing:
"""  # the billing section's keys start on line 14


def billing(text: str) -> BillingConfig:
    return parse_rules(BASE + text).billing


def test_defaults_follow_upgrade_url_and_the_standard_tiers() -> None:
    b = billing('  upgrade_url: "https://example.com/pricing"\n')
    assert b.checkout_success_url == b.checkout_cancel_url == "https://example.com/pricing"
    assert dict(b.topup_tiers) == {"small": Decimal(5), "medium": Decimal(25),
                                   "large": Decimal(100)}
    assert parse_rules(BASE.removesuffix("billing:\n")).billing.checkout_success_url is None
    assert dict(BillingConfig().topup_tiers) == dict(b.topup_tiers)


def test_explicit_urls_and_tiers() -> None:
    b = billing('  upgrade_url: "https://example.com/pricing"\n'
                '  checkout_success_url: "https://example.com/done?s={CHECKOUT_SESSION_ID}"\n'
                '  checkout_cancel_url: "https://example.com/cancelled"\n'
                "  topup_tiers: {tiny: 3, mid: 19.99, whale: 10000}\n")
    assert b.checkout_success_url == "https://example.com/done?s={CHECKOUT_SESSION_ID}"
    assert b.checkout_cancel_url == "https://example.com/cancelled"
    assert dict(b.topup_tiers) == {"tiny": Decimal(3), "mid": Decimal("19.99"),
                                   "whale": Decimal(10000)}


@pytest.mark.parametrize(("text", "location", "fragment"), [
    ("  topup_tiers: {small: 2.99}\n", "billing.topup_tiers.small", "outside the top-up range"),
    ("  topup_tiers: {big: 10000.01}\n", "billing.topup_tiers.big", "outside the top-up range"),
    ("  topup_tiers: {odd: 5.001}\n", "billing.topup_tiers.odd", "not a whole number of cents"),
    ("  topup_tiers: {neg: -5}\n", "billing.topup_tiers.neg", "must not be negative"),
    ("  topup_tiers: [5, 25]\n", "billing.topup_tiers", "expected a mapping"),
    ('  topup_tiers: {"a b": 5}\n', "billing.topup_tiers.a b", "names may only use"),
    ('  checkout_success_url: "ftp://example.com/"\n', "billing.checkout_success_url",
     "not an http:// or https:// URL"),
    ('  checkout_sucess_url: "https://example.com/"\n', "billing.checkout_sucess_url",
     "did you mean 'checkout_success_url'"),
])
def test_each_mistake_is_reported_where_it_is(text: str, location: str, fragment: str) -> None:
    with pytest.raises(RulesError) as caught:
        billing(text)
    [problem] = caught.value.problems
    assert (problem.location, problem.line) == (location, 14)
    assert fragment in problem.message
