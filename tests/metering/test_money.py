"""The debit and settle scripts: pools, codes, caps, idempotency, periods, conservation."""

from __future__ import annotations

import asyncio
import calendar
import signal
import time
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.caller import Caller
from gateway.errors import StoreUnavailable
from gateway.metering.accounts import Account
from gateway.metering.engine import MeteringEngine
from gateway.metering.plans import PlanTables
from gateway.rules import parse_rules
from gateway.store import Store, open_store
from tests.metering.script_driver import Driver, plan_table
from tests.redis_servers import start_redis

T0 = 1_795_000_000_000  # 2026-11-18 UTC
BIG = "1000000:60000:*"
TABLE = plan_table(
    free=f"100 0 10 1 {BIG}",      # 100 units, 10 % grace, no overage
    payg=f"0 1 0 1 {BIG}",         # no quota, overage
    credits=f"-1 0 0 1 {BIG}",     # no quota for this meter: credits only
    shadow=f"10 0 0 0 {BIG}",      # enforce: false
)
USER = Account("user", "alice")


def ms(y: int, m: int, d: int, hh: int = 0, mm: int = 0, ss: int = 0) -> int:
    return calendar.timegm(datetime(y, m, d, hh, mm, ss, tzinfo=UTC).timetuple()) * 1000


async def set_plan(store: Store, account: Account, plan: str, **fields: str) -> None:
    await store.client.hset(account.config_key, mapping={"plan": plan, **fields})


async def test_quota_then_grace_then_quota_exhausted(store: Store) -> None:
    d = Driver(store, TABLE)
    first = await d.debit(USER, 95, T0)
    assert (first.verdict, first.quota_units, first.quota_remaining) == (1, 95, 5)
    split = await d.debit(USER, 10, T0 + 1)  # 5 from quota cannot cover: grace pays all 10
    assert split.verdict == 1
    assert (split.quota_units, split.grace_units) == (5, 5)
    over = await d.debit(USER, 6, T0 + 2)   # grace 10 total, 5 used, 6 > 5 left
    assert (over.verdict, over.code) == (0, "QUOTA_EXHAUSTED")
    assert over.money_ok is False and over.throughput_ok is True
    assert await d.period_field(USER, "2026-11", "q:fcu") == 100
    assert await d.period_field(USER, "2026-11", "g:fcu") == 5


async def test_credits_pay_after_quota_at_the_meter_price(store: Store) -> None:
    d = Driver(store, TABLE)
    await store.client.set(USER.credits_key, 30)  # 30 micro-USD = 15 units at 2 µ$/unit
    await d.debit(USER, 100, T0)
    leg = await d.debit(USER, 15, T0 + 1)
    assert (leg.verdict, leg.credit_units, leg.credit_micro) == (1, 15, 30)
    assert int(await store.client.get(USER.credits_key)) == 0
    # Grace (10 units) is still there after credits are gone:
    assert (await d.debit(USER, 10, T0 + 2)).grace_units == 10
    refused = await d.debit(USER, 1, T0 + 3)
    assert refused.code == "QUOTA_EXHAUSTED"


async def test_insufficient_credits_when_the_plan_has_no_quota(store: Store) -> None:
    d = Driver(store, TABLE, default_plan="credits")
    await store.client.set(USER.credits_key, 5)
    ok = await d.debit(USER, 2, T0)          # 4 µ$
    assert (ok.verdict, ok.credit_micro) == (1, 4)
    no = await d.debit(USER, 2, T0 + 1)      # 4 µ$ > 1 µ$ left
    assert (no.verdict, no.code) == (0, "INSUFFICIENT_CREDITS")
    assert int(await store.client.get(USER.credits_key)) == 1


async def test_sub_micro_prices_round_up_per_request(store: Store) -> None:
    d = Driver(store, TABLE, default_plan="credits", pico=400_000)  # $0.0000004 / token
    await store.client.set(USER.credits_key, 1_000)
    leg = await d.debit(USER, 3, T0)  # 1.2 µ$ -> 2 µ$
    assert leg.credit_micro == 2
    leg = await d.debit(USER, 2500, T0 + 1)  # exactly 1000 µ$ > 998 left
    assert leg.code == "INSUFFICIENT_CREDITS"


