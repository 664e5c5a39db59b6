"""Overage reporting to Stripe Billing Meters: once per window, nothing lost, never twice.

Usage comes from the real debit/settle scripts (real redis-server and the embedded store);
Stripe is the local fake over real HTTP (tests/fakes/stripe_billing.py).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import stripe

from gateway.billing import reporter as reporter_module
from gateway.billing.customers import Customers
from gateway.billing.reporter import (
    GROUP,
    HOUR_MS,
    Reporter,
    account_of_stream,
    group_entries,
    is_duplicate,
)
from gateway.billing.stripe_client import build_stripe_client
from gateway.config import Settings
from gateway.metering.accounts import Account
from gateway.metering.verdict import Leg
from gateway.metrics import Metrics
from gateway.store import Store, open_store
from tests.fakes.stripe_billing import meter_events
from tests.fakes.stripe_server import API_KEY, FakeStripe, running_fake_stripe, stripe_settings
from tests.gateway_harness import client, running_gateway
from tests.metering.script_driver import Driver, plan_table
from tests.redis_cluster import start_cluster
from tests.redis_servers import RedisServer
from tests.upstream import RecordingUpstream

BIG = "1000000:60000:*"
TABLE = plan_table(
    payg=f"0 1 0 1 {BIG}",      # no quota: every unit is overage
    mixed=f"20 1 0 1 {BIG}",    # 20 units of quota, then overage
)
ALICE = Account("user", "alice")
TEAM = Account("workspace", "team")
# Three whole hours ago (Stripe takes timestamps up to 35 days old).
H0 = (int(time.time() * 1000) // HOUR_MS - 3) * HOUR_MS
H1 = H0 + HOUR_MS


@pytest.fixture
async def fake() -> AsyncIterator[FakeStripe]:
    async with running_fake_stripe() as f:
        yield f


def stripe_client(fake: FakeStripe) -> Any:
    c = build_stripe_client(Settings(**stripe_settings(fake)))  # type: ignore[arg-type]
    assert c is not None
    return c


async def linked(store: Store, fake: FakeStripe, account: Account) -> str:
    """A customer in the fake, linked to the account."""
    customer = await stripe_client(fake).v1.customers.create_async(params={})
    await Customers(store, stripe_client(fake)).link(account, customer.id)
    return str(customer.id)


def reporter(store: Store, fake: FakeStripe, metrics: Metrics | None = None) -> Reporter:
    """A fresh reporter: every run in these tests is a new process, as after a restart."""
    return Reporter(store, stripe_client(fake), metrics or Metrics())


async def debit_test_key(d: Driver, account: Account, units: int, now: int) -> Leg:
    """The driver's debit, but for a gw_test_ key (ARGV 13 = 1)."""
    return await d.debit(account, units, now, test=True)


async def pending(store: Store, account: Account) -> int:
    summary = await store.client.xpending(account.usage_stream, GROUP)
    return int(summary["pending"])


def sent(fake: FakeStripe) -> list[tuple[str, str, int, str]]:
    """(customer, value, timestamp, event_name) of every stored event, in order."""
    return [(e["payload"]["stripe_customer_id"], e["payload"]["value"], e["timestamp"],
             e["event_name"]) for e in meter_events(fake)]


def posts(fake: FakeStripe) -> list[dict[str, Any]]:
    return fake.calls("POST", "/v1/billing/meter_events")


