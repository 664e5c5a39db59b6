"""USD amounts from people into integer micro-USD: exact, or a ValueError, never more."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.money import micro_to_usd, usd_to_micro


@pytest.mark.parametrize(("value", "micro"), [
    ("12.50", 12_500_000), ("0", 0), ("0.000001", 1), ("12.5000000", 12_500_000),
    (3, 3_000_000), (Decimal("0.1"), 100_000), (0.1, 100_000), (12.34, 12_340_000),
    ("999999999999999", 999_999_999_999_999_000_000),
])
def test_amounts(value: object, micro: int) -> None:
    assert usd_to_micro(value) == micro


@pytest.mark.parametrize("value", [
    "1_000", " 5", "5 ", "1e3", "+5", "-5", "0x10", "1e999999999", "", ".5", "5.",
    "0.0000001", "NaN", "Infinity", "1234567890123456", "\uff11\uff12", -1, float("nan"),
    float("inf"), 1e308, Decimal("1E+999999999"), Decimal("-0.5"), True, None, [1], {},
])
def test_refused(value: object) -> None:
    with pytest.raises(ValueError):
        usd_to_micro(value)


@given(st.one_of(st.text(max_size=60), st.integers(), st.floats(), st.decimals(),
                 st.none(), st.booleans()))
def test_anything_is_exact_micro_or_a_value_error(value: object) -> None:
    try:
        micro = usd_to_micro(value)
    except ValueError:
        return
    assert isinstance(micro, int) and micro >= 0
    assert usd_to_micro(micro_to_usd(micro)) == micro


@given(st.integers(0, 10**21 - 1))
def test_micro_round_trips(micro: int) -> None:
    assert usd_to_micro(micro_to_usd(micro)) == micro


@pytest.mark.parametrize(("value", "says"), [
    ("99999999999999999999", "too large"), ("1234567890123456.5", "too large"),
    ("1.0000000000001", "6 decimal places"), ("abc", "not an amount"),
])
def test_a_well_written_amount_that_is_refused_says_why(value: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        usd_to_micro(value)
