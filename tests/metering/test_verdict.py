"""Reading debit replies and writing the RateLimit fields (pure functions)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway.metering.accounts import Account
from gateway.metering.verdict import Leg, rate_limit_headers, refuse

# A debit reply as Redis sends it: Lua numbers as ints, Lua strings as bytes.
REPLY: list[Any] = [1, b"", 1, 0, 100, 58, 1501, 60000, 2, 0, 0, 0, 0, 0, 998, b"2026-12",
                    1764590000000, b"pro", 1, b"account", 1767225600000, b"1764590000000-0",
                    1, 1000, -1, 0, 0]


def test_a_reply_of_ints_and_one_of_strings_read_the_same() -> None:
    account = Account("user", "u1")
    as_strings = [x if isinstance(x, bytes) else str(x).encode() for x in REPLY]
    fast, slow = Leg.parse(account, REPLY), Leg.parse(account, as_strings)
    assert fast == slow
    assert (fast.verdict, fast.throughput_ok, fast.limit, fast.remaining, fast.period,
            fast.plan, fast.debit_id, fast.enforce, fast.quota_total) == (
        1, True, 100, 58, "2026-12", "pro", "1764590000000-0", True, 1000)
    assert isinstance(fast.verdict, int) and isinstance(fast.money_ok, bool)


_TEXT_AT, _FLAG_AT = {1, 15, 17, 19, 21}, {2, 18, 22, 26}


@given(st.lists(st.integers(-10**15, 10**15), min_size=27, max_size=27),
       st.lists(st.text(alphabet="abcxyz-0123456789:", max_size=12), min_size=27,
                max_size=27))
def test_every_field_is_read_from_its_own_place(numbers: list[int], texts: list[str]) -> None:
    """The common reply is unpacked straight into the fields; the general path reads the
    same fields one by one: both must agree for every field, whatever the values."""
    reply: list[Any] = [texts[i].encode() if i in _TEXT_AT else abs(numbers[i]) % 2
                        if i in _FLAG_AT else numbers[i] for i in range(27)]
    account = Account("workspace", "w1")
    fast = Leg.parse(account, reply)
    slow = Leg.parse(account, [x if isinstance(x, bytes) else str(x).encode() for x in reply])
    assert dataclasses.astuple(fast) == dataclasses.astuple(slow)
    assert fast.account is account
    assert [type(getattr(fast, f.name)) for f in dataclasses.fields(Leg)] == [
        type(getattr(slow, f.name)) for f in dataclasses.fields(Leg)]


def test_a_stored_reply_without_the_newer_fields() -> None:
    leg = Leg.parse(Account("user", "u1"), REPLY[:24])
    assert (leg.cap_micro, leg.spend_micro, leg.quota_total, leg.key_refused) == (
        -1, 0, 1000, False)
    assert Leg.parse(Account("user", "u1"), [*REPLY[:26], 1]).key_refused is True


def test_rate_limit_fields() -> None:
    leg = Leg.parse(Account("user", "u1"), REPLY)
    assert rate_limit_headers(leg) == [(b"ratelimit-policy", b'"account";q=100;w=60'),
                                       (b"ratelimit", b'"account";r=58;t=2')]
    # The reset rounds up to whole seconds; a window under a second reads as 1 s.
    leg.reset_ms, leg.window_ms, leg.remaining = 1000, 500, 0
    assert rate_limit_headers(leg) == [(b"ratelimit-policy", b'"account";q=100;w=1'),
                                       (b"ratelimit", b'"account";r=0;t=1')]
    leg.limit = 0
    assert rate_limit_headers(leg) == []


@given(reset_ms=st.integers(-10**6, 10**12), remaining=st.integers(0, 10**12),
       limit=st.integers(1, 10**12), window_ms=st.integers(1, 10**9),
       scope=st.sampled_from(["account", "key"]))
def test_the_ratelimit_field_says_the_window_as_it_stands(
        reset_ms: int, remaining: int, limit: int, window_ms: int, scope: str) -> None:
    leg = dataclasses.replace(Leg.parse(Account("user", "u1"), list(REPLY)), reset_ms=reset_ms,
                              remaining=remaining, limit=limit, window_ms=window_ms,
                              window_scope=scope)
    # Twice: the second answer comes from the cached policy and format.
    for _ in range(2):
        assert rate_limit_headers(leg) == [
            (b"ratelimit-policy", f'"{scope}";q={limit};w={max(1, window_ms // 1000)}'.encode()),
            (b"ratelimit",
             f'"{scope}";r={remaining};t={max(0, math.ceil(reset_ms / 1000))}'.encode())]


def _refused(code: bytes, period: bytes, period_end_ms: int) -> dict[str, Any]:
    reply = [0, code, 1, 0, 100, 58, 1501, 60000, 0, 0, 0, 0, 0, 0, 0, period,
             1764590000000, b"pro", 0, b"account", period_end_ms, b"", 1, 1000, -1, 0, 0]
    return refuse([Leg.parse(Account("user", "u1"), reply)], None, None).body()


def test_an_exhausted_quota_says_when_its_period_ends() -> None:
    body = _refused(b"QUOTA_EXHAUSTED", b"s1764547200000", 1767225600000)
    assert body["code"] == "QUOTA_EXHAUSTED"
    assert body["period"] == "s1764547200000"  # the period's id, as the admin API has it
    assert body["period_end"] == "2026-01-01T00:00:00Z"
    assert body["detail"] == ("user u1 used its pro plan quota for this billing period "
                              "(until 2026-01-01T00:00:00Z)")
    assert body["limit"] == 1000 and body["remaining"] == 0


def test_an_inactive_subscription_names_no_period() -> None:
    body = _refused(b"SUBSCRIPTION_INACTIVE", b"s1764547200000", 1767225600000)
    assert body["code"] == "SUBSCRIPTION_INACTIVE"
    assert "period" not in body and "period_end" not in body
    assert "s1764547200000" not in str(body)

