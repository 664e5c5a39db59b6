"""The `plans:` section: throughput windows, quotas, grace, overage and prices."""

from __future__ import annotations

import re
from decimal import Decimal
from types import MappingProxyType

import yaml

from gateway.rules.model import Plan, Window
from gateway.rules.reader import Reader, child

__all__ = ["read_plans"]

_PLAN_KEYS = ("throughput", "quota", "grace", "overage", "enforce", "price", "stripe")
_CYCLES = ("monthly", "annual")
_GRACE = re.compile(r"(\d{1,3})%")


def read_plans(
    r: Reader, node: yaml.Node, declared_meters: set[str]
) -> tuple[dict[str, Plan], set[str]]:
    """Parse `plans:`; returns the valid plans and every declared plan name."""
    plans: dict[str, Plan] = {}
    declared: set[str] = set()
    for _key, name, body in r.entries(node, "plans") or ():
        declared.add(name)
        plan = _plan(r, name, body, declared_meters)
        if plan is not None:
            plans[name] = plan
    return plans, declared


def _plan(r: Reader, name: str, node: yaml.Node, meters: set[str]) -> Plan | None:
    loc = f"plans.{name}"
    f = r.mapping(node, loc, _PLAN_KEYS)
    if f is None:
        return None
    before = len(r.problems)
    windows = (_windows(r, f["throughput"], child(loc, "throughput"), meters)
               if "throughput" in f else ())
    quota = _quota(r, f["quota"], child(loc, "quota"), meters) if "quota" in f else {}
    grace = _grace(r, f["grace"], child(loc, "grace")) if "grace" in f else 0
    overage = r.boolean(f["overage"], child(loc, "overage")) if "overage" in f else False
    enforce = r.boolean(f["enforce"], child(loc, "enforce")) if "enforce" in f else None
    prices: dict[str, Decimal] = {}
    if "price" in f:
        prices = _prices(r, f["price"], child(loc, "price"))
    stripe: dict[str, str] = {}
    if "stripe" in f:
        for cycle, value in (r.mapping(f["stripe"], child(loc, "stripe"), _CYCLES) or {}).items():
            price_id = r.string(value, child(child(loc, "stripe"), cycle))
            if price_id is not None:
                stripe[cycle] = price_id
    if len(r.problems) > before or windows is None or quota is None or grace is None \
            or overage is None:
        return None
    monthly, annual = prices.get("monthly"), prices.get("annual")
    return Plan(
        name=name, throughput=windows, quota=MappingProxyType(quota), grace_pct=grace,
        overage=overage, enforce=enforce,
        price_monthly_cents=int(monthly * 100) if monthly is not None else None,
        price_annual_cents=int(annual * 100) if annual is not None else None,
        price_monthly_usd=monthly, price_annual_usd=annual, stripe_prices=MappingProxyType(stripe),
    )


def _windows(
    r: Reader, node: yaml.Node, loc: str, meters: set[str]
) -> tuple[Window, ...] | None:
    windows: list[Window] = []
    for i, item in enumerate(r.sequence(node, loc) or ()):
        wloc = child(loc, i)
        f = r.mapping(item, wloc, ("limit", "window", "scope", "meter"),
                      required=("limit", "window"))
        if f is None or "limit" not in f or "window" not in f:
            continue
        limit = r.integer(f["limit"], child(wloc, "limit"), minimum=1)
        window_ms = r.duration_ms(f["window"], child(wloc, "window"), minimum_ms=1000)
        scope = r.choice(f["scope"], child(wloc, "scope"), ("account", "key")) \
            if "scope" in f else "account"
        if window_ms is not None and window_ms % 1000:
            r.error(f["window"], child(wloc, "window"), "a window must be whole seconds")
            continue
        meter = None
        if "meter" in f:
            meter = r.name(f["meter"], child(wloc, "meter"))
            if meter is not None and meter not in meters:
                r.error(f["meter"], child(wloc, "meter"), f"unknown meter {meter!r}")
                meter = None
            if meter is None:
                continue
        if limit is None or window_ms is None or scope not in ("account", "key"):
            continue
        windows.append(Window(limit, window_ms // 1000,
                              "key" if scope == "key" else "account", meter))
    return tuple(windows)


def _quota(r: Reader, node: yaml.Node, loc: str, meters: set[str]) -> dict[str, int] | None:
    quota: dict[str, int] = {}
    for key_node, meter, value in r.entries(node, loc) or ():
        if meter not in meters:
            r.error(key_node, child(loc, meter), f"unknown meter '{meter}' "
                    f"(declared: {', '.join(sorted(meters)) or 'none'})")
            continue
        units = r.integer(value, child(loc, meter), minimum=0)
        if units is not None:
            quota[meter] = units
    return quota


def _grace(r: Reader, node: yaml.Node, loc: str) -> int | None:
    text = r.string(node, loc)
    match = _GRACE.fullmatch(text.strip()) if text is not None else None
    if text is not None and (match is None or int(match.group(1)) > 100):
        r.error(node, loc, f"'{text}' is not a percentage from 0% to 100%")
        return None
    return int(match.group(1)) if match else None


def _prices(r: Reader, node: yaml.Node, loc: str) -> dict[str, Decimal]:
    prices: dict[str, Decimal] = {}
    for cycle, value in (r.mapping(node, loc, _CYCLES) or {}).items():
        usd = r.decimal(value, child(loc, cycle))
        if usd is None:
            continue
        if (usd * 100) % 1:
            r.error(value, child(loc, cycle), f"{value.value} USD is not a whole number of cents")
            continue
        prices[cycle] = usd
    return prices
