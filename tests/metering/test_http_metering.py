"""Metering through the real gateway over HTTP: decisions, headers, refunds, settlement."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import orjson
import pytest

from gateway.metering.accounts import Account
from tests.gateway_harness import ADMIN_TOKEN, RunningGateway, client, running_gateway
from tests.upstream import RecordingUpstream

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
  tokens: {{usd_per_unit: 0.000001}}
weights:
  default: {{meter: fcu, units: 1}}
  rules:
    - {{method: POST, path: /api/heavy, units: 10}}
    - {{method: POST, path: /api/huge, units: 500}}
    - {{method: GET, path: /api/free, units: 0}}
    - {{path: /api/usage, meter: tokens, reserve: 100, settle: {{json: usage.total_tokens}},
       model: {{json: model}}}}
    - {{path: /api/sse-usage, meter: tokens, reserve: 50, settle: {{json: usage.total_tokens}}}}
    - {{path: /api/forever, meter: tokens, reserve: 70, settle: {{json: usage.total_tokens}}}}
    - {{path: /api/status/*, units: 5}}
    - {{path: /api/shadow/**, units: 5, enforce: false}}
plans:
  free:
    throughput: [{{limit: 30, window: 60s, meter: fcu}}]
    quota: {{fcu: 1000, tokens: 100000}}
  tiny: {{throughput: [{{limit: 1000, window: 60s}}], quota: {{fcu: 25}}}}
  team: {{throughput: [{{limit: 1000, window: 60s}}], quota: {{fcu: 20}}}}
  wide: {{throughput: [{{limit: 1000, window: 60s}}], quota: {{fcu: 100000}}}}
defaults: {{user_plan: free}}
enforce: true
"""


@pytest.fixture
async def gw(store_url: str | None, upstream: RecordingUpstream) -> AsyncIterator[RunningGateway]:
    async with running_gateway(RULES.format(upstream=upstream.url), store_url) as g:
        yield g


async def units_of(gw: RunningGateway, scope: str, account_id: str, meter: str) -> int:
    view = await gw.runtime.ledger.view(gw.runtime.rules, gw.runtime.routing.tables,
                                        Account(scope, account_id))  # type: ignore[arg-type]
    return int(view["units"][meter])


