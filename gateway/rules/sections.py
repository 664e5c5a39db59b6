"""The smaller sections of rules.yaml: identity, meters, defaults and billing."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from decimal import Decimal
from types import MappingProxyType

import yaml

from gateway.rules.model import (
    DEFAULT_API_KEY_HEADERS,
    DEFAULT_TOPUP_TIERS,
    TOPUP_MAX_USD,
    TOPUP_MIN_USD,
    BillingConfig,
    Defaults,
    IdentityConfig,
    Meter,
)
from gateway.rules.reader import Reader, child
from gateway.rules.upstreams import check_url

__all__ = ["read_billing", "read_defaults", "read_identity", "read_meters"]

PICO_PER_USD = Decimal(10) ** 12
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name (RFC 9110 token)
_HOST_GLOB = re.compile(r"(\*\.)?[A-Za-z0-9.-]+(:\d+)?")


def read_identity(r: Reader, node: yaml.Node) -> IdentityConfig | None:
    loc = "identity"
    f = r.mapping(node, loc, ("api_key_headers", "trusted_proxies", "trusted_identity_headers"))
    if f is None:
        return None
    before = len(r.problems)
    headers = DEFAULT_API_KEY_HEADERS
    if "api_key_headers" in f:
        hloc = child(loc, "api_key_headers")
        headers = tuple(h.lower() for i, item in enumerate(r.sequence(f["api_key_headers"], hloc)
                                                          or ())
                        if (h := _header(r, item, child(hloc, i))) is not None)
    proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    ploc = child(loc, "trusted_proxies")
    for i, item in enumerate(r.sequence(f["trusted_proxies"], ploc) or ()
                             if "trusted_proxies" in f else ()):
        text = r.string(item, child(ploc, i))
        if text is None:
            continue
        try:
            proxies.append(ipaddress.ip_network(text.strip()))
        except ValueError as exc:
            r.error(item, child(ploc, i), f"'{text}' is not a CIDR network: {exc}")
    user = workspace = None
    if "trusted_identity_headers" in f:
        tloc = child(loc, "trusted_identity_headers")
        t = r.mapping(f["trusted_identity_headers"], tloc, ("user", "workspace")) or {}
        user = _header(r, t["user"], child(tloc, "user")) if "user" in t else None
        workspace = _header(r, t["workspace"], child(tloc, "workspace")) \
            if "workspace" in t else None
    if len(r.problems) > before:
        return None
    return IdentityConfig(headers, tuple(proxies), user, workspace)


def _header(r: Reader, node: yaml.Node, loc: str) -> str | None:
    text = r.string(node, loc)
    if text is not None and not _TOKEN.fullmatch(text):
        r.error(node, loc, f"'{text}' is not a valid HTTP header name")
        return None
    return text


def read_meters(r: Reader, node: yaml.Node) -> tuple[dict[str, Meter], set[str]]:
    """Parse `meters:`; prices are exact decimals stored as integer pico-USD per unit."""
    meters: dict[str, Meter] = {}
    declared: set[str] = set()
    for _key, name, body in r.entries(node, "meters") or ():
        declared.add(name)
        loc = f"meters.{name}"
        f = r.mapping(body, loc, ("usd_per_unit", "cost_usd_per_unit"), required=("usd_per_unit",))
        if f is None or "usd_per_unit" not in f:
            continue
        price = _pico(r, f["usd_per_unit"], child(loc, "usd_per_unit"))
        cost = _pico(r, f["cost_usd_per_unit"], child(loc, "cost_usd_per_unit")) \
            if "cost_usd_per_unit" in f else None
        if price is None or ("cost_usd_per_unit" in f and cost is None):
            continue
        meters[name] = Meter(name, price, cost)
    return meters, declared


def _pico(r: Reader, node: yaml.Node, loc: str) -> int | None:
    usd = r.decimal(node, loc)
    if usd is None:
        return None
    pico = usd * PICO_PER_USD
    if pico % 1:
        r.error(node, loc, f"{node.value} USD is not a whole number of pico-USD (1e-12)")
        return None
    return int(pico)


def read_defaults(r: Reader, node: yaml.Node, declared_plans: set[str]) -> Defaults | None:
    f = r.mapping(node, "defaults", ("user_plan", "workspace_plan"))
    if f is None:
        return None
    values: dict[str, str] = {}
    ok = True
    for key, value in f.items():
        loc = child("defaults", key)
        plan = r.string(value, loc)
        if plan is not None and plan not in declared_plans:
            r.error(value, loc, f"unknown plan '{plan}' "
                    f"(declared: {', '.join(sorted(declared_plans)) or 'none'})")
            plan = None
        if plan is None:
            ok = False
        else:
            values[key] = plan
    return Defaults(values.get("user_plan"), values.get("workspace_plan")) if ok else None


def read_billing(r: Reader, node: yaml.Node) -> BillingConfig | None:
    loc = "billing"
    f = r.mapping(node, loc, ("top_up_url", "upgrade_url", "return_url_allowlist",
                              "past_due_grace", "inactive", "checkout_success_url",
                              "checkout_cancel_url", "topup_tiers"))
    if f is None:
        return None
    before = len(r.problems)
    urls: dict[str, str] = {}
    for key in ("top_up_url", "upgrade_url", "checkout_success_url", "checkout_cancel_url"):
        if key in f and (url := r.string(f[key], child(loc, key))) is not None:
            # Checkout return URLs may carry a query (Stripe fills {CHECKOUT_SESSION_ID}).
            checked = re.split(r"[?#]", url, maxsplit=1)[0] if key.startswith("checkout_") \
                else url
            if (why := check_url(checked)) is not None:
                r.error(f[key], child(loc, key), why)
            urls[key] = url
    allow: list[str] = []
    aloc = child(loc, "return_url_allowlist")
    for i, item in enumerate(r.sequence(f["return_url_allowlist"], aloc) or ()
                             if "return_url_allowlist" in f else ()):
        entry = r.string(item, child(aloc, i))
        if entry is None:
            continue
        if "://" in entry:
            why = check_url(entry)
        else:
            why = None if _HOST_GLOB.fullmatch(entry) else \
                f"'{entry}' is neither a URL prefix nor a host glob like *.example.com"
        if why is not None:
            r.error(item, child(aloc, i), why)
        allow.append(entry)
    grace_ms = r.duration_ms(f["past_due_grace"], child(loc, "past_due_grace")) \
        if "past_due_grace" in f else 0
    inactive = r.choice(f["inactive"], child(loc, "inactive"), ("deny", "fallback")) \
        if "inactive" in f else "fallback"
    tiers = _topup_tiers(r, f["topup_tiers"], child(loc, "topup_tiers")) \
        if "topup_tiers" in f else DEFAULT_TOPUP_TIERS
    if len(r.problems) > before or grace_ms is None:
        return None
    upgrade = urls.get("upgrade_url")
    return BillingConfig(
        urls.get("top_up_url"), upgrade, tuple(allow), grace_ms // 1000,
        "deny" if inactive == "deny" else "fallback",
        checkout_success_url=urls.get("checkout_success_url", upgrade),
        checkout_cancel_url=urls.get("checkout_cancel_url", upgrade),
        topup_tiers=tiers)


def _topup_tiers(r: Reader, node: yaml.Node, loc: str) -> Mapping[str, Decimal]:
    """`{small: 5, medium: 25}`: whole cents, within the top-up range."""
    tiers: dict[str, Decimal] = {}
    for _key, name, value in r.entries(node, loc) or ():
        tloc = child(loc, name)
        usd = r.decimal(value, tloc)
        if usd is None:
            continue
        if usd != usd.quantize(Decimal("0.01")):
            r.error(value, tloc, f"{value.value} USD is not a whole number of cents")
        elif not TOPUP_MIN_USD <= usd <= TOPUP_MAX_USD:
            r.error(value, tloc, f"{value.value} USD is outside the top-up range "
                    f"${TOPUP_MIN_USD}-${TOPUP_MAX_USD:,}")
        else:
            tiers[name] = usd
    return MappingProxyType(tiers)
