"""Money at the edges: USD amounts from people become integer micro-USD, exactly."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

MICRO = 1_000_000
MAX_DIGITS = 15  # whole-dollar digits: far above any sane amount, far below overflow
# A written amount is plain: digits, a point and decimals. Not "1e3", "1_000" or " 5",
# which Decimal would read.
_WRITTEN = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}(\.[0-9]{{1,12}})?")


def usd_to_micro(value: object) -> int:
    """Parse a USD amount (string, int or JSON number) into micro-USD without floats.

    Raises ValueError for anything that is not a finite, non-negative amount with at
    most six decimal places.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float, Decimal)):
        raise ValueError("an amount in USD must be a number")
    if isinstance(value, str):
        if _WRITTEN.fullmatch(value) is None:
            if re.fullmatch(r"[0-9]+(\.[0-9]+)?", value):  # well written, only too long
                whole = value.partition(".")[0]
                raise ValueError("the amount is too large" if len(whole) > MAX_DIGITS
                                 else "amounts have at most 6 decimal places (micro-USD)")
            raise ValueError(f"not an amount: {value[:40]!r} (write it like 12.50)")
        amount = Decimal(value)
    else:
        try:
            # str() of a JSON float is its shortest round-trip text: 12.34 stays 12.34.
            amount = Decimal(str(value))
        except InvalidOperation:
            raise ValueError(f"not an amount: {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError("an amount must be finite and not negative")
    if amount and amount.adjusted() >= MAX_DIGITS:
        raise ValueError("the amount is too large")
    micro = amount * MICRO
    if micro != micro.to_integral_value():
        raise ValueError("amounts have at most 6 decimal places (micro-USD)")
    return int(micro)


def micro_to_usd(micro: int) -> str:
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO)
    return f"{sign}{whole}.{frac:06d}"
