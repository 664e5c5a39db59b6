"""Settlements the store could not take: journaled with everything settle.lua needs and
applied once when Redis is back (a repeat moves nothing)."""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

import orjson

from gateway.caller import Caller
from gateway.metering.accounts import Account
from gateway.metering.charge import Charge
from gateway.metering.engine import MeteringEngine
from gateway.metering.journal import Journal, JournalEntry
from gateway.metering.pending import PendingSettlement
from gateway.metering.plans import PlanTables
from gateway.metrics import Metrics
from gateway.rules import parse_rules
from gateway.store import Store, open_store
from tests.redis_servers import start_redis

RULES = """
version: 1
upstreams: {main: {url: "http://127.0.0.1:9", timeout: 5s}}
routes: [{prefix: /, upstream: main}]
meters: {fcu: {usd_per_unit: 0.000002}}
weights:
  default: {meter: fcu, units: 10}
  rules:
    - {path: /chat, meter: fcu, reserve: 100, settle: {json: usage.total_tokens}}
plans: {big: {throughput: [{limit: 1000000, window: 60s}], quota: {fcu: 1000}}}
defaults: {user_plan: big}
"""
USER = Account("user", "pat")
PENDING = PendingSettlement("user", "pat", "pat", None, "k1", None, None, False, "fcu", 10, 10,
                            0, 0, 0, 0, 0, "2026-12", "big", "1-0", 1, 0, "refund", "/", "r",
                            "")


async def period_counts(store: Store) -> dict[str, int]:
    # (store.read: the pooled connection may predate a restart of Redis.)
    keys = await store.read(lambda: store.client.keys(USER.period_prefix + "*"))
    assert len(keys) == 1
    fields = await store.read(lambda: store.client.hgetall(keys[0]))
    return {k.decode(): int(v) for k, v in fields.items()
            if k.decode() in ("u:fcu", "q:fcu", "n")}


async def stream_units(store: Store) -> list[tuple[str, int]]:
    entries = await store.read(lambda: store.client.xrange(USER.usage_stream))
    return [(f[b"kind"].decode(), int(f[b"units"])) for _, f in entries]


async def test_a_refund_the_store_missed_is_applied_once_when_it_is_back(
    tmp_path: Path,
) -> None:
    # A Redis that keeps its data over a restart (the outage loses nothing of its own).
    persist = ("--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp_path))
    server = start_redis(*persist)
    store = open_store(server.url, deadline_s=0.3)
    rules = parse_rules(RULES, filename="r.yaml")
    tables = PlanTables.build(rules)
    engine = MeteringEngine(store)
    journal_file = tmp_path / "journal.jsonl"
    journal = Journal(str(journal_file))
    caller = Caller(user="pat", workspace=None, key_id="k1")
    try:
        charge = Charge(engine, Metrics(), rules, tables, caller, rules.weigh("GET", "/x"),
                        "/", "r1", defer=journal.record_settlement)
        assert (await charge.admit(idempotent=False)).charged
        assert await period_counts(store) == {"u:fcu": 10, "q:fcu": 10, "n": 1}
        server.stop()  # down after the admit, before the upstream's 502 is refunded
        await charge.close(None, upstream_failed=True)
        assert charge.settled_units == 0  # what it will cost once the refund is applied
        [pending] = journal.entries
        assert isinstance(pending, PendingSettlement)
        assert (pending.kind, pending.actual, pending.units, pending.quota_units) == (
            "refund", 0, 10, 10)
        assert orjson.loads(journal_file.read_bytes())["settle"]["request_id"] == "r1"

        server = start_redis(*persist, port=server.port)
        # A restarted gateway reads it back from the file and applies it, once.
        again = Journal(str(journal_file))
        assert again.entries == [pending]
        settled: list[int] = []
        assert await again.replay(engine, rules, tables,
                                  on_settled=lambda p, s: settled.append(s.delta)) == 1
        assert settled == [-10]
        assert await period_counts(store) == {"u:fcu": 0, "q:fcu": 0, "n": 1}
        assert await stream_units(store) == [("debit", 10), ("refund", -10)]
        assert journal_file.read_bytes() == b"" and not len(again)
        # The same settlement once more (a crash between applying and rewriting the
        # file): settle.lua's marker moves nothing.
        assert (await engine.settle_pending(rules, tables, pending)).delta == 0
        assert await period_counts(store) == {"u:fcu": 0, "q:fcu": 0, "n": 1}
    finally:
        await store.close()
        server.stop()


async def test_a_refund_that_ran_late_is_not_applied_twice() -> None:
    server = start_redis()
    store = open_store(server.url, deadline_s=0.3)
    rules = parse_rules(RULES, filename="r.yaml")
    tables = PlanTables.build(rules)
    engine = MeteringEngine(store)
    journal = Journal(None)  # in memory only
    caller = Caller(user="pat", workspace=None, key_id="k1")
    try:
        charge = Charge(engine, Metrics(), rules, tables, caller, rules.weigh("GET", "/x"),
                        "/", "r2", defer=journal.record_settlement)
        assert (await charge.admit(idempotent=False)).charged
        # (Loaded, as on a gateway that has settled before: the stalled call is a real
        # settlement, not a NOSCRIPT that would have done nothing.)
        await store.client.script_load(engine.scripts.settle.script)
        # Redis stalls past the deadline with the refund on its way: kept.
        server.process.send_signal(signal.SIGSTOP)
        try:
            await charge.close(None, upstream_failed=True)
        finally:
            server.process.send_signal(signal.SIGCONT)
        assert len(journal) == 1
        # The stalled refund ran when Redis resumed; the replay finds its marker.
        settled: list[int] = []
        assert await journal.replay(engine, rules, tables,
                                    on_settled=lambda p, s: settled.append(s.delta)) == 1
        assert settled == [0]
        assert await period_counts(store) == {"u:fcu": 0, "q:fcu": 0, "n": 1}
        assert await stream_units(store) == [("debit", 10), ("refund", -10)]
    finally:
        await store.close()
        server.stop()


def test_unreadable_and_foreign_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    good = JournalEntry(rid="a", user="u", workspace=None, key_id=None, test=False,
                        meter="fcu", units=3, route="/", ts_ms=1)
    path.write_bytes(orjson.dumps(dataclasses.asdict(good)) + b"\n"
                     + b'{"settle": {"scope": "galaxy"}}\n' + b"[1, 2]\n" + b"not json\n"
                     + orjson.dumps({**dataclasses.asdict(good), "units": "3"}) + b"\n"
                     + orjson.dumps({**dataclasses.asdict(good), "test": 1}) + b"\n"
                     + orjson.dumps({"settle": {**dataclasses.asdict(PENDING), "actual": True}})
                     + b"\n" + orjson.dumps({"settle": dataclasses.asdict(PENDING)}) + b"\n")
    # The good lines in their order; the rest (wrong shapes or types) skipped, so no
    # entry can hold the replay back.
    assert Journal(str(path)).entries == [good, PENDING]