async def test_overage_is_sent_once_per_window(store: Store, fake: FakeStripe) -> None:
    d = Driver(store, TABLE, default_plan="payg")
    cus = await linked(store, fake, ALICE)
    for units, t in ((10, H0 + 1_000), (20, H0 + 2_000), (5, H0 + 3_599_000),
                     (7, H1 + 5), (8, H1 + 60_000)):
        assert (await d.debit(ALICE, units, t)).overage_units == units
    metrics = Metrics()
    r = await reporter(store, fake, metrics).run_once()
    assert (r.sent, r.duplicates, r.failures, r.acked) == (2, 0, 0, 5)
    assert sent(fake) == [(cus, "35", (H0 + 3_599_000) // 1000, "fcu"),
                          (cus, "15", (H1 + 60_000) // 1000, "fcu")]
    idents = [p["identifier"] for p in posts(fake)]
    assert len(set(idents)) == 2 and all(i.startswith("gw-") for i in idents)
    assert await pending(store, ALICE) == 0
    assert await store.client.xlen(ALICE.usage_stream) == 0  # reported: deleted
    assert (r.backlog, r.lag_s) == (0, 0.0)
    assert metrics.meter_events_sent.labels("fcu", "sent")._value.get() == 2
    # A second run: nothing new, nothing sent.
    again = await reporter(store, fake).run_once()
    assert (again.sent, again.duplicates, again.acked) == (0, 0, 0)
    assert len(posts(fake)) == 2
    # New usage in an already reported hour is a new event (new entries, new identifier).
    await d.debit(ALICE, 4, H1 + 61_000)
    later = await reporter(store, fake).run_once()
    assert later.sent == 1 and sent(fake)[-1][1] == "4"


async def test_a_reserve_and_its_settlement_are_reported_as_their_net(
        store: Store, fake: FakeStripe) -> None:
    """The debit (reserve 100) waits out the hold; its settlement to 10 lands 90 minutes
    later (another hour) yet counts in the debit's hour: one event of 10, no carry."""
    d = Driver(store, TABLE, default_plan="payg")
    cus = await linked(store, fake, ALICE)
    leg = await d.debit(ALICE, 100, H0 + 1_000, rid="chat-1")
    held = Reporter(store, stripe_client(fake), Metrics(), hold_s=3600)
    r = await held.run_once()
    assert (r.sent, r.acked, r.backlog) == (0, 0, 1) and posts(fake) == []
    await d.settle(leg, 100, 10, "chat-1", H0 + 90 * 60_000, quota=0, overage=True)
    r = await reporter(store, fake).run_once()
    assert (r.sent, r.acked) == (1, 2)
    assert sent(fake) == [(cus, "10", (H0 + 1_000) // 1000, "fcu")]
    assert await store.client.hgetall(ALICE.key("report-carry")) == {}


async def test_a_reserve_still_streaming_waits_for_its_settlement(
        store: Store, fake: FakeStripe) -> None:
    """No hold, yet the open reserve (and what follows it) waits until its settlement is
    in the stream: then one net event."""
    d = Driver(store, TABLE, default_plan="payg")
    cus = await linked(store, fake, ALICE)
    await d.debit(ALICE, 7, H0)                                 # an ordinary request
    leg = await d.debit(ALICE, 100, H0 + 1_000, rid="chat-2", opens=True)
    await d.debit(ALICE, 5, H0 + 2_000)                         # after the open reserve
    r = await reporter(store, fake).run_once()
    assert (r.sent, r.acked) == (1, 1) and sent(fake) == [(cus, "7", H0 // 1000, "fcu")]
    await d.settle(leg, 100, 30, "chat-2", H0 + 70 * 60_000, quota=0, overage=True)
    r = await reporter(store, fake).run_once()
    assert r.acked == 3
    assert [e[1] for e in sent(fake)] == ["7", "35"]            # 30 + 5, one hour
    assert await store.client.hgetall(ALICE.key("report-carry")) == {}


async def test_a_reserve_never_settled_goes_out_as_it_stands(
        store: Store, fake: FakeStripe) -> None:
    """The gateway died mid-response: no settlement will come. After OPEN_MAX_S the
    reserve is billed, so nothing waits for ever."""
    d = Driver(store, TABLE, default_plan="payg")
    cus = await linked(store, fake, ALICE)
    await d.debit(ALICE, 100, H0, rid="lost", opens=True)
    assert (await reporter(store, fake).run_once()).sent == 0
    later = Reporter(store, stripe_client(fake), Metrics(),
                     clock=lambda: time.time() + reporter_module.OPEN_MAX_S + 1)
    assert (await later.run_once()).sent == 1
    assert sent(fake) == [(cus, "100", H0 // 1000, "fcu")]


async def test_quota_usage_is_not_overage(store: Store, fake: FakeStripe) -> None:
    d = Driver(store, TABLE, default_plan="mixed")
    cus = await linked(store, fake, TEAM)
    first = await d.debit(TEAM, 15, H0)           # quota only
    second = await d.debit(TEAM, 15, H0 + 10)     # 5 quota + 10 overage
    assert (first.overage_units, second.overage_units) == (0, 10)
    r = await reporter(store, fake).run_once()
    assert (r.sent, r.acked) == (1, 2)
    assert sent(fake) == [(cus, "10", (H0 + 10) // 1000, "fcu")]


@pytest.mark.parametrize("failure", ["500", "429", "outage", "network"])
async def test_stripe_failures_lose_nothing_and_the_next_run_delivers(
        store: Store, fake: FakeStripe, failure: str) -> None:
    d = Driver(store, TABLE, default_plan="payg")
    cus = await linked(store, fake, ALICE)
    await d.debit(ALICE, 30, H0)
    await d.debit(ALICE, 12, H1)
    metrics = Metrics()
    rep = Reporter(store, stripe_client(fake), metrics)
    if failure == "500":
        fake.fail_next(2, 500)       # the SDK retries 5xx once itself
    elif failure == "429":
        fake.fail_next(1, 429)
    elif failure == "outage":
        fake.down = True
    else:
        rep.client = build_stripe_client(Settings(  # nobody listens there
            stripe_api_key=API_KEY, stripe_api_base="http://127.0.0.1:9"))  # type: ignore[assignment]
    r = await rep.run_once()
    assert (r.sent, r.failures, r.acked) == (0, 1, 0)
    assert meter_events(fake) == []
    assert await pending(store, ALICE) == 2    # read, not acknowledged
    assert await store.client.xlen(ALICE.usage_stream) == 2   # and still there
    assert r.backlog == 2 and r.lag_s >= 0
    assert metrics.report_backlog._value.get() == 2
    reason = {"500": "stripe_unavailable", "429": "rate_limited", "outage": "stripe_unavailable",
              "network": "stripe_unavailable"}[failure]
    assert metrics.report_failures.labels(reason)._value.get() == 1
    # The stream is backed off: the same reporter does not hammer Stripe next round.
    fake.down = False
    rep.client = stripe_client(fake)
    skipped = await rep.run_once()
    assert (skipped.sent, skipped.failures) == (0, 0)
    # The next run (backoff over, or a restart) delivers everything, each window once.
    r2 = await rep.run_once(ignore_backoff=True)
    assert (r2.sent, r2.duplicates, r2.acked) == (2, 0, 2)
    assert sent(fake) == [(cus, "30", H0 // 1000, "fcu"), (cus, "12", H1 // 1000, "fcu")]
    assert await pending(store, ALICE) == 0
    assert await store.client.xlen(ALICE.usage_stream) == 0
    assert metrics.report_backlog._value.get() == 0


async def test_a_crash_between_send_and_ack_resends_the_same_identifier(
        store: Store, fake: FakeStripe, monkeypatch: pytest.MonkeyPatch) -> None:
    d = Driver(store, TABLE, default_plan="payg")
    cus = await linked(store, fake, ALICE)
    await d.debit(ALICE, 30, H0)
    await d.debit(ALICE, 12, H1)

    async def crash(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("killed before XACK")

    crashed = reporter(store, fake)
    monkeypatch.setattr(crashed, "_ack_group", crash)
    assert (await crashed.run_once()).failures == 1
    assert len(posts(fake)) == 1 and len(meter_events(fake)) == 1   # Stripe has it
    assert await pending(store, ALICE) == 2
    first_ident = posts(fake)[0]["identifier"]

    metrics = Metrics()
    r = await reporter(store, fake, metrics).run_once()
    assert (r.sent, r.duplicates, r.failures, r.acked) == (1, 1, 0, 2)
    assert posts(fake)[1]["identifier"] == first_ident      # the very same identifier
    assert sent(fake) == [(cus, "30", H0 // 1000, "fcu"), (cus, "12", H1 // 1000, "fcu")]
    assert await pending(store, ALICE) == 0
    assert metrics.meter_events_sent.labels("fcu", "duplicate")._value.get() == 1
    # And nothing more afterwards.
    assert (await reporter(store, fake).run_once()).sent == 0
    assert len(meter_events(fake)) == 2


async def test_a_crash_after_reading_new_entries_rereads_them_first(
        store: Store, fake: FakeStripe, monkeypatch: pytest.MonkeyPatch) -> None:
    """Crash before the send: the batch is pending; new usage arriving meanwhile does not
    change the re-sent group's identifier (pending entries are re-read alone, first)."""
    d = Driver(store, TABLE, default_plan="payg")
    await linked(store, fake, ALICE)
    await d.debit(ALICE, 30, H0)
    crashed = reporter(store, fake)

    async def crash(*args: Any, **kwargs: Any) -> bool:
        raise RuntimeError("killed before the send")

    monkeypatch.setattr(crashed, "_send", crash)
    assert (await crashed.run_once()).failures == 1
    assert posts(fake) == [] and await pending(store, ALICE) == 1
    await d.debit(ALICE, 5, H0 + 10)   # same hour, arrives after the crash
    r = await reporter(store, fake).run_once()
    assert (r.sent, r.acked) == (2, 2)
    assert [e[1] for e in sent(fake)] == ["30", "5"]


async def test_refunds_net_out(store: Store, fake: FakeStripe) -> None:
    d = Driver(store, TABLE, default_plan="payg")
    cus = await linked(store, fake, ALICE)
    # In one batch: a refunded request sends nothing; a settled one sends what it cost.
    leg = await d.debit(ALICE, 100, H0, rid="r1")
    await d.settle(leg, 100, 0, "r1", H0 + 5, 0, True, kind="refund")
    leg2 = await d.debit(ALICE, 50, H0 + 10, rid="r2")
    await d.settle(leg2, 50, 30, "r2", H0 + 20, 0, True)
    r = await reporter(store, fake).run_once()
    assert (r.sent, r.acked) == (1, 4)
    assert sent(fake) == [(cus, "30", (H0 + 20) // 1000, "fcu")]
    # Across batches: a refund of usage already reported is carried as a credit and
    # reduces later overage of the same meter and period; nothing negative is sent.
    leg3 = await d.debit(ALICE, 100, H1, rid="r3")
    assert (await reporter(store, fake).run_once()).sent == 1
    await d.settle(leg3, 100, 0, "r3", H1 + 5, 0, True, kind="refund")
    await d.debit(ALICE, 40, H1 + 10)
    r2 = await reporter(store, fake).run_once()
    assert (r2.sent, r2.acked) == (0, 2)
    await d.debit(ALICE, 70, H1 + 20)
    r3 = await reporter(store, fake).run_once()
    assert r3.sent == 1
    assert [e[1] for e in sent(fake)] == ["30", "100", "10"]
    # Billed in Stripe = overage in the period counter.
    assert sum(int(e[1]) for e in sent(fake)) == await d.period_field(ALICE, leg.period,
                                                                        "o:fcu")


async def test_test_keys_never_reach_stripe(store: Store, fake: FakeStripe) -> None:
    d = Driver(store, TABLE, default_plan="payg")
    await linked(store, fake, ALICE)
    leg = await debit_test_key(d, ALICE, 25, H0)
    assert (leg.verdict, leg.overage_units) == (1, 25)
    r = await reporter(store, fake).run_once()
    assert (r.sent, r.acked, r.failures) == (0, 1, 0)
    assert posts(fake) == [] and await pending(store, ALICE) == 0
    # Mixed with live usage: only the live units are billed.
    await debit_test_key(d, ALICE, 25, H0 + 1)
    await d.debit(ALICE, 3, H0 + 2)
    r2 = await reporter(store, fake).run_once()
    assert (r2.sent, r2.acked) == (1, 2)
    assert [e[1] for e in sent(fake)] == ["3"]


async def test_an_account_without_customer_waits(
        store: Store, fake: FakeStripe, caplog: pytest.LogCaptureFixture) -> None:
    d = Driver(store, TABLE, default_plan="payg")
    await d.debit(TEAM, 9, H0)
    metrics = Metrics()
    rep = Reporter(store, stripe_client(fake), metrics)
    r = await rep.run_once()
    assert (r.sent, r.no_customer, r.acked) == (0, 1, 0)
    assert await pending(store, TEAM) == 1 and posts(fake) == []
    assert await store.client.xlen(TEAM.usage_stream) == 1  # unreported: kept
    assert metrics.report_failures.labels("no_customer")._value.get() == 1
    await rep.run_once(ignore_backoff=True)
    warnings = [m for m in caplog.messages if "no Stripe customer" in m]
    assert len(warnings) == 1   # logged once
    cus = await linked(store, fake, TEAM)
    r2 = await rep.run_once(ignore_backoff=True)
    assert (r2.sent, r2.acked) == (1, 1)
    assert sent(fake) == [(cus, "9", H0 // 1000, "fcu")]


async def test_two_reporters_at_once_send_each_window_once(
        store: Store, fake: FakeStripe) -> None:
    d = Driver(store, TABLE, default_plan="payg")
    await linked(store, fake, ALICE)
    await linked(store, fake, TEAM)
    for i in range(40):
        await d.debit(ALICE if i % 2 else TEAM, 1 + i, H0 + i * 100_000)
    results = await asyncio.gather(*(reporter(store, fake).run_once() for _ in range(3)))
    # Whatever the interleaving, a run that found a stream busy leaves it to a later one.
    while await pending(store, ALICE) or await pending(store, TEAM) or sum(
            r.sent for r in results) < 4:
        results.append(await reporter(store, fake).run_once())
        if len(results) > 10:
            break
    idents = [p["identifier"] for p in posts(fake)]
    assert len(idents) == len(set(idents))
    assert sum(int(e[1]) for e in sent(fake)) == sum(1 + i for i in range(40))


async def test_a_dead_reporters_lease_delays_but_loses_nothing(
        store: Store, fake: FakeStripe) -> None:
    d = Driver(store, TABLE, default_plan="payg")
    await linked(store, fake, ALICE)
    await d.debit(ALICE, 6, H0)
    # A reporter that died holding the stream's lease: others wait until it expires.
    await store.client.set(ALICE.key("report-lock"), "dead", px=300)
    r = await reporter(store, fake).run_once()
    assert (r.sent, r.failures, r.backlog) == (0, 0, 1)
    await asyncio.sleep(0.4)
    r2 = await reporter(store, fake).run_once()
    assert (r2.sent, r2.backlog) == (1, 0)
    assert await store.client.exists(ALICE.key("report-lock")) == 0


def test_stream_names_and_grouping_are_pure() -> None:
    assert account_of_stream("gw:{u:alice}:usage") == ALICE
    assert account_of_stream("gw:{ws:team}:usage") == TEAM
    assert account_of_stream("gw:{x:1}:usage") is None
    assert account_of_stream("gw:stripe:usage") is None
    entries = [
        ("1-0", {"meter": "fcu", "o": "5", "t": str(H0), "period": "p", "test": "0"}),
        ("2-0", {"meter": "fcu", "o": "5", "t": str(H0), "period": "p", "test": "1"}),
        ("3-0", {"meter": "tok", "o": "7", "t": str(H0 + 1), "period": "p", "test": "0"}),
        ("4-0", {}),  # deleted while pending
        ("5-0", {"meter": "fcu", "o": "-2", "t": str(H1), "period": "p", "test": "0"}),
        ("6-0", {"meter": "fcu", "o": "4", "t": str(H0 + 2), "period": "p", "test": "0"}),
    ]
    skip, groups = group_entries(entries)
    assert skip == ["2-0", "4-0"]
    assert [(g.meter, g.hour, g.ids, g.units) for g in groups] == [
        ("fcu", H0 // HOUR_MS, ["1-0", "6-0"], 9), ("tok", H0 // HOUR_MS, ["3-0"], 7),
        ("fcu", H1 // HOUR_MS, ["5-0"], -2)]
    # A re-read of what is left after acknowledging one group gives the same identifiers.
    _, again = group_entries([e for e in entries if e[0] not in ("1-0", "6-0", "2-0")])
    assert [g.identifier(ALICE) for g in again] == [g.identifier(ALICE) for g in groups[1:]]
    assert groups[0].identifier(ALICE) != groups[0].identifier(TEAM)


def test_stripes_duplicate_answer_is_recognised() -> None:
    real = stripe.InvalidRequestError(
        "An event already exists with identifier gw-abc.", None, http_status=400)
    fake = stripe.InvalidRequestError("x", None, code="resource_already_exists",
                                      http_status=400)
    assert is_duplicate(real) and is_duplicate(fake)
    assert not is_duplicate(stripe.InvalidRequestError("No such customer", None,
                                                       code="resource_missing"))
    assert not is_duplicate(stripe.APIError("already exists with identifier", http_status=500))


async def test_streams_on_every_cluster_node_are_reported(fake: FakeStripe) -> None:
    cluster = start_cluster()
    try:
        store = open_store(cluster.url)
        try:
            d = Driver(store, TABLE, default_plan="payg")
            accounts = [Account("user", f"u{i}") for i in range(12)]  # spread over slots
            for i, a in enumerate(accounts):
                await linked(store, fake, a)
                await d.debit(a, 1 + i, H0)
            r = await reporter(store, fake).run_once()
            assert (r.streams, r.sent, r.acked, r.backlog) == (12, 12, 12, 0)
            assert sorted(int(e[1]) for e in sent(fake)) == list(range(1, 13))
            assert (await reporter(store, fake).run_once()).sent == 0
        finally:
            await store.close()
    finally:
        cluster.stop()


async def test_gateway_report_cli_against_real_redis(
        redis_server: RedisServer, fake: FakeStripe) -> None:
    store = open_store(redis_server.url)
    try:
        await store.client.flushdb()
        d = Driver(store, TABLE, default_plan="payg")
        cus = await linked(store, fake, ALICE)
        await d.debit(ALICE, 11, H0)
        await d.debit(TEAM, 3, H0)   # no customer: waits, exit code 1
        env = {**os.environ, "GATEWAY_REDIS_URL": redis_server.url,
               "STRIPE_API_KEY": API_KEY, "STRIPE_API_BASE": fake.url,
               "STRIPE_METER_EVENTS_BASE": fake.url, "GATEWAY_REPORT_HOLD_S": "0"}

        async def run(*args: str, extra: dict[str, str] | None = None
                      ) -> tuple[int, str, str]:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "report", *args, env={**env, **(extra or {})},
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode is not None
            return proc.returncode, out.decode(), err.decode()

        code, out, err = await run("--json")
        assert code == 1, err
        assert '"sent": 1' in out and '"no_customer": 1' in out
        assert sent(fake) == [(cus, "11", H0 // 1000, "fcu")]
        await linked(store, fake, TEAM)
        code, out, err = await run()
        assert code == 0, err
        assert out.startswith("1 meter events sent")
        code, out, _ = await run()
        assert (code, out.startswith("0 meter events sent")) == (0, True)
        assert len(meter_events(fake)) == 2
        # Without Stripe configured it says what it needs.
        code, _, err = await run(extra={"STRIPE_API_KEY": ""})
        assert code == 2 and "STRIPE_API_KEY" in err
    finally:
        await store.close()


RULES = """
version: 1
upstreams:
  main: {{url: "{upstream}", timeout: 5s}}
routes:
  - {{prefix: /api/, upstream: main}}
identity:
  api_key_headers: [X-Api-Key, Authorization]
meters:
  fcu: {{usd_per_unit: 0.000002}}
weights:
  default: {{meter: fcu, units: 10}}
  rules: []
plans:
  payg: {{throughput: [{{limit: 1000000, window: 60s}}], quota: {{fcu: 0}}, overage: true}}
defaults: {{user_plan: payg}}
enforce: true
"""


async def test_the_gateway_runs_the_reporter(store_url: str | None, fake: FakeStripe) -> None:
    upstream = RecordingUpstream()
    await upstream.start()
    try:
        await _gateway_reports(upstream, store_url, fake)
    finally:
        await upstream.stop()


async def _gateway_reports(upstream: RecordingUpstream, store_url: str | None,
                           fake: FakeStripe) -> None:
    async with running_gateway(RULES.format(upstream=upstream.url), store_url,
                               report_interval_s=0.2, report_hold_s=0,
                               **stripe_settings(fake)) as gw:
        runtime = gw.runtime
        assert runtime.reporter is not None
        live = await gw.new_key(user="bob")
        test = await gw.new_key(user="bob", test=True)
        await linked(runtime.store, fake, Account("user", "bob"))
        async with client(gw.url) as c:
            for secret in (live, live, test):
                r = await c.post("/api/x", headers={"X-Api-Key": secret})
                assert r.status_code == 200
        deadline = time.monotonic() + 10
        while not meter_events(fake) or runtime.metrics.report_backlog._value.get():
            assert time.monotonic() < deadline, "the reporter did not report"
            await asyncio.sleep(0.05)
        assert [e["payload"]["value"] for e in meter_events(fake)] == ["20"]
        async with httpx.AsyncClient() as admin:
            text = (await admin.get(gw.admin_url + "/metrics")).text
        assert "gateway_stripe_meter_events_sent_total" in text
        assert "gateway_stripe_report_lag_seconds" in text
