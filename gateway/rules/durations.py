"""Durations in rules.yaml: `250ms`, `30s`, `5m`, `1h`, `2d`, or a bare integer (seconds)."""

from __future__ import annotations

import re

__all__ = ["DURATION_HELP", "parse_duration_ms"]

DURATION_HELP = "a duration like 250ms, 30s, 5m, 1h, 2d or a whole number of seconds"

_DURATION = re.compile(r"(\d{1,12})(ms|s|m|h|d)")
_MS_PER_UNIT = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(value: str | int) -> int:
    """Milliseconds in `value`; raises ValueError for anything that is not a duration.

    Integers (exact) rather than floats, so `window: 60s` is exactly 60000 ms.
    """
    if isinstance(value, bool):  # bool is an int; `timeout: yes` is a mistake
        raise ValueError(DURATION_HELP)
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return value * 1000
    match = _DURATION.fullmatch(value.strip())
    if match is None:
        raise ValueError(DURATION_HELP)
    return int(match.group(1)) * _MS_PER_UNIT[match.group(2)]