async def test_usage_records_carry_every_field_and_the_period_adds_up(
        store: Store) -> None:
    d = Driver(store, TABLE)
    await store.client.set(USER.credits_key, 10)
    await d.debit(USER, 98, T0)                      # the quota pays
    await d.debit(USER, 5, T0 + 1, rid="client-1")   # 2 from quota, 3 from credits
    records = [{k.decode(): v.decode() for k, v in f.items()}
               for _, f in await store.client.xrange(USER.usage_stream)]
    common = {"kind": "debit", "meter": "fcu", "o": "0", "om": "0", "g": "0",
              "period": "2026-11", "route": "/api/", "key": "key1", "user": "alice",
              "test": "0", "plan": "free", "open": "0"}
    assert records[0] == {**common, "rid": "", "units": "98", "q": "98", "c": "0",
                          "cm": "0", "t": str(T0), "req": "-"}
    assert records[1] == {**common, "rid": "client-1", "units": "5", "q": "2", "c": "3",
                          "cm": "6", "t": str(T0 + 1), "req": "client-1"}
    # The period's counters, written in one step, add up as each request did.
    fields = {k.decode(): int(v) for k, v in
              (await store.client.hgetall(USER.period_key("2026-11"))).items()}
    assert fields == {"u:fcu": 103, "n": 2, "ru:/api/:fcu": 103, "rn:/api/": 2,
                      "q:fcu": 100, "spend": 6}


async def test_overage_with_hard_budget_cap(store: Store) -> None:
    d = Driver(store, TABLE, default_plan="payg")
    await store.client.hset(USER.config_key, mapping={"cap_micro": 100, "hard_cap": "1"})
    ok = await d.debit(USER, 50, T0)   # 100 µ$ of overage: exactly at the cap
    assert (ok.verdict, ok.overage_units, ok.overage_micro) == (1, 50, 100)
    capped = await d.debit(USER, 1, T0 + 1)
    assert (capped.verdict, capped.code) == (0, "BUDGET_HARD_CAP_HIT")
    await store.client.hset(USER.config_key, "hard_cap", "0")  # soft cap: alerts only
    assert (await d.debit(USER, 1, T0 + 2)).verdict == 1
    assert await d.period_field(USER, "2026-11", "spend") == 102


async def test_subscription_status_policy(store: Store) -> None:
    d = Driver(store, TABLE, default_plan="")
    ws = Account("workspace", "acme")
    assert (await d.debit(ws, 1, T0)).verdict == 2  # no plan, no default: NO_PLAN
    await set_plan(store, ws, "free", status="past_due", past_due_until=str(T0 + 1000))
    assert (await d.debit(ws, 1, T0)).verdict == 1           # inside the grace
    late = await d.debit(ws, 1, T0 + 1000)
    assert late.verdict == 2  # lapsed, fallback policy, no default: not this account's
    await set_plan(store, ws, "free", status="unpaid")
    d_deny = Driver(store, TABLE, default_plan="")
    leg = await d_deny.debit(ws, 1, T0)
    assert leg.verdict == 2
    await set_plan(store, USER, "free", status="canceled")
    d2 = Driver(store, TABLE, default_plan="payg")
    fallback = await d2.debit(USER, 1, T0)
    assert (fallback.verdict, fallback.plan) == (1, "payg")


async def test_inactive_subscription_denied_under_deny_policy(store: Store) -> None:
    d = Driver(store, TABLE)
    await set_plan(store, USER, "free", status="unpaid")
    reply = await d.debit_reply(USER, 1, T0, inactive="deny")
    assert reply[0] == 0 and reply[1] == b"SUBSCRIPTION_INACTIVE"


async def test_repeated_request_id_charges_once(store: Store) -> None:
    d = Driver(store, TABLE)
    first = await d.debit(USER, 7, T0, rid="req-1")
    again = await d.debit(USER, 7, T0 + 5, rid="req-1")
    assert (first.verdict, again.verdict) == (1, 3)
    assert again.quota_units == first.quota_units
    assert await d.period_field(USER, "2026-11", "q:fcu") == 7
    assert await d.stream_units(USER) == 7


async def test_quota_counters_roll_over_at_the_utc_month_boundary(store: Store) -> None:
    d = Driver(store, TABLE)
    end_of_nov = ms(2026, 11, 30, 23, 59, 59) + 999
    assert (await d.debit(USER, 100, end_of_nov)).period == "2026-11"
    assert (await d.debit(USER, 100, end_of_nov)).code != ""     # exhausted (grace 10)
    december = await d.debit(USER, 100, end_of_nov + 1)
    assert (december.verdict, december.period, december.quota_remaining) == (1, "2026-12", 0)
    assert december.period_end_ms == ms(2027, 1, 1)
    assert (await d.debit(USER, 1, ms(2027, 1, 1))).period == "2027-01"
    assert (await d.debit(USER, 1, ms(2028, 2, 29, 12))).period == "2028-02"


