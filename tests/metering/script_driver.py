"""Drive the Lua scripts directly (no rules, no HTTP) for property tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.metering.accounts import Account
from gateway.metering.plans import BUCKETS
from gateway.metering.scripts import lua_source
from gateway.metering.verdict import Leg
from gateway.store import Store

PICO_FCU = 2_000_000  # $0.000002 per unit


def plan_table(**plans: str) -> str:
    """plan name -> '<quota> <overage> <grace> <enforce> <windows>' where windows are
    'limit:window_ms:counts,…' (counts: a meter or '*') or '-'."""
    return "\n" + "\n".join(f"{k} {v}" for k, v in plans.items()) + "\n"


@dataclass
class Driver:
    store: Store
    table: str
    default_plan: str = "free"
    meter: str = "fcu"
    pico: int = PICO_FCU
    retention_ms: int = 0  # usage records kept (0 = forever)

    def __post_init__(self) -> None:
        c = self.store.client
        self.debit_script = c.register_script(lua_source("debit.lua"))
        self.settle_script = c.register_script(lua_source("settle.lua"))

    async def debit(self, account: Account, units: int, now: int | None, rid: str = "",
                    route: str = "/api/", enforce: bool = True, key_windows: str = "",
                    test: bool = False, inactive: str = "fallback", opens: bool = False
                    ) -> Leg:
        reply = await self.debit_reply(account, units, now, rid, route, enforce, key_windows,
                                       test, inactive, opens)
        return Leg.parse(account, reply)

    async def debit_reply(self, account: Account, units: int, now: int | None, rid: str = "",
                          route: str = "/api/", enforce: bool = True, key_windows: str = "",
                          test: bool = False, inactive: str = "fallback", opens: bool = False,
                          not_after: str = "") -> Any:
        key = "key-test" if test else "key1"
        return await self.debit_script(keys=[
            account.config_key, account.windows_key, account.credits_key,
            account.usage_stream, account.request_key(rid or "-"), account.period_prefix,
            account.day_prefix,
        ], args=[
            "" if now is None else str(now), units, self.meter, self.pico, self.table,
            self.default_plan, key_windows, BUCKETS, rid, route, key, account.id, int(test),
            int(enforce), inactive, f"k:{key}:", 0, self.retention_ms,
            f"GET {route} {self.meter} {units}", 0, rid or "-", int(opens), not_after,
        ])

    async def settle(self, leg: Leg, units: int, actual: int, rid: str, now: int | None,
                     quota: int, overage: bool, kind: str = "settle", model: str = "") -> Any:
        a = leg.account
        return await self.settle_script(keys=[
            a.credits_key, a.usage_stream, a.period_key(leg.period),
            a.settled_key(leg.debit_id or rid), a.day_prefix, a.config_key, a.windows_key,
            a.request_key(rid or "-"),
        ], args=[
            "" if now is None else str(now), self.meter, self.pico, units, leg.quota_units,
            leg.credit_units, leg.credit_micro, leg.overage_units, leg.overage_micro,
            leg.grace_units, actual, quota, int(overage), kind, "/api/", model, rid, "key1",
            a.id, 0, leg.period, leg.plan, leg.now_ms, self.retention_ms,
            self.plan_windows(leg.plan), "", "k:key1:", BUCKETS,
        ])

    def plan_windows(self, plan: str) -> str:
        """The account windows of `plan` in the table ("" when none)."""
        for line in self.table.splitlines():
            fields = line.split()
            if fields and fields[0] == plan and len(fields) > 5:
                return "" if fields[5] == "-" else fields[5]
        return ""

    async def stream_units(self, account: Account) -> int:
        entries = await self.store.client.xrange(account.usage_stream)
        return sum(int(fields[b"units"]) for _, fields in entries)

    async def period_field(self, account: Account, period: str, name: str) -> int:
        v = await self.store.client.hget(account.period_key(period), name)
        return int(v or 0)
