"""Platform usage and per-model economics, computed from the accounts' daily rollups.

GET /admin/usage[?from=YYYY-MM-DD&to=YYYY-MM-DD]
    {from, to, requests, test_requests, units {meter: n}, test_units {meter: n},
     revenue_usd, provider_cost_usd, meters_without_cost, active_accounts,
     by_day [{date, requests, test_requests, units {meter: n}, revenue_usd}]}
GET /admin/model-economics[?from=…&to=…]
    {from, to, models [{model, meter, requests, total_requests, test_requests, units,
                        provider_cost_usd, revenue_usd, margin_pct}]}

The debit and settle scripts keep one rollup hash per account and UTC day,
`gw:{tag}:d:<YYYY-MM-DD>` (docs/metering.md), in the same atomic step as the charge:
`n:<meter>` requests, `u:<meter>` units (settlements and refunds move them, on the day
the request was admitted), `mn:<model>:<meter>` / `mu:<model>:<meter>` the requests and
units of requests settled with a model. Test keys count under the same names prefixed
with `t`. Requests without a model are the rest: `n` - sum of `mn`, `u` - sum of `mu`. Reading is
a SCAN over the rollups (every primary on a Cluster) and one HGETALL each: admin-only,
never on the request path. Dates are UTC days, both bounds inclusive.

Money: revenue is units * the meter's list price (`usd_per_unit`) and provider cost is
units * `cost_usd_per_unit`, summed in integer pico-USD and shown as **exact decimal
strings** with at least 6 decimal places (more only when a sub-micro-USD price needs them,
e.g. "0.0000015"). Revenue is the list-price value of the metered units (whichever pool
paid: quota, credits or overage). A meter without a cost gives `provider_cost_usd: null`
and `margin_pct: null` on its rows and is listed in `meters_without_cost` of the platform
totals (whose cost sums the meters that have one); margin_pct =
(revenue - cost) / revenue * 100, rounded to 2 places. Test-key usage is left out of
requests, units and money and counted apart.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal
from functools import partial
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.admin.auth import require_admin
from gateway.errors import GatewayError
from gateway.rules import Rules
from gateway.runtime import Runtime
from gateway.store import Store

PICO = 10**12
ROLLUP_MATCH = "gw:*:d:*"


def _json(data: object, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def pico_to_usd(pico: int) -> str:
    """Exact USD from pico-USD: at least 6 decimals, trailing zeros beyond that dropped."""
    sign = "-" if pico < 0 else ""
    whole, frac = divmod(abs(pico), PICO)
    digits = f"{frac:012d}".rstrip("0").ljust(6, "0")
    return f"{sign}{whole}.{digits}"


def margin_pct(revenue_pico: int, cost_pico: int | None) -> float | None:
    if cost_pico is None or revenue_pico == 0:
        return None
    pct = (Decimal(revenue_pico - cost_pico) * 100 / Decimal(revenue_pico)).quantize(
        Decimal("0.01"), rounding=ROUND_HALF_EVEN)
    return float(pct)


def _day_bound(value: str | None, name: str) -> date | None:
    if not value:
        return None
    try:
        if len(value) != 10:
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError:
        raise GatewayError("BAD_REQUEST", f"{name} must be a date YYYY-MM-DD") from None


@dataclass(frozen=True, slots=True)
class DayRollup:
    """One account's usage on one UTC day (the hash `gw:{tag}:d:<day>`)."""

    account: str  # the hash tag, e.g. "{u:ann}"
    day: str
    counters: dict[str, int]

    def by_meter(self, prefix: str) -> dict[str, int]:
        """`<prefix><meter>` fields → {meter: n}."""
        return {f[len(prefix):]: v for f, v in self.counters.items()
                if f.startswith(prefix) and ":" not in f[len(prefix):]}

    def by_model(self, prefix: str) -> dict[tuple[str, str], int]:
        """`<prefix><model>:<meter>` fields → {(model, meter): n}."""
        out: dict[tuple[str, str], int] = {}
        for f, v in self.counters.items():
            if f.startswith(prefix):
                model, _, meter = f[len(prefix):].rpartition(":")
                if model:
                    out[(model, meter)] = v
        return out


def parse_rollup_key(key: str) -> tuple[str, str] | None:
    """`gw:{u:ann}:d:2026-11-18` → ("{u:ann}", "2026-11-18")."""
    if not key.startswith("gw:{"):
        return None
    head, sep, day = key.rpartition(":d:")
    tag = head[3:]
    if not sep or not tag.endswith("}") or len(day) != 10:
        return None
    return tag, day


async def read_rollups(store: Store, start: date | None, end: date | None
                       ) -> list[DayRollup]:
    """Every account's rollup of each day from `start` to `end` (inclusive)."""
    client = store.client
    lo = start.isoformat() if start else ""
    hi = end.isoformat() if end else "9999-99-99"
    keys: set[str] = set()
    # redis-py walks every primary of a Cluster for SCAN.
    async for raw in client.scan_iter(match=ROLLUP_MATCH, count=1000, _type="hash"):
        key = _s(raw)
        parsed = parse_rollup_key(key)
        if parsed is not None and lo <= parsed[1] <= hi:
            keys.add(key)
    out: list[DayRollup] = []
    for key in sorted(keys):
        tag, day = parse_rollup_key(key) or ("", "")
        raw = await store.read(partial(client.hgetall, key), deadline_s=5.0)
        out.append(DayRollup(tag, day, {_s(k): int(v) for k, v in raw.items()}))
    return out


