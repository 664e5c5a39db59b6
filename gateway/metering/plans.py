"""Plans encoded for the debit script, once per rules load (never per request).

For each meter, one text table: a line per plan,
`\\n<plan> <quota|-1> <overage 0|1> <grace%> <enforce 0|1> <windows> <key windows>`, where
windows are `limit:window_ms,…` (or `-`). The script finds its plan's line with a plain `find`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.rules import Rules

# Sub-buckets per sliding window: a window refuses at most window/BUCKETS early
# (docs/metering.md) and costs BUCKETS+1 hash fields per account.
BUCKETS = 20


@dataclass(frozen=True, slots=True)
class PlanTables:
    by_meter: Mapping[str, str]
    quota: Mapping[tuple[str, str], int]  # (plan, meter) -> units, -1 when none
    overage: Mapping[str, bool]
    windows_by_plan: str               # "\n<plan> <limit:ms,…|->\n…" for usage.lua

    @classmethod
    def build(cls, rules: Rules) -> PlanTables:
        by_meter: dict[str, str] = {}
        quota: dict[tuple[str, str], int] = {}
        for meter in rules.meters:
            lines = []
            for name, plan in rules.plans.items():
                q = plan.quota.get(meter, -1)
                quota[(name, meter)] = q
                windows = ",".join(
                    f"{w.limit}:{w.window_s * 1000}" for w in plan.throughput
                    if w.scope == "account" and w.meter in (None, meter)
                ) or "-"
                key_windows = ",".join(
                    f"{w.limit}:{w.window_s * 1000}" for w in plan.throughput
                    if w.scope == "key" and w.meter in (None, meter)
                ) or "-"
                lines.append(f"{name} {q} {int(plan.overage)} {plan.grace_pct} "
                             f"{0 if plan.enforce is False else 1} {windows} {key_windows}")
            by_meter[meter] = "\n" + "\n".join(lines) + "\n"
        overage = {name: plan.overage for name, plan in rules.plans.items()}
        windows_by_plan = "\n" + "\n".join(
            f"{name} " + (",".join(f"{w.limit}:{w.window_s * 1000}" for w in plan.throughput
                                   if w.scope == "account") or "-")
            for name, plan in rules.plans.items()) + "\n"
        return cls(by_meter, quota, overage, windows_by_plan)
