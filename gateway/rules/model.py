"""The typed, frozen form of rules.yaml. Built once by the loader; read on every request.

Nothing here parses or validates: by the time these objects exist the file was accepted.
Lookups (`route_for`, `weigh`) use tables precomputed at construction.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Literal

from gateway.rules.patterns import PathPattern

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

PICO_PER_MICRO = 1_000_000
# The most one request may cost, in units: below 2^32, units * price stays exact in the
# Lua scripts' doubles (metering/lua/lib.lua, price_micro).
MAX_UNITS = 2**32 - 1
DEFAULT_API_KEY_HEADERS: tuple[str, ...] = ("x-api-key", "authorization")
DEFAULT_TOPUP_TIERS: Mapping[str, Decimal] = MappingProxyType(
    {"small": Decimal(5), "medium": Decimal(25), "large": Decimal(100)})
TOPUP_MIN_USD = Decimal(3)
TOPUP_MAX_USD = Decimal(10_000)


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    url: str  # no trailing slash
    timeout_s: float
    connect_timeout_s: float


@dataclass(frozen=True, slots=True)
class Route:
    prefix: str
    upstream: Upstream
    name: str  # the metrics label; defaults to the prefix

    def matches(self, path: str) -> bool:
        """Prefix match on segment boundaries: `/v1` matches `/v1` and `/v1/x`, not `/v1x`."""
        prefix = self.prefix
        if not path.startswith(prefix):
            return False
        return prefix.endswith("/") or len(path) == len(prefix) or path[len(prefix)] == "/"


@dataclass(frozen=True, slots=True)
class Meter:
    name: str
    pico_usd_per_unit: int  # 1e-12 USD: exact for any price written with <= 12 decimals
    cost_pico_usd_per_unit: int | None = None  # provider cost, for economics

    def micro_usd(self, units: int) -> int:
        """Price of `units` in micro-USD, rounded up (a fraction of a micro-USD is charged)."""
        return -(-units * self.pico_usd_per_unit // PICO_PER_MICRO)


@dataclass(frozen=True, slots=True)
class ResponseField:
    """Where to read a value: a dotted JSON path into the body, or a header."""

    json_path: tuple[str, ...] | None = None
    header: str | None = None  # lower-cased

    def describe(self) -> str:
        if self.json_path is not None:
            return "json " + ".".join(self.json_path)
        return f"header {self.header}"


# The same shape serves both purposes; the names say which one a field holds.
Settle = ResponseField
ModelSource = ResponseField


@dataclass(frozen=True, slots=True)
class Weight:
    """What one request costs up front: `units` of `meter` (the reserve when settled later)."""

    meter: Meter
    units: int
    reserve: int | None
    settle: Settle | None
    model: ModelSource | None
    refund_5xx: bool
    enforce: bool | None  # None: follow the plan / global setting
    source: str  # "weights.rules[2]" or "weights.default"
    index: int | None
    # What admission debits: the reserve when one is set, else the units (worked out
    # once here; the request path reads it several times).
    upfront: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "upfront",
                           self.reserve if self.reserve is not None else self.units)

    @property
    def reads_body(self) -> bool:
        """Whether the response body is read for the cost or the model (then it is asked
        for without compression: see gateway/proxy/headers.py)."""
        return bool((self.settle and self.settle.json_path)
                    or (self.model and self.model.json_path))


@dataclass(frozen=True, slots=True)
class WeightRule:
    methods: frozenset[str] | None  # None: any method
    pattern: PathPattern
    weight: Weight


@dataclass(frozen=True, slots=True)
class Window:
    limit: int
    window_s: int
    scope: Literal["account", "key"] = "account"
    meter: str | None = None  # None: counts the units of every meter


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    throughput: tuple[Window, ...]
    quota: Mapping[str, int]  # meter -> units per billing period
    grace_pct: int = 0
    overage: bool = False
    enforce: bool | None = None
    price_monthly_cents: int | None = None
    price_annual_cents: int | None = None
    price_monthly_usd: Decimal | None = None
    price_annual_usd: Decimal | None = None
    stripe_prices: Mapping[str, str] = field(default_factory=dict)  # cycle -> Stripe price id


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    api_key_headers: tuple[str, ...] = DEFAULT_API_KEY_HEADERS  # lower-cased
    trusted_proxies: tuple[IPNetwork, ...] = ()
    user_header: str | None = None
    workspace_header: str | None = None


@dataclass(frozen=True, slots=True)
class Defaults:
    user_plan: str | None = None
    workspace_plan: str | None = None


@dataclass(frozen=True, slots=True)
class BillingConfig:
    top_up_url: str | None = None
    upgrade_url: str | None = None
    return_url_allowlist: tuple[str, ...] = ()
    past_due_grace_s: int = 0
    inactive: Literal["deny", "fallback"] = "fallback"
    # Where Stripe Checkout sends the payer back (default: upgrade_url). For top-ups,
    # top_up_url is preferred when set.
    checkout_success_url: str | None = None
    checkout_cancel_url: str | None = None
    # Named prepaid top-ups: tier -> USD (whole cents, $3-$10,000).
    topup_tiers: Mapping[str, Decimal] = field(
        default_factory=lambda: MappingProxyType(dict(DEFAULT_TOPUP_TIERS)))


@dataclass(frozen=True, slots=True)
class Rules:
    """One accepted rules.yaml."""

    source: str
    upstreams: Mapping[str, Upstream]
    routes: tuple[Route, ...]  # in file order
    identity: IdentityConfig
    meters: Mapping[str, Meter]
    weight_rules: tuple[WeightRule, ...]
    default_weight: Weight
    plans: Mapping[str, Plan]
    defaults: Defaults
    enforce: bool
    store_failure: Literal["closed", "open"]
    billing: BillingConfig
    _by_length: tuple[Route, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Longest prefix first, so the first match is the most specific.
        ordered = tuple(sorted(self.routes, key=lambda r: len(r.prefix), reverse=True))
        object.__setattr__(self, "_by_length", ordered)

    def route_for(self, path: str) -> Route | None:
        """The route with the longest prefix matching the normalised `path`, if any."""
        for route in self._by_length:
            if route.matches(path):
                return route
        return None

    def weigh(self, method: str, path: str) -> Weight:
        """The first weight rule matching `method` and the normalised `path`, else the default."""
        if not method.isupper():
            method = method.upper()  # never let `post` dodge the POST rules
        for rule in self.weight_rules:
            if (rule.methods is None or method in rule.methods) and rule.pattern.matches(path):
                return rule.weight
        return self.default_weight

    def with_upstream_urls(self, urls: Mapping[str, str]) -> Rules:
        """A copy with the named upstreams pointed at other URLs (unknown names: KeyError)."""
        unknown = set(urls) - set(self.upstreams)
        if unknown:
            raise KeyError(f"unknown upstream(s): {', '.join(sorted(unknown))}")
        upstreams = {
            name: dataclasses.replace(up, url=urls[name].rstrip("/")) if name in urls else up
            for name, up in self.upstreams.items()
        }
        routes = tuple(dataclasses.replace(r, upstream=upstreams[r.upstream.name])
                       for r in self.routes)
        return dataclasses.replace(self, upstreams=MappingProxyType(upstreams), routes=routes)