async def eventually(read: Callable[[], Awaitable[int]], expected: int,
                     within_s: float = 5.0) -> int:
    """Poll until `read()` gives `expected` or the time is up; returns the last value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    value = await read()
    while value != expected and loop.time() < deadline:
        await asyncio.sleep(0.02)
        value = await read()
    return value


async def test_admitted_request_carries_metering_headers(gw: RunningGateway) -> None:
    key = await gw.new_key(user="ann")
    async with client(gw.url) as c:
        r = await c.post("/api/heavy", headers={"X-Api-Key": key})
    assert r.status_code == 200
    assert r.headers["x-gateway-units"] == "10"
    assert r.headers["x-gateway-account"] == "user"
    assert r.headers["ratelimit-policy"] == '"account";q=30;w=60'
    assert r.headers["ratelimit"].startswith('"account";r=20;t=')
    assert await units_of(gw, "user", "ann", "fcu") == 10


async def test_throughput_refusal_is_429_with_retry_after_and_never_reaches_upstream(
    gw: RunningGateway, upstream: RecordingUpstream
) -> None:
    key = await gw.new_key(user="bea")
    async with client(gw.url) as c:
        codes = [(await c.post("/api/heavy", headers={"X-Api-Key": key})).status_code
                 for _ in range(3)]
        before = len(upstream.requests)
        r = await c.post("/api/heavy", headers={"X-Api-Key": key})
    assert codes == [200, 200, 200]
    assert r.status_code == 429
    assert r.headers["content-type"] == "application/problem+json"
    assert 1 <= int(r.headers["retry-after"]) <= 63
    body = r.json()
    assert body["code"] == "RATE_LIMITED"
    assert (body["scope"], body["limit"], body["remaining"]) == ("user", 30, 0)
    assert body["retry_after"] == int(r.headers["retry-after"])
    assert r.headers["ratelimit-policy"] == '"account";q=30;w=60'
    assert len(upstream.requests) == before
    assert await units_of(gw, "user", "bea", "fcu") == 30


async def test_refusal_is_sent_before_the_request_body_is_read(gw: RunningGateway) -> None:
    key = await gw.new_key(user="cat")
    async with client(gw.url) as c:
        for _ in range(3):
            await c.post("/api/heavy", headers={"X-Api-Key": key})
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.gateway.port())
    writer.write((f"POST /api/heavy HTTP/1.1\r\nHost: h\r\nX-Api-Key: {key}\r\n"
                  "Content-Length: 100000000\r\n\r\n").encode() + b"x" * 1000)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 429")


async def test_quota_exhausted_is_402_and_cost_beyond_any_window_is_413(
    gw: RunningGateway,
) -> None:
    key = await gw.new_key(user="dan")
    await gw.runtime.ledger.set_plan(gw.runtime.rules, Account("user", "dan"), "tiny")
    async with client(gw.url) as c:
        ok = [(await c.post("/api/heavy", headers={"X-Api-Key": key})).status_code
              for _ in range(2)]
        money = await c.post("/api/heavy", headers={"X-Api-Key": key})
        huge_key = await gw.new_key(user="eve")
        huge = await c.post("/api/huge", headers={"X-Api-Key": huge_key})
    assert ok == [200, 200]
    assert money.status_code == 402
    assert money.json()["code"] == "QUOTA_EXHAUSTED"
    assert money.json()["scope"] == "user"
    assert 0 < money.json()["reset"] <= 31 * 86400  # seconds until the quota comes back
    assert "retry-after" not in money.headers
    assert huge.status_code == 413
    assert huge.json()["code"] == "COST_EXCEEDS_LIMIT"


async def test_workspace_pays_first_then_the_user(gw: RunningGateway) -> None:
    key = await gw.new_key(user="fay", workspace="acme")
    await gw.runtime.ledger.set_plan(gw.runtime.rules, Account("workspace", "acme"), "team")
    async with client(gw.url) as c:
        payers = [(await c.post("/api/heavy", headers={"X-Api-Key": key})).headers[
            "x-gateway-account"] for _ in range(3)]
    assert payers == ["workspace", "workspace", "user"]
    assert await units_of(gw, "workspace", "acme", "fcu") == 20
    assert await units_of(gw, "user", "fay", "fcu") == 10


async def test_upstream_5xx_and_connect_failures_refund_exactly(
    gw: RunningGateway, store_url: str | None
) -> None:
    key = await gw.new_key(user="gus")
    async with client(gw.url) as c:
        ok = await c.get("/api/status/200", headers={"X-Api-Key": key})
        failed = await c.get("/api/status/503", headers={"X-Api-Key": key})
        client_error = await c.get("/api/status/404", headers={"X-Api-Key": key})
    assert (ok.status_code, failed.status_code, client_error.status_code) == (200, 503, 404)
    assert failed.headers["x-gateway-units"] == "5"
    # The 503 was refunded (just after its response went out).
    assert await eventually(lambda: units_of(gw, "user", "gus", "fcu"), 10) == 10
    from tests.redis_servers import free_port

    dead = RULES.format(upstream=f"http://127.0.0.1:{free_port()}")
    async with running_gateway(dead, store_url) as gw2:
        key2 = await gw2.new_key(user="hal")
        async with client(gw2.url) as c:
            r = await c.post("/api/heavy", headers={"X-Api-Key": key2})
        assert r.status_code == 502
        assert await units_of(gw2, "user", "hal", "fcu") == 0


async def test_settlement_from_json_body_and_header_and_model_breakdown(
    gw: RunningGateway,
) -> None:
    key = await gw.new_key(user="ida")
    async with client(gw.url) as c:
        r = await c.post("/api/usage?tokens=37&model=llama-70b", headers={"X-Api-Key": key})
    assert r.status_code == 200
    assert r.headers["x-gateway-units"] == "100"  # the reserve, charged up front
    assert await eventually(lambda: units_of(gw, "user", "ida", "tokens"), 37) == 37
    async with client(gw.url) as c:
        me = (await c.get("/usage/me", headers={"X-Api-Key": key})).json()
    models = me["usage"]["breakdown_by_model"]
    assert models == [{"model": "llama-70b", "name": "llama-70b", "requests": 1,
                       "units": {"tokens": 37}}]
    assert me["usage"]["total_requests"] == me["usage"]["requests"] == 1


async def test_settlement_from_the_final_sse_usage_chunk(gw: RunningGateway) -> None:
    key = await gw.new_key(user="jon")
    async with client(gw.url) as c, c.stream(
        "GET", "/api/sse-usage?n=20&tokens=42", headers={"X-Api-Key": key}
    ) as r:
        body = b"".join([chunk async for chunk in r.aiter_raw()])
    assert body.endswith(b"data: [DONE]\n\n")
    # Settlement commits just after the last byte has gone to the client.
    assert await eventually(lambda: units_of(gw, "user", "jon", "tokens"), 42) == 42


async def test_client_leaving_mid_stream_pays_the_reserve_or_what_was_reported(
    gw: RunningGateway, upstream: RecordingUpstream
) -> None:
    key = await gw.new_key(user="kim")
    async with client(gw.url) as c, c.stream(
        "GET", "/api/forever?ms=5", headers={"X-Api-Key": key}
    ) as r:
        async for _ in r.aiter_raw():
            break
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while upstream.open_streams and loop.time() < deadline:
        await asyncio.sleep(0.05)
    # Nothing reported: the reserve stands.
    assert await eventually(lambda: units_of(gw, "user", "kim", "tokens"), 70) == 70
    async with client(gw.url) as c, c.stream(
        "GET", "/api/sse-usage?n=3&tokens=9&ms=100", headers={"X-Api-Key": key}
    ) as r:
        seen = b""
        async for chunk in r.aiter_raw():
            seen += chunk
            if b"total_tokens" in seen:
                break  # leave after the usage chunk, before [DONE]
    assert await eventually(lambda: units_of(gw, "user", "kim", "tokens"), 79) == 79


async def test_repeated_request_id_is_charged_once(gw: RunningGateway) -> None:
    key = await gw.new_key(user="lee")
    async with client(gw.url) as c:
        for _ in range(3):
            r = await c.post("/api/heavy", headers={"X-Api-Key": key, "X-Request-Id": "op-1"})
            assert r.status_code == 200
            assert r.headers["x-request-id"] == "op-1"
    assert await units_of(gw, "user", "lee", "fcu") == 10


async def test_shadow_rule_proxies_counts_and_charges_nothing(gw: RunningGateway) -> None:
    key = await gw.new_key(user="max")
    await gw.runtime.ledger.set_plan(gw.runtime.rules, Account("user", "max"), "tiny")
    async with client(gw.url) as c:
        codes = [(await c.get("/api/shadow/x", headers={"X-Api-Key": key})).status_code
                 for _ in range(8)]
        metrics = (await c.get(gw.admin_url + "/metrics")).text
    assert codes == [200] * 8
    assert await units_of(gw, "user", "max", "fcu") == 0
    # tiny has 25 units of quota: the 6th shadow request (30 units) would have been refused.
    assert 'gateway_shadow_would_reject_total{code="QUOTA_EXHAUSTED",route="/api/"} 3.0' \
        in metrics


async def test_a_keys_own_limit_refuses_with_scope_key(gw: RunningGateway) -> None:
    _, secret = await gw.runtime.registry.create(user="quinn", limit=20, window_s=60)
    async with client(gw.url) as c:
        codes = [(await c.post("/api/heavy", headers={"X-Api-Key": secret})).status_code
                 for _ in range(3)]
        r = await c.post("/api/heavy", headers={"X-Api-Key": secret})
        other = await gw.new_key(user="quinn")  # the same user's other key is not limited
        ok = await c.post("/api/heavy", headers={"X-Api-Key": other})
    assert codes == [200, 200, 429]
    body = r.json()
    assert (body["code"], body["scope"], body["limit"]) == ("RATE_LIMITED", "key", 20)
    assert r.headers["ratelimit-policy"] == '"key";q=20;w=60'
    assert ok.status_code == 200
    assert await units_of(gw, "user", "quinn", "fcu") == 30


async def test_a_keys_own_limit_holds_across_the_cascade(gw: RunningGateway) -> None:
    """A workspace key's own limit is the key's: when the workspace refuses for it, the
    user's budget does not take over (it would count the key afresh)."""
    await gw.runtime.ledger.set_plan(gw.runtime.rules, Account("workspace", "wk"), "wide")
    _, secret = await gw.runtime.registry.create(user="rae", workspace="wk", limit=20,
                                                 window_s=60)
    async with client(gw.url) as c:
        answers = [await c.post("/api/heavy", headers={"X-Api-Key": secret})
                   for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 429, 429]
    assert {r.headers["x-gateway-account"] for r in answers[:2]} == {"workspace"}
    body = answers[2].json()
    assert (body["code"], body["scope"], body["limit"]) == ("RATE_LIMITED", "key", 20)
    assert int(answers[2].headers["retry-after"]) > 0
    assert await units_of(gw, "workspace", "wk", "fcu") == 20
    assert await units_of(gw, "user", "rae", "fcu") == 0