@dataclass
class _Tally:
    """Requests, units and money of some usage; costs only of meters that have one."""

    requests: int = 0
    test_requests: int = 0
    units: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    test_units: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    revenue: int = 0
    cost: int = 0
    uncosted: set[str] = field(default_factory=set)

    def add(self, rules: Rules, meter: str, requests: int, units: int, test_requests: int,
            test_units: int) -> None:
        self.requests += requests
        self.test_requests += test_requests
        if units:
            self.units[meter] += units
        if test_units:
            self.test_units[meter] += test_units
        m = rules.meters.get(meter)
        if m is None:  # a meter since removed from the rules: no price to apply
            self.uncosted.add(meter)
            return
        self.revenue += units * m.pico_usd_per_unit
        if m.cost_pico_usd_per_unit is None:
            if units:
                self.uncosted.add(meter)
        else:
            self.cost += units * m.cost_pico_usd_per_unit


def _meters(r: DayRollup) -> set[str]:
    return set(r.by_meter("n:")) | set(r.by_meter("u:")) | set(r.by_meter("tn:")) \
        | set(r.by_meter("tu:"))


def platform_usage(rules: Rules, rollups: list[DayRollup]) -> dict[str, Any]:
    total = _Tally()
    days: dict[str, _Tally] = defaultdict(_Tally)
    active: set[str] = set()
    for r in rollups:
        n, u, tn, tu = (r.by_meter(p) for p in ("n:", "u:", "tn:", "tu:"))
        for meter in sorted(_meters(r)):
            args = (meter, n.get(meter, 0), u.get(meter, 0), tn.get(meter, 0),
                    tu.get(meter, 0))
            total.add(rules, *args)
            days[r.day].add(rules, *args)
        if any(n.values()):
            active.add(r.account)
    return {
        "requests": total.requests,
        "test_requests": total.test_requests,
        "units": dict(sorted(total.units.items())),
        "test_units": dict(sorted(total.test_units.items())),
        "revenue_usd": pico_to_usd(total.revenue),
        "provider_cost_usd": pico_to_usd(total.cost),
        "meters_without_cost": sorted(total.uncosted),
        "active_accounts": len(active),
        "by_day": [{"date": d, "requests": t.requests, "test_requests": t.test_requests,
                    "units": dict(sorted(t.units.items())),
                    "revenue_usd": pico_to_usd(t.revenue)}
                   for d, t in sorted(days.items())],
    }


def model_economics(rules: Rules, rollups: list[DayRollup]) -> list[dict[str, Any]]:
    rows: dict[tuple[str | None, str], _Tally] = defaultdict(_Tally)
    for r in rollups:
        n, u, tn, tu = (r.by_meter(p) for p in ("n:", "u:", "tn:", "tu:"))
        mn, mu, tmn, tmu = (r.by_model(p) for p in ("mn:", "mu:", "tmn:", "tmu:"))
        rest = {meter: [n.get(meter, 0), u.get(meter, 0), tn.get(meter, 0),
                        tu.get(meter, 0)] for meter in _meters(r)}
        for name, meter in set(mn) | set(mu) | set(tmn) | set(tmu):
            got = (mn.get((name, meter), 0), mu.get((name, meter), 0),
                   tmn.get((name, meter), 0), tmu.get((name, meter), 0))
            rows[(name, meter)].add(rules, meter, got[0], got[1], got[2], got[3])
            left = rest.setdefault(meter, [0, 0, 0, 0])
            for i, v in enumerate(got):
                left[i] -= v
        for meter, (req, units, treq, tunits) in rest.items():
            if req or units or treq or tunits:
                rows[(None, meter)].add(rules, meter, req, units, treq, tunits)
    out = []
    for (model, meter), t in sorted(rows.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])):
        m = rules.meters.get(meter)
        cost = t.cost if m is not None and m.cost_pico_usd_per_unit is not None else None
        out.append({
            "model": model,
            "meter": meter,
            "requests": t.requests,
            "total_requests": t.requests,
            "test_requests": t.test_requests,
            "units": t.units.get(meter, 0),
            "provider_cost_usd": pico_to_usd(cost) if cost is not None else None,
            "revenue_usd": pico_to_usd(t.revenue) if m is not None else None,
            "margin_pct": margin_pct(t.revenue, cost) if m is not None else None,
        })
    return out


async def _rollups(request: Request) -> tuple[Runtime, dict[str, Any], list[DayRollup]]:
    runtime: Runtime = request.app.state.runtime
    require_admin(request, runtime.settings.admin_token)
    unknown = set(request.query_params) - {"from", "to"}
    if unknown:
        raise GatewayError("BAD_REQUEST", f"unknown parameters: {', '.join(sorted(unknown))}")
    start = _day_bound(request.query_params.get("from"), "from")
    end = _day_bound(request.query_params.get("to"), "to")
    if start and end and end < start:
        raise GatewayError("BAD_REQUEST", "to is before from")
    rollups = await read_rollups(runtime.store, start, end)
    bounds = {"from": start.isoformat() if start else None,
              "to": end.isoformat() if end else None}
    return runtime, bounds, rollups


async def admin_usage(request: Request) -> Response:
    runtime, bounds, rollups = await _rollups(request)
    return _json({**bounds, **platform_usage(runtime.rules, rollups)})


async def admin_model_economics(request: Request) -> Response:
    runtime, bounds, rollups = await _rollups(request)
    return _json({**bounds, "models": model_economics(runtime.rules, rollups)})


def economics_routes() -> list[Route]:
    return [
        Route("/admin/usage", admin_usage, methods=["GET"]),
        Route("/admin/model-economics", admin_model_economics, methods=["GET"]),
    ]
