"""store_failure: open — requests admitted while Redis is down are journaled and replayed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import orjson
import pytest

from gateway.config import SettingsError
from gateway.errors import StoreUnavailable
from gateway.metering.accounts import Account
from gateway.metering.journal import Journal, JournalEntry
from tests.gateway_harness import RunningGateway, client, running_gateway
from tests.redis_servers import start_redis
from tests.upstream import RecordingUpstream

RULES = """
version: 1
upstreams:
  main: {{url: "{upstream}", timeout: 5s}}
routes:
  - {{prefix: /api/, upstream: main}}
identity:
  api_key_headers: [X-Api-Key]
meters:
  fcu: {{usd_per_unit: 0.000002}}
weights:
  default: {{meter: fcu, units: 10}}
  rules: []
plans:
  free: {{throughput: [{{limit: 15, window: 60s}}], quota: {{fcu: 100000}}}}
  tiny: {{throughput: [{{limit: 1000, window: 60s}}], quota: {{fcu: 25}}}}
defaults: {{user_plan: free}}
store_failure: {policy}
"""
USER = Account("user", "jo")


async def fcu_in_stream(gw: RunningGateway) -> int:
    store = gw.runtime.store
    entries = await store.read(lambda: store.client.xrange(USER.usage_stream))
    return sum(int(f[b"units"]) for _, f in entries)


async def test_requests_during_an_outage_are_admitted_journaled_and_replayed(
    upstream: RecordingUpstream, tmp_path: Path
) -> None:
    server = start_redis()
    journal_file = tmp_path / "journal.jsonl"
    rules = RULES.format(upstream=upstream.url, policy="open")
    try:
        async with running_gateway(rules, server.url, journal_path=str(journal_file),
                                   key_cache_ttl_s=5.0, journal_replay_interval_s=3600,
                                   store_deadline_s=0.2) as gw:
            key = await gw.new_key(user="jo")
            async with client(gw.url) as c:
                assert (await c.get("/api/echo", headers={"X-Api-Key": key})).status_code \
                    == 200  # the key is cached from here on
                server.stop()
                during = [await c.get("/api/echo", headers={"X-Api-Key": key})
                          for _ in range(3)]
            assert [r.status_code for r in during] == [200, 200, 200]
            assert len(gw.runtime.journal) == 3
            lines = journal_file.read_bytes().splitlines()
            assert [orjson.loads(x)["units"] for x in lines] == [10, 10, 10]
            async with httpx.AsyncClient() as a:
                metrics = (await a.get(gw.admin_url + "/metrics")).text
            assert 'gateway_store_failure_decisions_total{policy="open"} 3.0' in metrics
            assert "gateway_journal_backlog 3.0" in metrics

            assert await gw.runtime.replay_journal() == 0  # still down: nothing lost
            assert len(gw.runtime.journal) == 3
            server = start_redis(port=server.port)  # back, and empty
            assert await gw.runtime.replay_journal() == 3
            # Windows are not replayed (15/min would refuse the third), money is.
            assert await fcu_in_stream(gw) == 30
            assert journal_file.read_bytes() == b""
            assert await gw.runtime.replay_journal() == 0
    finally:
        server.stop()


async def test_replay_is_idempotent_and_books_what_no_pool_can_pay(
    upstream: RecordingUpstream, redis_server: object, tmp_path: Path
) -> None:
    journal_file = tmp_path / "journal.jsonl"
    rules = RULES.format(upstream=upstream.url, policy="open")
    url = redis_server.url  # type: ignore[attr-defined]
    async with running_gateway(rules, url, journal_path=str(journal_file),
                               journal_replay_interval_s=3600) as gw:
        await gw.runtime.ledger.set_plan(gw.runtime.rules, USER, "tiny")  # quota 25

        entries = [JournalEntry(rid=f"r{i}", user="jo", workspace=None, key_id="k", test=False,
                                meter="fcu", units=10, route="/api/", ts_ms=0)
                   for i in range(3)]
        for e in entries:
            gw.runtime.journal.record(e)
        assert await gw.runtime.replay_journal() == 3
        # 20 from quota, and the third 10 booked against it although only 5 were left.
        assert await fcu_in_stream(gw) == 30
        view = await gw.runtime.ledger.view(gw.runtime.rules, gw.runtime.routing.tables, USER)
        assert view["quota"][0]["used"] == 30
        # A crash after replaying but before the journal was trimmed: the same entries
        # come back, and are recognised.
        for e in entries:
            gw.runtime.journal.record(e)
        assert await gw.runtime.replay_journal() == 3
        assert await fcu_in_stream(gw) == 30


async def test_a_journal_left_by_a_previous_process_is_replayed_at_start(
    upstream: RecordingUpstream, redis_server: object, tmp_path: Path
) -> None:
    journal_file = tmp_path / "journal.jsonl"
    journal_file.write_bytes(
        orjson.dumps({"rid": "old", "user": "jo", "workspace": None, "key_id": None,
                      "test": False, "meter": "fcu", "units": 10, "route": "/api/",
                      "ts_ms": 1}) + b"\n" + b"{not json\n")
    assert len(Journal(str(journal_file))) == 1  # the unreadable line is reported, skipped
    rules = RULES.format(upstream=upstream.url, policy="open")
    url = redis_server.url  # type: ignore[attr-defined]
    async with running_gateway(rules, url, journal_path=str(journal_file),
                               journal_replay_interval_s=0.05) as gw:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while len(gw.runtime.journal) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert await fcu_in_stream(gw) == 10


async def test_store_failure_closed_refuses_with_503(upstream: RecordingUpstream) -> None:
    server = start_redis()
    rules = RULES.format(upstream=upstream.url, policy="closed")
    try:
        async with running_gateway(rules, server.url, key_cache_ttl_s=5.0,
                                   store_deadline_s=0.2) as gw:
            key = await gw.new_key(user="jo")
            async with client(gw.url) as c:
                await c.get("/api/echo", headers={"X-Api-Key": key})
                server.stop()
                r = await c.get("/api/echo", headers={"X-Api-Key": key})
            assert (r.status_code, r.json()["code"]) == (503, "STORE_UNAVAILABLE")
            assert len(gw.runtime.journal) == 0
    finally:
        server.stop()


def test_an_unwritable_journal_is_refused_at_start_up(tmp_path: Path) -> None:
    # A directory where the file should be: unwritable for anyone, root included.
    target = tmp_path / "journal.jsonl"
    target.mkdir()
    with pytest.raises(SettingsError, match="GATEWAY_JOURNAL_PATH"):
        Journal(str(target))


def test_a_request_the_journal_cannot_keep_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal(str(path))
    path.unlink()
    path.mkdir()  # now unwritable as a file
    entry = JournalEntry(rid="r", user="u", workspace=None, key_id=None, test=False,
                         meter="fcu", units=1, route="/", ts_ms=1)
    with pytest.raises(StoreUnavailable):
        journal.record(entry)
    assert len(journal) == 0  # nothing to replay: it was not served


async def test_a_refund_the_store_missed_is_journaled_and_replayed(
    upstream: RecordingUpstream, tmp_path: Path
) -> None:
    """Redis goes down while the upstream works on a request, which then fails (502):
    the refund cannot be made at the response, so it is journaled and applied once
    Redis is back — the caller is not left paying for a failed request."""
    persist = ("--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp_path))
    server = start_redis(*persist)
    rules = RULES.format(upstream=upstream.url, policy="closed")
    try:
        async with running_gateway(rules, server.url,
                                   journal_path=str(tmp_path / "journal.jsonl"),
                                   journal_replay_interval_s=3600,
                                   store_deadline_s=0.2) as gw:
            key = await gw.new_key(user="jo")
            async with client(gw.url) as c:
                failing = asyncio.ensure_future(
                    c.get("/api/status/502?ms=600", headers={"X-Api-Key": key}))
                await asyncio.sleep(0.3)  # admitted (10 units), the upstream still busy
                assert await fcu_in_stream(gw) == 10
                server.stop()
                assert (await failing).status_code == 502
            # The refund is tried after the response has gone (within the store's
            # deadline), so it is journaled a moment later.
            for _ in range(100):
                if len(gw.runtime.journal):
                    break
                await asyncio.sleep(0.02)
            assert len(gw.runtime.journal) == 1
            server = start_redis(*persist, port=server.port)
            assert await gw.runtime.replay_journal() == 1
            assert len(gw.runtime.journal) == 0
            assert await fcu_in_stream(gw) == 0  # the debit's 10, the refund's -10
            async with httpx.AsyncClient() as a:
                metrics = (await a.get(gw.admin_url + "/metrics")).text
            assert 'gateway_settlements_total{kind="refund",meter="fcu"} 1.0' in metrics
            assert 'gateway_refunded_units_total{meter="fcu"} 10.0' in metrics
    finally:
        server.stop()