async def test_free_requests_are_not_metered(gw: RunningGateway) -> None:
    key = await gw.new_key(user="ned")
    async with client(gw.url) as c:
        r = await c.get("/api/free", headers={"X-Api-Key": key})
    assert r.status_code == 200
    assert "x-gateway-units" not in r.headers
    assert await units_of(gw, "user", "ned", "fcu") == 0


async def test_usage_me_reports_plan_quota_credits_usage_and_gauges(gw: RunningGateway) -> None:
    key = await gw.new_key(user="oli", workspace="w1")
    await gw.runtime.ledger.grant_credits(Account("user", "oli"), 1_500_000)
    async with client(gw.url) as c:
        await c.post("/api/heavy", headers={"X-Api-Key": key})
        await c.get("/api/status/200", headers={"X-Api-Key": key})
        r = await c.get("/usage/me", headers={"X-Api-Key": key})
        anonymous = await c.get("/usage/me")
    assert anonymous.status_code == 401
    me = r.json()
    assert (me["user"], me["workspace"], me["paying_scope"], me["plan"]) == (
        "oli", "w1", "user", "free")
    fcu = next(q for q in me["quota"] if q["meter"] == "fcu")
    assert (fcu["total"], fcu["used"], fcu["remaining"]) == (1000, 15, 985)
    assert (me["credits_micro_usd"], me["credits_usd"]) == (1_500_000, "1.500000")
    assert me["usage"]["requests"] == 2
    routes = me["usage"]["breakdown_by_route"]
    assert routes == [{"name": "/api/", "requests": 2, "units": {"fcu": 15}}]
    assert me["gauges"]["user"] == [{"used": 15, "limit": 30, "remaining": 15,
                                     "window_seconds": 60, "meter": "fcu"}]
    assert me["gauges"]["workspace"] == []
    assert me["billing_cycle_start"].endswith("T00:00:00Z")