async def test_subscription_period_keys_the_quota(store: Store) -> None:
    d = Driver(store, TABLE)
    start, end = ms(2026, 11, 10), ms(2026, 12, 10)
    await set_plan(store, USER, "free", period_start=str(start), period_end=str(end))
    leg = await d.debit(USER, 100, ms(2026, 12, 1))
    assert leg.period == f"s{start}"
    assert (await d.debit(USER, 50, ms(2026, 12, 9))).code == "QUOTA_EXHAUSTED"
    # The period ended but no renewal was recorded (its invoice is not paid yet): the
    # period goes on, quota spent and all.
    after = await d.debit(USER, 50, end)
    assert (after.code, after.period) == ("QUOTA_EXHAUSTED", f"s{start}")
    # Lapsed, the account falls back to the default plan on calendar months.
    await set_plan(store, USER, "free", status="canceled")
    lapsed = await d.debit(USER, 50, end)
    assert (lapsed.verdict, lapsed.period) == (1, "2026-12")
    # A renewal recorded: the new period's quota.
    await set_plan(store, USER, "free", status="active", period_start=str(end),
                   period_end=str(ms(2027, 1, 10)))
    renewed = await d.debit(USER, 50, end + 1)
    assert (renewed.verdict, renewed.period, renewed.quota_remaining) == (1, f"s{end}", 50)
    # A renewal recorded a moment before its period starts: already the new period, not
    # the calendar month in between.
    nxt = ms(2027, 1, 10)
    await set_plan(store, USER, "free", period_start=str(nxt), period_end=str(ms(2027, 2, 10)))
    early = await d.debit(USER, 10, nxt - 60_000)
    assert (early.verdict, early.period, early.quota_remaining) == (1, f"s{nxt}", 90)


async def test_shadow_plan_decides_but_writes_nothing(store: Store) -> None:
    d = Driver(store, TABLE, default_plan="shadow")
    would = await d.debit(USER, 11, T0)
    assert (would.verdict, would.code) == (0, "QUOTA_EXHAUSTED")
    fits = [await d.debit(USER, 4, T0 + i) for i in range(3)]
    assert [(f.verdict, f.code) for f in fits] == [(0, ""), (0, ""), (0, "QUOTA_EXHAUSTED")]
    # Only the shadow counters moved: no usage record, no real quota used.
    assert await store.client.exists(USER.usage_stream) == 0
    assert await d.period_field(USER, "2026-11", "q:fcu") == 0
    assert await d.period_field(USER, "2026-11", "sq:fcu") == 8


async def test_refund_and_settlement_are_exact_and_once(store: Store) -> None:
    d = Driver(store, TABLE, default_plan="payg")
    await store.client.set(USER.credits_key, 1_000)
    leg = await d.debit(USER, 100, T0, rid="r1")         # 100 units of credits = 200 µ$
    assert (leg.credit_units, leg.credit_micro) == (100, 200)
    delta = await d.settle(leg, 100, 40, "r1", T0 + 1, quota=0, overage=True)
    assert delta[0] == -60
    assert int(await store.client.get(USER.credits_key)) == 1_000 - 80
    again = await d.settle(leg, 100, 0, "r1", T0 + 2, quota=0, overage=True, kind="refund")
    assert again[0] == 0                                   # settled once only
    leg2 = await d.debit(USER, 100, T0 + 3, rid="r2")
    refund = await d.settle(leg2, 100, 0, "r2", T0 + 4, quota=0, overage=True, kind="refund")
    assert refund[0] == -100
    assert int(await store.client.get(USER.credits_key)) == 1_000 - 80
    leg3 = await d.debit(USER, 10, T0 + 5, rid="r3")
    up = await d.settle(leg3, 10, 1_000_000, "r3", T0 + 6, quota=0, overage=True)
    assert up[0] == 999_990
    assert await d.stream_units(USER) == 40 + 1_000_000
    assert await d.period_field(USER, "2026-11", "u:fcu") == 40 + 1_000_000


