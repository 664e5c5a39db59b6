"""Charge.settles: the request path skips `close` only where `close` would do nothing."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway.caller import Caller
from gateway.metering.accounts import Account
from gateway.metering.charge import Charge
from gateway.metering.engine import Settled
from gateway.metering.verdict import ADMIT, Decision, Leg
from gateway.metrics import Metrics
from gateway.proxy.forward import Outcome
from gateway.rules.model import Meter, ResponseField, Weight


class RecordingEngine:
    def __init__(self) -> None:
        self.settled: list[dict[str, Any]] = []

    async def settle(self, *args: Any, **kw: Any) -> Settled:
        self.settled.append(kw)
        return Settled(kw["actual"] - 5, {})


def leg(account: Account) -> Leg:
    return Leg(account, ADMIT, "", True, 0, 100, 95, 1000, 60_000, 5, 0, 0, 0, 0, 0, 95,
               "2026-12", 0, "big", True, "account", 0, "1-0", True, 1000, -1, 0, False)


@given(settle=st.booleans(), model=st.booleans(), refund_5xx=st.booleans(),
       charged=st.booleans(), status=st.sampled_from([200, 201, 304, 404, 429, 500, 502, 504]),
       broken=st.booleans(), disconnected=st.booleans(), complete=st.booleans())
async def test_settles_is_false_only_where_close_does_nothing(
    settle: bool, model: bool, refund_5xx: bool, charged: bool, status: int,
    broken: bool, disconnected: bool, complete: bool,
) -> None:
    weight = Weight(meter=Meter("fcu", 2_000_000), units=5, reserve=None,
                    settle=ResponseField(json_path=("usage", "total_tokens")) if settle
                    else None,
                    model=ResponseField(json_path=("model",)) if model else None,
                    refund_5xx=refund_5xx, enforce=None, source="test", index=0)
    engine = RecordingEngine()
    charge = Charge(engine, Metrics(), None, None,  # type: ignore[arg-type]
                    Caller(user="u1", workspace=None, key_id="k1"), weight, "/api/", "r1")
    charge.decision = Decision(admitted=True, units=5, leg=leg(Account("user", "u1")),
                               charged=charged)
    outcome = Outcome(upstream_status=status, upstream_broken=broken,
                      client_disconnected=disconnected, complete=complete)
    skipped = not charge.settles(outcome)
    await charge.close(outcome, upstream_failed=False)
    if skipped:
        assert engine.settled == []
    if charged and (broken or (status >= 500 and refund_5xx)):
        assert not skipped  # a refund is never skipped
