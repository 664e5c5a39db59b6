"""One request's charge from admission to settlement.

admit() before anything is read from the client; close() after the response, whatever
happened: upstream failure → refund; settle rule → the reported amount (or the reserve
when nothing was reported, e.g. a client that left mid-stream); otherwise keep the debit.
Every admitted reservation is closed exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.caller import Caller
from gateway.errors import StoreUnavailable
from gateway.metering.engine import MeteringEngine
from gateway.metering.pending import PendingSettlement
from gateway.metering.plans import PlanTables
from gateway.metering.settlement import UsageObserver
from gateway.metering.verdict import Decision, rate_limit_headers
from gateway.metrics import Metrics
from gateway.proxy.forward import Outcome

if TYPE_CHECKING:
    from gateway.rules import Rules
    from gateway.rules.model import Weight

log = logging.getLogger("gateway.metering")

# Response fields built once rather than on every admitted request.
_UNITS_HEADERS: dict[int, tuple[bytes, bytes]] = {}
_ACCOUNT_HEADERS = {scope: (b"x-gateway-account", scope.encode())
                    for scope in ("user", "workspace")}


@dataclass(slots=True)
class Charge:
    engine: MeteringEngine
    metrics: Metrics
    rules: Rules
    tables: PlanTables
    caller: Caller
    weight: Weight
    route: str
    request_id: str
    fingerprint: str = ""  # method, path and cost: what a client's request id names
    decision: Decision | None = None
    observer: UsageObserver | None = None
    settled_units: int | None = None  # what close() left charged (a refund: 0)
    # Where a settlement the store cannot take goes, to be applied later (the journal);
    # None: it is logged and the debit stands.
    defer: Callable[[PendingSettlement], None] | None = None

    @property
    def units(self) -> int:
        """What admission debits: the reserve, or the fixed units."""
        return self.weight.upfront

    async def admit(self, idempotent: bool) -> Decision:
        """Debit the reserve (or the fixed units). A refused decision carries the error."""
        weight = self.weight
        units = weight.upfront
        meter = weight.meter.name
        settle = weight.settle
        decision = await self.engine.admit(
            self.rules, self.tables, self.caller, meter=meter, units=units,
            route=self.route, request_id=self.request_id, idempotent=idempotent,
            enforce=self.rules.enforce and weight.enforce is not False,
            fingerprint=f"{self.fingerprint} {meter} {units}" if idempotent else "",
            settles=settle is not None)
        self.decision = decision
        leg = decision.leg
        metrics = self.metrics
        if decision.charged and leg is not None:  # the common case: admitted and paid
            metrics.count_admit(leg.account.scope, meter, leg.quota_units, leg.credit_units,
                                leg.overage_units, leg.grace_units)
            if settle is not None or weight.model is not None:
                self.observer = UsageObserver(
                    json_path=settle.json_path if settle else None,
                    header=settle.header.lower().encode() if settle and settle.header
                    else None,
                    model_path=weight.model.json_path if weight.model else None)
            return decision
        if decision.shadow_code:
            metrics.shadow_rejects.labels(self.route, decision.shadow_code).inc()
        if not decision.admitted and decision.error is not None:
            metrics.decisions.labels(decision.error.code, _deny_scope(decision)).inc()
        else:  # admitted without a charge: free, shadow, a duplicate request id
            metrics.decisions.labels("ADMIT", leg.account.scope if leg else "none").inc()
        return decision

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        d = self.decision
        if d is None or (leg := d.leg) is None:
            return []
        units = self.weight.upfront
        units_header = _UNITS_HEADERS.get(units)
        if units_header is None:
            if len(_UNITS_HEADERS) > 10_000:  # bounded (settled reserves vary)
                _UNITS_HEADERS.clear()
            units_header = _UNITS_HEADERS[units] = (b"x-gateway-units", str(units).encode())
        scope = leg.account.scope
        out = [units_header, _ACCOUNT_HEADERS.get(scope) or (b"x-gateway-account",
                                                             scope.encode())]
        if leg.grace_units:
            out.append((b"x-gateway-warning", b"grace: plan quota exhausted, grace in use"))
        out.extend(rate_limit_headers(leg))
        return out

    def settles(self, outcome: Outcome) -> bool:
        """Whether `close(outcome)` would move anything, for a response the upstream
        answered: most charges keep their debit, and then no call is made at all.
        (Mirrors `_actual`; a request that failed before its response always closes.)"""
        d = self.decision
        if d is None or not d.charged or d.leg is None:
            return False
        w = self.weight
        return (w.settle is not None or w.model is not None or outcome.upstream_broken
                or (outcome.upstream_status >= 500 and w.refund_5xx))

    async def close(self, outcome: Outcome | None, upstream_failed: bool) -> None:
        """Refund or settle. Never raises: the response is already decided."""
        d = self.decision
        if d is None or not d.charged or d.leg is None:
            return
        try:
            actual, kind = self._actual(outcome, upstream_failed)
            model = (self.observer.model or "") if self.observer else ""
            # A reserve always gets its settlement record (the reporter waits for it).
            if actual == self.units and not model and self.weight.settle is None:
                self.settled_units = actual
                return
            meter = self.weight.meter.name
            try:
                settled = await self.engine.settle(
                    self.rules, self.tables, d, self.caller, actual=actual, kind=kind,
                    route=self.route, request_id=self.request_id, model=model, meter=meter)
            except StoreUnavailable:
                if self.defer is None:
                    raise
                # Kept to apply once Redis answers again (the journal's replay), so a
                # refund or a settlement is late rather than lost.
                self.defer(PendingSettlement.of(
                    d, self.caller, actual=actual, kind=kind, route=self.route,
                    request_id=self.request_id, model=model, meter=meter))
                self.settled_units = actual
                log.warning("the store is down: the %s of request %s (%d units) is kept "
                            "to apply when it is back", kind, self.request_id, actual)
                return
            self.settled_units = actual
            self.metrics.count_settlement(kind, meter, settled.delta, settled.pools)
        except Exception:
            # The debit stands (the reserve is charged): money is never lost, at worst
            # a refund is. Logged with the request id for reconciliation.
            log.exception("settlement failed for request %s", self.request_id)

    def _actual(self, outcome: Outcome | None, upstream_failed: bool) -> tuple[int, str]:
        if upstream_failed or outcome is None:
            return 0, "refund"
        status = outcome.upstream_status
        reported = None
        if self.observer is not None:
            self.observer.finish()
            reported = self.observer.actual
        if outcome.upstream_broken:
            return (reported, "settle") if reported is not None else (0, "refund")
        if status >= 500 and self.weight.refund_5xx:
            return 0, "refund"
        if self.weight.settle is not None and reported is not None:
            return reported, "settle"
        return self.units, "settle"


def _deny_scope(decision: Decision) -> str:
    err = decision.error
    scope = err.extra.get("scope") if err is not None else None
    return str(scope) if scope else "none"