ops = st.lists(st.tuples(
    st.sampled_from(["debit", "refund", "settle", "disconnect"]),
    st.integers(1, 60), st.integers(0, 120)), min_size=1, max_size=60)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=ops, credits=st.integers(0, 300), plan=st.sampled_from(["free", "payg"]))
def test_conservation_units_charged_equal_units_recorded(
    store_url: str | None, script: list[tuple[str, int, int]], credits: int, plan: str
) -> None:
    """Units charged = units in the usage stream = units in the period counters, and
    money taken from credits = micro-USD recorded, across admits, denials, refunds,
    settlements and disconnects (a disconnect settles at what was reported, or the
    reserve)."""

    async def scenario() -> None:
        store = open_store(store_url)
        await store.client.flushdb()
        d = Driver(store, TABLE, default_plan=plan)
        await store.client.set(USER.credits_key, credits)
        quota = {"free": 100, "payg": 0}[plan]
        charged = 0
        for i, (op, units, actual) in enumerate(script):
            rid = f"r{i}"
            leg = await d.debit(USER, units, T0 + i, rid=rid)
            if leg.verdict != 1:
                continue
            charged += units
            if op == "refund":
                r = await d.settle(leg, units, 0, rid, T0 + i, quota, plan == "payg", "refund")
                charged += int(r[0])
            elif op == "settle":
                r = await d.settle(leg, units, actual, rid, T0 + i, quota, plan == "payg")
                charged += int(r[0])
            # "disconnect" with nothing reported settles at the reserve: no call at all.
        assert await d.stream_units(USER) == charged
        assert await d.period_field(USER, "2026-11", "u:fcu") == charged
        # The day's rollup (admin usage and economics) agrees, request for request.
        day = {k.decode(): int(v) for k, v in
               (await store.client.hgetall(USER.day_key("2026-11-18"))).items()}
        admitted = sum(1 for _, f in await store.client.xrange(USER.usage_stream)
                       if f[b"kind"] == b"debit")
        assert (day.get("u:fcu", 0), day.get("n:fcu", 0)) == (charged, admitted)
        entries = await store.client.xrange(USER.usage_stream)
        spent = sum(int(f[b"cm"]) for _, f in entries)
        left = int(await store.client.get(USER.credits_key) or 0)
        assert left == credits - spent and left >= 0
        q = await d.period_field(USER, "2026-11", "q:fcu")
        assert q == sum(int(f[b"q"]) for _, f in entries)
        await store.close()

    asyncio.run(scenario())


async def test_counters_expire_so_idle_accounts_cost_no_memory(store: Store) -> None:
    d = Driver(store, TABLE)
    await d.debit(USER, 1, T0)
    await d.debit(USER, 1, T0 + 1)
    period_ttl = await store.client.pttl(USER.period_key("2026-11"))
    day_ttl = await store.client.pttl(USER.day_key("2026-11-18"))
    window_ttl = await store.client.pttl(USER.windows_key)
    assert 300 * 86_400_000 < period_ttl <= 34_214_400_000  # ~13 months of history
    assert 300 * 86_400_000 < day_ttl <= 34_214_400_000
    assert 60_000 < window_ttl <= 120_000                   # twice the 60 s window


async def test_rollups_count_each_utc_day_and_test_keys_apart(store: Store) -> None:
    d = Driver(store, TABLE, default_plan="payg")
    late = ms(2026, 11, 18, 23, 59, 59)
    leg = await d.debit(USER, 10, late, rid="late")
    await d.debit(USER, 3, late + 2_000)                 # 2026-11-19
    await d.debit(USER, 4, late + 3_000, test=True)
    # Settled after midnight: the change lands on the day the request was admitted.
    await d.settle(leg, 10, 25, "late", late + 5_000, quota=0, overage=True, model="m-1")

    async def day(name: str) -> dict[str, int]:
        raw = await store.client.hgetall(USER.day_key(name))
        return {k.decode(): int(v) for k, v in raw.items()}

    assert await day("2026-11-18") == {"n:fcu": 1, "u:fcu": 25, "mn:m-1:fcu": 1,
                                       "mu:m-1:fcu": 25}
    assert await day("2026-11-19") == {"n:fcu": 1, "u:fcu": 3, "tn:fcu": 1, "tu:fcu": 4}


