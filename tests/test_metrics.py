"""The request path's one-call metric updates land in the families Prometheus reads."""

from __future__ import annotations

from gateway.metrics import Metrics


def sample(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_count_admit_counts_the_decision_and_each_paying_pool() -> None:
    m = Metrics()
    m.count_admit("user", "fcu", 3, 0, 0, 0)
    m.count_admit("user", "fcu", 1, 2, 4, 5)
    m.count_admit("workspace", "tok", 0, 0, 7, 0)
    assert sample(m, "gateway_decisions_total", code="ADMIT", scope="user") == 2
    assert sample(m, "gateway_decisions_total", code="ADMIT", scope="workspace") == 1
    assert sample(m, "gateway_units_debited_total", meter="fcu", pool="quota") == 4
    assert sample(m, "gateway_units_debited_total", meter="fcu", pool="credits") == 2
    assert sample(m, "gateway_units_debited_total", meter="fcu", pool="overage") == 4
    assert sample(m, "gateway_units_debited_total", meter="fcu", pool="grace") == 5
    assert sample(m, "gateway_units_debited_total", meter="tok", pool="overage") == 7
    assert sample(m, "gateway_units_debited_total", meter="tok", pool="quota") == 0


def test_count_admit_shares_the_children_labels_hands_out() -> None:
    m = Metrics()
    m.decisions.labels("ADMIT", "user").inc(10)
    m.count_admit("user", "fcu", 1, 0, 0, 0)
    assert sample(m, "gateway_decisions_total", code="ADMIT", scope="user") == 11
    m.units.labels("fcu", "quota").inc(2)
    assert sample(m, "gateway_units_debited_total", meter="fcu", pool="quota") == 3