async def test_admin_subscriptions_credits_and_account_api(gw: RunningGateway) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(base_url=gw.admin_url, headers=auth) as a:
        sub = await a.put("/admin/subscriptions/workspace/acme", json={"plan": "team"})
        bad_plan = await a.put("/admin/subscriptions/workspace/acme", json={"plan": "gold"})
        grant = await a.post("/admin/accounts/workspace/acme/credits", json={"usd": "12.5"})
        bad_usd = await a.post("/admin/accounts/workspace/acme/credits", json={"usd": -1})
        float_usd = await a.post("/admin/accounts/workspace/acme/credits", json={"usd": 0.1})
        view = await a.get("/admin/accounts/workspace/acme")
        nobody = await httpx.AsyncClient(base_url=gw.admin_url).get(
            "/admin/accounts/workspace/acme")
    assert sub.status_code == 200 and sub.json()["plan"] == "team"
    assert (bad_plan.status_code, bad_plan.json()["code"]) == (400, "INVALID_PLAN")
    assert grant.status_code == 201 and grant.json()["balance_micro_usd"] == 12_500_000
    assert (bad_usd.status_code, bad_usd.json()["code"]) == (400, "BAD_REQUEST")
    assert float_usd.json()["balance_micro_usd"] == 12_600_000
    body = view.json()
    assert (body["plan"], body["credits_micro_usd"]) == ("team", 12_600_000)
    assert body["windows"] == [{"limit": 1000, "window_seconds": 60, "used": 0,
                                "remaining": 1000, "reset_seconds": 0, "meter": None}]
    assert nobody.status_code == 401


