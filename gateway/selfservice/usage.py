"""GET /usage/me: the caller's plan, period, quota, credits, usage and window gauges.

The top level describes the account that pays first (the workspace when it has a plan,
else the user); `accounts` has both, and `gauges` the live window gauges of each.
"""

from __future__ import annotations

from typing import Any

from gateway.caller import Caller
from gateway.metering.accounts import Account
from gateway.runtime import Runtime


async def usage_me(runtime: Runtime, caller: Caller) -> dict[str, Any]:
    rules, tables = runtime.rules, runtime.routing.tables
    now = runtime.clock_ms() if runtime.clock_ms else None
    views: dict[str, dict[str, Any]] = {}
    if caller.workspace:
        views["workspace"] = await runtime.ledger.view(
            rules, tables, Account("workspace", caller.workspace), now)
    views["user"] = await runtime.ledger.view(rules, tables, Account("user", caller.user), now)
    primary = views["workspace"] if views.get("workspace", {}).get("plan") else views["user"]
    gauges = {
        scope: [{"used": w["used"], "limit": w["limit"], "remaining": w["remaining"],
                 "window_seconds": w["window_seconds"], "meter": w["meter"]}
                for w in view["windows"]]
        for scope, view in views.items()
    }
    return {
        "user": caller.user,
        "workspace": caller.workspace,
        "key_id": caller.key_id,
        "test": caller.test,
        "paying_scope": primary["scope"],
        "plan": primary["plan"],
        "status": primary["status"],
        "billing_cycle_start": primary["period"]["start"],
        "billing_cycle_end": primary["period"]["end"],
        "quota": primary["quota"],
        "credits_micro_usd": primary["credits_micro_usd"],
        "credits_usd": primary["credits_usd"],
        "usage": {
            "requests": primary["requests"],
            "total_requests": primary["requests"],   # the reference documents' name
            "units": primary["units"],
            "breakdown_by_route": primary["breakdown_by_route"],
            # Each with `model` too, as the reference documents name it.
            "breakdown_by_model": [{"model": m["name"], **m}
                                   for m in primary["breakdown_by_model"]],
        },
        "gauges": gauges,
        "accounts": views,
    }
