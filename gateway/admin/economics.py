"""Platform usage and per-model economics, computed from the accounts' usage streams.

GET /admin/usage[?from=YYYY-MM-DD&to=YYYY-MM-DD]
    {from, to, requests, test_requests, units {meter: n}, test_units {meter: n},
     revenue_usd, provider_cost_usd, active_accounts,
     by_day [{date, requests, test_requests, units {meter: n}, revenue_usd}]}
GET /admin/model-economics[?from=…&to=…]
    {from, to, models [{model, meter, requests, total_requests, test_requests, units,
                        provider_cost_usd, revenue_usd, margin_pct}]}

Every usage stream (`SCAN gw:*:usage`, read with XRANGE in pages) is one record per
debit, settlement and refund (docs/metering.md). A request is a `debit` record; units are
the sum of all records (settlements and refunds carry signed deltas). Dates are the
records' own `t` (UTC), both bounds inclusive.

Money: revenue is units * the meter's list price (`usd_per_unit`) and provider cost is
units * `cost_usd_per_unit`, summed in integer pico-USD and shown as **exact decimal
strings** with at least 6 decimal places (more only when a sub-micro-USD price needs them,
e.g. "0.0000015"). Revenue is list-price value of the metered units (whichever pool paid:
quota, credits or overage). A meter without a cost gives `provider_cost_usd: null` and
`margin_pct: null`; margin_pct = (revenue - cost) / revenue * 100, rounded to 2 places.
Test-key usage (`test: 1`) is left out of requests, units and money and counted apart.

Which model a request used is known only from its settlement record (`model`), and a
debit record names its request only when the client sent an X-Request-Id. So a settlement
is matched to its debit by request id when it has one, else to the oldest unmatched debit
of the same route, meter, key and user in the same stream (the settlement follows its
debit); requests never settled with a model are reported under `model: null`.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
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
PAGE = 1000


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


def _ms(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()) * 1000


@dataclass(frozen=True, slots=True)
class Record:
    stream: str
    kind: str
    meter: str
    units: int
    t: int
    test: bool
    rid: str
    route: str
    key: str
    user: str
    model: str


async def read_records(store: Store, start_ms: int | None, end_ms: int | None
                       ) -> list[Record]:
    """Every usage record with start_ms <= t < end_ms, stream by stream, in stream order."""
    client = store.client
    streams: list[str] = []
    # redis-py walks every primary of a Cluster for SCAN.
    async for key in client.scan_iter(match="gw:*:usage", count=1000, _type="stream"):
        streams.append(_s(key))
    out: list[Record] = []
    for stream in sorted(set(streams)):
        lower = "-"
        while True:
            page = await store.read(partial(client.xrange, stream, lower, "+", count=PAGE),
                                    deadline_s=5.0)
            for _entry_id, raw in page:
                f = {_s(k): _s(v) for k, v in raw.items()}
                t = int(f.get("t") or 0)
                if (start_ms is not None and t < start_ms) or (end_ms is not None
                                                               and t >= end_ms):
                    continue
                out.append(Record(stream, f.get("kind", ""), f.get("meter", ""),
                                  int(f.get("units") or 0), t, f.get("test") == "1",
                                  f.get("rid", ""), f.get("route", ""), f.get("key", ""),
                                  f.get("user", ""), f.get("model", "")))
            if len(page) < PAGE:
                break
            lower = "(" + _s(page[-1][0])
    return out


def _price(rules: Rules, meter: str) -> tuple[int, int | None] | None:
    m = rules.meters.get(meter)
    if m is None:
        return None
    return m.pico_usd_per_unit, m.cost_pico_usd_per_unit


@dataclass
class _Tally:
    requests: int = 0
    test_requests: int = 0
    units: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    test_units: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    revenue: int = 0
    cost: int | None = 0

    def add(self, rules: Rules, r: Record) -> None:
        if r.test:
            self.test_requests += r.kind == "debit"
            self.test_units[r.meter] += r.units
            return
        self.requests += r.kind == "debit"
        self.units[r.meter] += r.units
        price = _price(rules, r.meter)
        if price is not None:
            self.revenue += r.units * price[0]
            if price[1] is None or self.cost is None:
                self.cost = None
            else:
                self.cost += r.units * price[1]


def platform_usage(rules: Rules, records: list[Record]) -> dict[str, Any]:
    total = _Tally()
    days: dict[str, _Tally] = defaultdict(_Tally)
    active: set[str] = set()
    for r in records:
        total.add(rules, r)
        day = datetime.fromtimestamp(r.t / 1000, tz=UTC).date().isoformat()
        days[day].add(rules, r)
        if not r.test and r.kind == "debit":
            active.add(r.stream)
    return {
        "requests": total.requests,
        "test_requests": total.test_requests,
        "units": dict(sorted(total.units.items())),
        "test_units": dict(sorted(total.test_units.items())),
        "revenue_usd": pico_to_usd(total.revenue),
        "provider_cost_usd": pico_to_usd(total.cost) if total.cost is not None else None,
        "active_accounts": len(active),
        "by_day": [{"date": d, "requests": t.requests, "test_requests": t.test_requests,
                    "units": dict(sorted(t.units.items())),
                    "revenue_usd": pico_to_usd(t.revenue)}
                   for d, t in sorted(days.items())],
    }


def attribute_models(records: list[Record]) -> list[tuple[Record, str | None]]:
    """Each record with the model of the request it belongs to (None: unknown)."""
    debit_model: dict[int, str | None] = {}
    by_rid: dict[tuple[str, str], int] = {}
    # Debits without a request id, oldest first, per (stream, route, meter, key, user).
    anonymous: dict[tuple[str, str, str, str, str], deque[int]] = defaultdict(deque)
    settle_of: dict[int, int] = {}
    for i, r in enumerate(records):
        group = (r.stream, r.route, r.meter, r.key, r.user)
        if r.kind == "debit":
            debit_model[i] = None
            if r.rid:
                by_rid[(r.stream, r.rid)] = i
            else:
                anonymous[group].append(i)
            continue
        j = by_rid.pop((r.stream, r.rid), None) if r.rid else None
        if j is None and anonymous[group]:
            j = anonymous[group].popleft()
        if j is not None:
            settle_of[i] = j
            debit_model[j] = r.model or None
    out: list[tuple[Record, str | None]] = []
    for i, r in enumerate(records):
        if r.kind == "debit":
            out.append((r, debit_model[i]))
        elif i in settle_of:
            out.append((r, debit_model[settle_of[i]]))
        else:
            out.append((r, r.model or None))
    return out


def model_economics(rules: Rules, records: list[Record]) -> list[dict[str, Any]]:
    rows: dict[tuple[str | None, str], _Tally] = defaultdict(_Tally)
    for r, model in attribute_models(records):
        rows[(model, r.meter)].add(rules, r)
    out = []
    for (model, meter), t in sorted(rows.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])):
        price = _price(rules, meter)
        cost = t.cost if price is not None and price[1] is not None else None
        out.append({
            "model": model,
            "meter": meter,
            "requests": t.requests,
            "total_requests": t.requests,
            "test_requests": t.test_requests,
            "units": t.units.get(meter, 0),
            "provider_cost_usd": pico_to_usd(cost) if cost is not None else None,
            "revenue_usd": pico_to_usd(t.revenue) if price is not None else None,
            "margin_pct": margin_pct(t.revenue, cost) if price is not None else None,
        })
    return out


async def _records(request: Request) -> tuple[Runtime, dict[str, Any], list[Record]]:
    runtime: Runtime = request.app.state.runtime
    require_admin(request, runtime.settings.admin_token)
    unknown = set(request.query_params) - {"from", "to"}
    if unknown:
        raise GatewayError("BAD_REQUEST", f"unknown parameters: {', '.join(sorted(unknown))}")
    start = _day_bound(request.query_params.get("from"), "from")
    end = _day_bound(request.query_params.get("to"), "to")
    if start and end and end < start:
        raise GatewayError("BAD_REQUEST", "to is before from")
    records = await read_records(runtime.store, _ms(start) if start else None,
                                 _ms(end + timedelta(days=1)) if end else None)
    bounds = {"from": start.isoformat() if start else None,
              "to": end.isoformat() if end else None}
    return runtime, bounds, records


async def admin_usage(request: Request) -> Response:
    runtime, bounds, records = await _records(request)
    return _json({**bounds, **platform_usage(runtime.rules, records)})


async def admin_model_economics(request: Request) -> Response:
    runtime, bounds, records = await _records(request)
    return _json({**bounds, "models": model_economics(runtime.rules, records)})


def economics_routes() -> list[Route]:
    return [
        Route("/admin/usage", admin_usage, methods=["GET"]),
        Route("/admin/model-economics", admin_model_economics, methods=["GET"]),
    ]
