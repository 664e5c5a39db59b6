"""Account state outside the hot path: manual subscriptions, credit grants, usage reads.

Writes here are operator actions (CLI, admin API) and, later, Stripe webhooks. Reads go
through usage.lua, so a gauge shown to a user is computed by the same code that admits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.errors import GatewayError
from gateway.isotime import iso_ms
from gateway.metering.accounts import Account
from gateway.metering.plans import BUCKETS, PlanTables
from gateway.metering.scripts import Scripts
from gateway.money import micro_to_usd
from gateway.store import Store

if TYPE_CHECKING:
    from gateway.rules import Rules

MAX_GRANT_MICRO = 10**13  # $10M in one grant: a typo guard, not a business rule


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


@dataclass(frozen=True, slots=True)
class Ledger:
    store: Store
    scripts: Scripts

    async def set_plan(self, rules: Rules, account: Account, plan: str,
                       source: str = "manual") -> dict[str, Any]:
        """Give an account a plan (comp / manual subscription), active now.

        The Stripe subscriptions it replaces are set aside (`replaced_subscriptions`): their
        later events no longer change the plan (the webhook ignores them while the plan is
        manual), but Stripe goes on billing them, so the result names them for the
        operator to cancel there. A subscription the customer starts afterwards takes
        over as usual."""
        if plan not in rules.plans:
            raise GatewayError("INVALID_PLAN", f"no plan {plan!r} in the rules; known: "
                               + ", ".join(sorted(rules.plans)))
        config = await self.config(account)
        replaced = [s for s in config.get("replaced_subscriptions", "").split(",") if s]
        if config.get("source") == "stripe":
            replaced += [config[f] for f in ("stripe_subscription", "other_subscription")
                         if config.get(f) and config[f] not in replaced]
        mapping: dict[str, str] = {"plan": plan, "status": "active", "source": source}
        if replaced:
            mapping["replaced_subscriptions"] = ",".join(replaced)
        await self.store.call(self.store.client.hset(account.config_key, mapping=mapping))
        # A manual plan follows calendar months: drop a previous subscription's period,
        # and the replaced subscriptions' bookkeeping.
        await self.store.call(self.store.client.hdel(
            account.config_key, "period_start", "period_end", "past_due_until",
            "stripe_subscription", "other_subscription", "billing_cycle",
            "cancel_at_period_end"))
        return {"scope": account.scope, "id": account.id, "plan": plan, "status": "active",
                "source": source, "replaced_subscriptions": replaced}

    async def apply_subscription(
        self,
        account: Account,
        *,
        plan: str,
        status: str,
        period_start_ms: int,
        period_end_ms: int,
        past_due_until_ms: int | None = None,
        cancel_at_period_end: bool = False,
        subscription_id: str = "",
        billing_cycle: str = "",
    ) -> None:
        """Record a Stripe subscription's current state (from a webhook's re-fetch).

        The debit script reads plan, status, past_due_until and the period from here, so
        this one write changes what the account may do, atomically.
        """
        mapping: dict[str, str | int] = {
            "plan": plan, "status": status, "source": "stripe",
            "period_start": period_start_ms, "period_end": period_end_ms,
            "cancel_at_period_end": int(cancel_at_period_end),
            "stripe_subscription": subscription_id, "billing_cycle": billing_cycle,
        }
        if past_due_until_ms is not None:
            mapping["past_due_until"] = past_due_until_ms
        await self.store.call(self.store.client.hset(account.config_key, mapping=mapping))
        if past_due_until_ms is None:
            await self.store.call(self.store.client.hdel(account.config_key,
                                                         "past_due_until"))

    async def set_budget(self, account: Account, *, cap_micro: int, hard_cap: bool,
                         allow_soft_overage: bool = True) -> None:
        """Monthly budget cap: spend = credits consumed + overage this period.

        `hard_cap` blocks at the cap; a soft cap only alerts, unless `allow_soft_overage`
        is false, which blocks at it too. The scripts read one flag, `hard_cap`: whether
        the cap blocks; what was asked for is kept beside it for the budget view."""
        blocks = hard_cap or not allow_soft_overage
        await self.store.call(self.store.client.hset(account.config_key, mapping={
            "cap_micro": cap_micro, "hard_cap": int(blocks), "hard_cap_asked": int(hard_cap),
            "allow_soft_overage": int(allow_soft_overage)}))

    async def config(self, account: Account) -> dict[str, str]:
        """The account's config hash, decoded (plan, status, period, budget, Stripe ids)."""
        raw = await self.store.read(lambda: self.store.client.hgetall(account.config_key))
        return {_s(k): _s(v) for k, v in raw.items()}

    async def clear_plan(self, account: Account) -> None:
        await self.store.call(self.store.client.hdel(
            account.config_key, "plan", "status", "source", "period_start", "period_end",
            "past_due_until", "replaced_subscriptions"))

    async def grant_credits(self, account: Account, micro_usd: int) -> int:
        """Add prepaid credits (micro-USD); returns the new balance."""
        if micro_usd <= 0 or micro_usd > MAX_GRANT_MICRO:
            raise GatewayError("BAD_REQUEST", "a grant must be more than $0 and at most "
                               "$10,000,000")
        return int(await self.store.call(self.store.client.incrby(
            account.credits_key, micro_usd)))

    async def grant_once(self, account: Account, session_id: str, micro_usd: int
                         ) -> tuple[int, int]:
        """Grant a paid top-up's credits exactly once: (granted now, balance)."""
        reply = await self.store.call(self.store.run_script(
            self.scripts.credits, [account.credits_key, account.topup_key(session_id)],
            ["grant", micro_usd]))
        return int(reply[0]), int(reply[1])

    async def claw_back_to(self, account: Account, charge_id: str, total_micro: int
                           ) -> tuple[int, int]:
        """Raise what was clawed back for a charge to `total_micro`: (taken now, balance)."""
        reply = await self.store.call(self.store.run_script(
            self.scripts.credits, [account.credits_key, account.clawback_key(charge_id)],
            ["clawback", total_micro]))
        return int(reply[0]), int(reply[1])

    async def view(self, rules: Rules, tables: PlanTables, account: Account,
                   now_ms: int | None = None) -> dict[str, Any]:
        """Plan, period, quota per meter, credits, usage breakdown and window gauges."""
        default = (rules.defaults.workspace_plan if account.scope == "workspace"
                   else rules.defaults.user_plan) or ""
        inactive = rules.billing.inactive if rules.billing else "fallback"
        reply = await self.store.call(self.scripts.usage(
            keys=[account.config_key, account.windows_key, account.credits_key,
                  account.period_prefix],
            args=["" if now_ms is None else str(now_ms), default, tables.windows_by_plan,
                  BUCKETS, inactive]))
        plan, status, period = _s(reply[0]), _s(reply[1]), _s(reply[2])
        start_ms, end_ms, credits = int(reply[3]), int(reply[4]), int(reply[5])
        flat = reply[6]
        counters = {_s(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}
        plan_def = rules.plans.get(plan)
        quota = []
        for meter in rules.meters:
            total = plan_def.quota.get(meter) if plan_def else None
            used = counters.get(f"q:{meter}", 0)
            quota.append({
                "meter": meter,
                "total": total,
                "used": used,
                "remaining": max(total - used, 0) if total is not None else None,
                "grace_used": counters.get(f"g:{meter}", 0),
                "overage_units": counters.get(f"o:{meter}", 0),
                "units": counters.get(f"u:{meter}", 0),
            })
        g = reply[7]
        windows = [{
            "limit": int(g[i]), "window_seconds": int(g[i + 1]) // 1000,
            "used": int(g[i + 2]), "remaining": max(int(g[i]) - int(g[i + 2]), 0),
            "reset_seconds": -(-int(g[i + 3]) // 1000),
            "meter": None if _s(g[i + 4]) == "*" else _s(g[i + 4]),
        } for i in range(0, len(g), 5)]
        return {
            "scope": account.scope,
            "id": account.id,
            "plan": plan or None,
            "status": status if plan else None,
            "period": {"id": period, "start": iso_ms(start_ms), "end": iso_ms(end_ms)},
            "quota": quota,
            "credits_micro_usd": credits,
            "credits_usd": micro_to_usd(credits),
            "spend_micro_usd": counters.get("spend", 0),
            "requests": counters.get("n", 0),
            "units": {m: counters.get(f"u:{m}", 0) for m in rules.meters},
            "breakdown_by_route": _breakdown(counters, "ru:", "rn:"),
            "breakdown_by_model": _breakdown(counters, "mu:", "mn:"),
            "windows": windows,
        }


def _breakdown(counters: dict[str, int], units_prefix: str, count_prefix: str
               ) -> list[dict[str, Any]]:
    """`ru:<name>:<meter>` / `rn:<name>` counters → [{name, requests, units: {meter: n}}]."""
    rows: dict[str, dict[str, Any]] = {}
    for field, value in counters.items():
        if field.startswith(units_prefix):
            name, _, meter = field[len(units_prefix):].rpartition(":")
            row = rows.setdefault(name, {"name": name, "requests": 0, "units": {}})
            row["units"][meter] = value
        elif field.startswith(count_prefix):
            name = field[len(count_prefix):]
            rows.setdefault(name, {"name": name, "requests": 0, "units": {}})["requests"] = value
    return sorted(rows.values(), key=lambda r: r["name"])