async def test_admin_account_api_refuses_bad_input_with_problems(gw: RunningGateway) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(base_url=gw.admin_url, headers=auth) as a:
        huge = await a.post("/admin/accounts/user/ann/credits", json={"usd": "1e999999999"})
        number = await a.post("/admin/accounts/user/ann/credits",
                              content=b'{"usd": 1e999999999}')
        big = await a.post("/admin/accounts/user/ann/credits",
                           content=b'{"usd": "' + b"9" * 5_000_000 + b'"}')
        bad_id = await a.get("/admin/accounts/user/a}b{c")
    assert (huge.status_code, huge.json()["code"]) == (400, "BAD_REQUEST")
    assert (number.status_code, number.json()["code"]) == (400, "BAD_REQUEST")
    assert (big.status_code, big.json()["code"]) == (413, "PAYLOAD_TOO_LARGE")
    assert (bad_id.status_code, bad_id.json()["code"]) == (400, "BAD_REQUEST")
    assert await gw.runtime.store.client.get(Account("user", "ann").credits_key) is None


async def test_conservation_over_http(gw: RunningGateway, store_url: str | None) -> None:
    """Units charged (stream) = units counted = units /usage/me shows, over a mixed run."""
    key = await gw.new_key(user="pat")
    paths = ["/api/heavy", "/api/status/200", "/api/status/500", "/api/usage?tokens=13",
             "/api/sse-usage?tokens=21", "/api/free"]
    async with client(gw.url) as c:
        results = await asyncio.gather(*(
            c.post(paths[i % len(paths)], headers={"X-Api-Key": key}) for i in range(30)))
        assert {r.status_code for r in results} <= {200, 429, 500}
        admitted_units = sum(int(r.headers.get("x-gateway-units", 0)) for r in results
                             if r.status_code == 200 and "tokens" not in str(r.url))

        async def fcu_recorded() -> int:
            entries = await gw.runtime.store.client.xrange(Account("user", "pat").usage_stream)
            return sum(int(f[b"units"]) for _, f in entries if f[b"meter"] == b"fcu")

        # Refunds and settlements land just after their responses.
        assert await eventually(fcu_recorded, admitted_units) == admitted_units
        me = (await c.get("/usage/me", headers={"X-Api-Key": key})).json()
    entries = await gw.runtime.store.client.xrange(Account("user", "pat").usage_stream)
    by_meter: dict[str, int] = {}
    for _, f in entries:
        meter = f[b"meter"].decode()
        by_meter[meter] = by_meter.get(meter, 0) + int(f[b"units"])
    assert me["usage"]["units"] == {"fcu": by_meter.get("fcu", 0),
                                    "tokens": by_meter.get("tokens", 0)}
    assert by_meter.get("fcu", 0) == admitted_units
    assert orjson.dumps(me)  # the document is JSON-serialisable as served
