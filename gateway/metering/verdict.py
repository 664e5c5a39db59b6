"""From debit-script replies to one decision (pure).

Nobody admits → 429 if some account refused *only* for throughput (Retry-After = the
soonest of those), else 402 with the most specific money code; a cost no window can
ever hold → 413 COST_EXCEEDS_LIMIT, never an endless 429.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import GatewayError
from gateway.isotime import iso_ms
from gateway.metering.accounts import Account
from gateway.money import micro_to_usd

ADMIT, DENY, NO_PLAN, DUPLICATE, PASSED, REUSED, EXPIRED, REPLAYED = 1, 0, 2, 3, 4, 5, 6, 7

# Most specific first: when every account refuses for money, the client is told the
# reason that is most actionable.
MONEY_CODES = ("BUDGET_HARD_CAP_HIT", "SUBSCRIPTION_INACTIVE", "INSUFFICIENT_CREDITS",
               "QUOTA_EXHAUSTED")


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


@dataclass(slots=True)  # not frozen: its __init__ runs per request, frozen's is slower
class Leg:
    """One account's answer to one debit (read-only by convention)."""

    account: Account
    verdict: int
    code: str
    throughput_ok: bool
    retry_after_ms: int
    limit: int
    remaining: int
    reset_ms: int
    window_ms: int
    quota_units: int
    credit_units: int
    credit_micro: int
    overage_units: int
    overage_micro: int
    grace_units: int
    quota_remaining: int
    period: str
    now_ms: int
    plan: str
    money_ok: bool
    window_scope: str
    period_end_ms: int
    debit_id: str       # the debit's usage-record id ("" when nothing was recorded)
    enforce: bool       # False: the plan (or the request) is in shadow mode
    quota_total: int    # the plan's quota for the meter (-1: none)
    cap_micro: int      # the account's budget cap (-1: none)
    spend_micro: int    # its spend this period
    key_refused: bool   # the key's own limit refused: no other account may take over

    @classmethod
    def parse(cls, account: Account, reply: list[Any]) -> Leg:
        n = reply
        if len(n) == 27 and type(n[0]) is int and type(n[1]) is bytes and type(n[3]) is int:
            # The common reply: debit.lua's numbers arrive as ints, its strings as bytes,
            # unpacked straight into the fields. (Passing 28 arguments to __init__, which
            # stores them again, was half of this method's cost: 1.6 → 0.85 µs.)
            leg = cls.__new__(cls)
            leg.account = account
            (leg.verdict, code, throughput_ok, leg.retry_after_ms, leg.limit, leg.remaining,
             leg.reset_ms, leg.window_ms, leg.quota_units, leg.credit_units, leg.credit_micro,
             leg.overage_units, leg.overage_micro, leg.grace_units, leg.quota_remaining,
             period, leg.now_ms, plan, money_ok, scope, leg.period_end_ms, debit_id, enforce,
             leg.quota_total, leg.cap_micro, leg.spend_micro, key_refused) = n
            leg.code = code.decode()
            leg.throughput_ok = throughput_ok == 1
            leg.period = period.decode()
            leg.plan = plan.decode()
            leg.money_ok = money_ok == 1
            leg.window_scope = scope.decode()
            leg.debit_id = debit_id.decode()
            leg.enforce = enforce == 1
            leg.key_refused = key_refused == 1
            return leg
        # (A first reply stored for a request id may predate the last three fields.)
        return cls(account, int(n[0]), _s(n[1]), bool(int(n[2])), int(n[3]), int(n[4]),
                   int(n[5]), int(n[6]), int(n[7]), int(n[8]), int(n[9]), int(n[10]),
                   int(n[11]), int(n[12]), int(n[13]), int(n[14]), _s(n[15]), int(n[16]),
                   _s(n[17]), bool(int(n[18])), _s(n[19]), int(n[20]), _s(n[21]),
                   bool(int(n[22])), int(n[23]), int(n[24]) if len(n) > 24 else -1,
                   int(n[25]) if len(n) > 25 else 0, len(n) > 26 and bool(int(n[26])))

    @property
    def only_throughput(self) -> bool:
        return self.code == "RATE_LIMITED" and self.money_ok


@dataclass(slots=True)
class Decision:
    """The outcome of metering one request."""

    admitted: bool
    units: int = 0
    leg: Leg | None = None               # the paying account's answer
    charged: bool = False                # False: free, shadow, duplicate request id
    shadow_code: str | None = None       # enforce: false and it would have been refused
    error: GatewayError | None = None
    legs: list[Leg] = field(default_factory=list)


# RateLimit-Policy fields by (window name, limit, window ms): a plan has a few windows,
# and the field is the same on every response they govern; with it, the RateLimit field's
# format, so a response fills in two numbers in one bytes operation (an f-string and its
# encode were half of this function's cost). Bounded: start over when big.
_POLICIES: dict[tuple[str, int, int], tuple[tuple[bytes, bytes], bytes]] = {}