async def test_usage_records_older_than_the_retention_are_dropped(store: Store) -> None:
    """XADD … MINID ~ (Redis' clock - retention): whole old stream nodes go, new stay."""
    d = Driver(store, TABLE, default_plan="payg")
    for i in range(250):
        await d.debit(USER, 1, T0 + i)
    assert await store.client.xlen(USER.usage_stream) == 250
    await asyncio.sleep(0.05)
    d.retention_ms = 20
    await d.debit(USER, 1, T0 + 300)
    left = await store.client.xrange(USER.usage_stream)
    assert len(left) <= 151            # at least the oldest full node (100 entries) went
    assert left[-1][1][b"t"] == str(T0 + 300).encode()
    # Counters are not records: the period still holds every unit.
    assert await d.period_field(USER, "2026-11", "u:fcu") == 251


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(units=st.integers(1, 2**32 - 1), pico=st.integers(1, 10**12))
# Where the plain double product ceil(units * pico / 1e6) comes out one micro-USD short:
@example(units=3_099_642_109, pico=485_316_407_951)
@example(units=3_632_255_616, pico=745_020_906_463)
def test_prices_are_exact_however_large(store_url: str | None, units: int, pico: int) -> None:
    """units * pico passes 2^53 (where Lua's doubles stop being exact) long before the
    limits the rules allow; the charge is still ceil(units * pico / 10^6) to the micro-USD."""

    async def scenario() -> None:
        store = open_store(store_url)
        await store.client.flushdb()
        d = Driver(store, plan_table(credits="-1 0 0 1 -"), default_plan="credits",
                   pico=pico)
        expected = -(-units * pico // 1_000_000)
        await store.client.set(USER.credits_key, expected)
        leg = await d.debit(USER, units, T0)
        assert (leg.verdict, leg.credit_micro) == (1, expected)
        assert int(await store.client.get(USER.credits_key)) == 0
        await store.close()

    asyncio.run(scenario())


async def test_a_debit_redis_runs_after_its_deadline_changes_nothing(store: Store) -> None:
    d = Driver(store, TABLE, default_plan="payg")
    now_real = int(time.time() * 1000)
    late = await d.debit_reply(USER, 5, T0, not_after=str(now_real - 1))
    assert late[0] == 6
    assert await d.period_field(USER, "2026-11", "u:fcu") == 0
    assert await store.client.xlen(USER.usage_stream) == 0
    on_time = await d.debit_reply(USER, 5, T0, not_after=str(now_real + 60_000))
    assert on_time[0] == 1


@pytest.mark.parametrize("stall_s", [0.35, 1.5])
async def test_a_stalled_redis_does_not_charge_the_requests_it_missed(stall_s: float) -> None:
    """Redis stops (SIGSTOP) while a debit is on its way: the caller gets
    STORE_UNAVAILABLE at the deadline, and when Redis resumes and runs the queued script,
    it is too late to charge anything (ARGV not_after) — soon after the deadline too."""
    server = start_redis()
    store = open_store(server.url, deadline_s=0.2)
    try:
        rules = parse_rules(RULES_FOR_ENGINE, filename="r.yaml")
        tables = PlanTables.build(rules)
        engine = MeteringEngine(store)
        await engine.sync_clock()
        caller = Caller(user="stall", workspace=None, key_id="k1")
        ok = await engine.admit(rules, tables, caller, meter="fcu", units=3, route="/",
                                request_id="r0", idempotent=False, enforce=True)
        assert ok.admitted
        server.process.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(StoreUnavailable):
                await engine.admit(rules, tables, caller, meter="fcu", units=50, route="/",
                                   request_id="r1", idempotent=False, enforce=True)
            await asyncio.sleep(stall_s)   # past the deadline (0.2 s)
        finally:
            server.process.send_signal(signal.SIGCONT)
        await asyncio.sleep(0.3)
        account = Account("user", "stall")
        entries = await store.client.xrange(account.usage_stream)
        assert [int(f[b"units"]) for _, f in entries] == [3]
    finally:
        await store.close()
        server.stop()


RULES_FOR_ENGINE = """
version: 1
upstreams: {main: {url: "http://127.0.0.1:9", timeout: 5s}}
routes: [{prefix: /, upstream: main}]
meters: {fcu: {usd_per_unit: 0.000002}}
weights: {default: {meter: fcu, units: 1}}
plans: {big: {throughput: [{limit: 1000000, window: 60s}], quota: {fcu: 1000000}}}
defaults: {user_plan: big}
"""
