"""A settlement the store could not take (Redis down after the response), kept to apply
later: everything settle.lua needs, so a replay moves exactly what the request would
have moved. settle.lua's marker (per debit, kept an hour) makes a replay of a settlement
that did run — its reply was what got lost — move nothing."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.caller import Caller
from gateway.metering.accounts import Account, Scope
from gateway.metering.verdict import ADMIT, Decision, Leg


@dataclass(frozen=True, slots=True)
class PendingSettlement:
    # The account that paid, and the caller (key windows, test traffic, the usage record)
    scope: Scope
    account_id: str
    user: str
    workspace: str | None
    key_id: str | None
    key_limit: int | None
    key_window_s: int | None
    test: bool
    # The debit as admitted: units, what each pool paid, its period, plan and record
    meter: str
    units: int
    quota_units: int
    credit_units: int
    credit_micro: int
    overage_units: int
    overage_micro: int
    grace_units: int
    period: str
    plan: str
    debit_id: str
    now_ms: int
    # The settlement itself
    actual: int
    kind: str
    route: str
    request_id: str
    model: str

    @classmethod
    def of(cls, decision: Decision, caller: Caller, *, actual: int, kind: str, route: str,
           request_id: str, model: str, meter: str) -> PendingSettlement:
        leg = decision.leg
        assert leg is not None
        return cls(leg.account.scope, leg.account.id, caller.user, caller.workspace,
                   caller.key_id, caller.key_limit, caller.key_window_s, caller.test, meter,
                   decision.units, leg.quota_units, leg.credit_units, leg.credit_micro,
                   leg.overage_units, leg.overage_micro, leg.grace_units, leg.period,
                   leg.plan, leg.debit_id, leg.now_ms, actual, kind, route, request_id, model)

    def caller(self) -> Caller:
        return Caller(user=self.user, workspace=self.workspace, key_id=self.key_id,
                      test=self.test, key_limit=self.key_limit,
                      key_window_s=self.key_window_s)

    def decision(self) -> Decision:
        """The admitted debit as settlement reads it (the window gauges, codes and money
        limits of the debit's reply play no part in settling it)."""
        account = Account(self.scope, self.account_id)
        leg = Leg(account, ADMIT, "", True, 0, 0, 0, 0, 0, self.quota_units,
                  self.credit_units, self.credit_micro, self.overage_units,
                  self.overage_micro, self.grace_units, 0, self.period, self.now_ms,
                  self.plan, True, "account", 0, self.debit_id, True, -1, -1, 0, False)
        return Decision(admitted=True, units=self.units, leg=leg, charged=True)