def rate_limit_headers(leg: Leg) -> list[tuple[bytes, bytes]]:
    """IETF RateLimit-Policy / RateLimit fields for the binding window."""
    limit = leg.limit
    if limit <= 0:
        return []
    key = (leg.window_scope, limit, leg.window_ms)
    fields = _POLICIES.get(key)
    if fields is None:
        if len(_POLICIES) > 10_000:
            _POLICIES.clear()
        name = leg.window_scope.replace("%", "%%")
        window_s = max(1, leg.window_ms // 1000)
        fields = _POLICIES[key] = ((b"ratelimit-policy",
                                    f'"{leg.window_scope}";q={limit};w={window_s}'.encode()),
                                   f'"{name}";r=%d;t=%d'.encode())
    reset_ms = leg.reset_ms
    reset_s = (reset_ms + 999) // 1000 if reset_ms > 0 else 0  # ceil, in integers
    return [fields[0], (b"ratelimit", fields[1] % (leg.remaining, reset_s))]


def refuse(legs: list[Leg], upgrade_url: str | None, top_up_url: str | None) -> GatewayError:
    """The error for a request that no account admitted (`legs` non-empty)."""
    throttled = [leg for leg in legs if leg.only_throughput]
    if throttled:
        leg = min(throttled, key=lambda x: x.retry_after_ms)
        retry_s = max(1, math.ceil(leg.retry_after_ms / 1000))
        headers = {"Retry-After": str(retry_s)}
        headers.update((k.decode(), v.decode()) for k, v in rate_limit_headers(leg))
        return GatewayError(
            "RATE_LIMITED",
            f"{_whose(leg)} throughput limit of {leg.limit} units per "
            f"{leg.window_ms // 1000}s reached; retry in {retry_s}s",
            headers=headers, scope=_scope(leg), limit=leg.limit, remaining=leg.remaining,
            reset=max(0, math.ceil(leg.reset_ms / 1000)), retry_after=retry_s)
    if all(leg.code == "COST_EXCEEDS_LIMIT" for leg in legs):
        leg = legs[-1]
        where = ("this API key's throughput limit" if _scope(leg) == "key" else
                 f"any throughput window of the {leg.plan} plan")
        return GatewayError(
            "COST_EXCEEDS_LIMIT",
            f"this request costs more units than {where} can ever hold "
            f"({leg.limit} per {leg.window_ms // 1000}s)",
            status=413, scope=_scope(leg), limit=leg.limit, upgrade_url=upgrade_url)
    for code in MONEY_CODES:
        for leg in reversed(legs):  # the user's leg (the last resort) speaks first
            if leg.code == code:
                # A quota (or a cap) comes back with the next period: say when, if known
                # (a subscription's ended period goes on until its renewal is paid).
                left_s = math.ceil((leg.period_end_ms - leg.now_ms) / 1000)
                reset = (left_s if code in ("QUOTA_EXHAUSTED", "BUDGET_HARD_CAP_HIT")
                         and leg.period_end_ms and left_s > 0 else None)
                if code == "BUDGET_HARD_CAP_HIT":  # the cap's figures, not the quota's
                    limits: dict[str, Any] = {
                        "limit_usd": micro_to_usd(leg.cap_micro) if leg.cap_micro >= 0
                        else None,
                        "remaining_usd": micro_to_usd(max(leg.cap_micro - leg.spend_micro, 0))
                        if leg.cap_micro >= 0 else None}
                else:
                    limits = {"limit": leg.quota_total if leg.quota_total >= 0 else None,
                              "remaining": leg.quota_remaining}
                inactive = code == "SUBSCRIPTION_INACTIVE"
                return GatewayError(
                    code, _money_detail(leg), scope=_scope(leg),
                    # (An inactive subscription has no period to speak of: the id would
                    # be the internal key of one that does not apply.)
                    period=None if inactive else leg.period,
                    period_end=iso_ms(leg.period_end_ms) if leg.period_end_ms > 0
                    and not inactive else None,
                    reset=reset, **limits,
                    top_up_url=top_up_url if code != "SUBSCRIPTION_INACTIVE" else None,
                    upgrade_url=upgrade_url)
    leg = legs[-1]
    return GatewayError(leg.code or "QUOTA_EXHAUSTED", _money_detail(leg), scope=_scope(leg))


def _whose(leg: Leg) -> str:
    return "this API key's" if _scope(leg) == "key" else f"the {leg.account.scope}'s"


def _scope(leg: Leg) -> str:
    return "key" if leg.window_scope == "key" and not leg.throughput_ok else leg.account.scope


def _money_detail(leg: Leg) -> str:
    who = f"{leg.account.scope} {leg.account.id}"
    return {
        "BUDGET_HARD_CAP_HIT": f"{who} reached its monthly budget cap",
        "SUBSCRIPTION_INACTIVE": f"{who}'s subscription is not active",
        "INSUFFICIENT_CREDITS": f"{who} has too few prepaid credits for this request",
        "QUOTA_EXHAUSTED": f"{who} used its {leg.plan} plan quota for this billing period"
                           + (f" (until {iso_ms(leg.period_end_ms)})" if leg.period_end_ms > 0
                              else ""),
    }.get(leg.code, f"{who} cannot pay for this request ({leg.code})")

