"""Plans encoded for the debit script, once per rules load (never per request).

For each meter, one text table: a line per plan,
`\\n<plan> <quota|-1> <overage 0|1> <grace%> <enforce 0|1> <windows> <key windows>`, where
windows are `limit:window_ms:counts,…` (or `-`) and `counts` is the meter a window counts
(`*`: every meter's units), so windows of different meters keep separate buckets. The
script finds its plan's line with a plain `find`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.rules import Rules
    from gateway.rules.model import Window

# Sub-buckets per sliding window: a window refuses at most window/BUCKETS early
# (docs/metering.md) and costs BUCKETS+1 hash fields per account.
BUCKETS = 20


def window_spec(w: Window) -> str:
    return f"{w.limit}:{w.window_s * 1000}:{w.meter or '*'}"


def key_window_spec(limit: int, window_s: int) -> str:
    """A key's own limit counts every meter's units."""
    return f"{limit}:{window_s * 1000}:*"


@dataclass(frozen=True, slots=True)
class PlanTables:
    by_meter: Mapping[str, str]
    quota: Mapping[tuple[str, str], int]  # (plan, meter) -> units, -1 when none
    overage: Mapping[str, bool]
    windows_by_plan: str               # "\n<plan> <limit:ms:counts,…|->\n…" for usage.lua
    # (plan, meter) -> the account and key windows a debit of that meter counts in
    # ("" = none): settlement adjusts the same buckets.
    windows: Mapping[tuple[str, str], str]
    key_windows: Mapping[tuple[str, str], str]

    @classmethod
    def build(cls, rules: Rules) -> PlanTables:
        by_meter: dict[str, str] = {}
        quota: dict[tuple[str, str], int] = {}
        windows: dict[tuple[str, str], str] = {}
        key_windows: dict[tuple[str, str], str] = {}
        for meter in rules.meters:
            lines = []
            for name, plan in rules.plans.items():
                q = plan.quota.get(meter, -1)
                quota[(name, meter)] = q
                windows[(name, meter)] = ",".join(
                    window_spec(w) for w in plan.throughput
                    if w.scope == "account" and w.meter in (None, meter))
                key_windows[(name, meter)] = ",".join(
                    window_spec(w) for w in plan.throughput
                    if w.scope == "key" and w.meter in (None, meter))
                lines.append(f"{name} {q} {int(plan.overage)} {plan.grace_pct} "
                             f"{0 if plan.enforce is False else 1} "
                             f"{windows[(name, meter)] or '-'} "
                             f"{key_windows[(name, meter)] or '-'}")
            by_meter[meter] = "\n" + "\n".join(lines) + "\n"
        overage = {name: plan.overage for name, plan in rules.plans.items()}
        windows_by_plan = "\n" + "\n".join(
            f"{name} " + (",".join(window_spec(w) for w in plan.throughput
                                   if w.scope == "account") or "-")
            for name, plan in rules.plans.items()) + "\n"
        return cls(by_meter, quota, overage, windows_by_plan, windows, key_windows)
