"""Budget alerts: 80 % / 100 % once per threshold per period, by webhook and by email."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from gateway.billing.alerts import (
    AlertChecker,
    marker_key,
    parse_smtp_url,
    resolves_publicly,
)
from gateway.billing.budget import valid_webhook
from gateway.metering.accounts import Account
from tests.fakes.smtp_sink import SmtpSink
from tests.gateway_harness import RunningGateway, client, running_gateway
from tests.upstream import RecordingUpstream

T_NOV = 1_795_000_000_000   # 2026-11-18
T_DEC = 1_796_200_000_000   # 2026-12-02

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


@dataclass
class HookReceiver:
    """A raw asyncio HTTP server recording every POST body; `fail` answers 500."""

    posts: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    fail: bool = False
    port: int = 0
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                hdrs = {k.strip().lower(): v.strip() for k, _, v in
                        (ln.partition(":") for ln in lines[1:] if ln)}
                body = await reader.readexactly(int(hdrs.get("content-length", "0")))
                status = b"500 Internal Server Error" if self.fail else b"200 OK"
                if not self.fail:
                    self.posts.append(orjson.loads(body))
                    self.headers.append(hdrs)
                writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def hooks() -> AsyncIterator[HookReceiver]:
    h = HookReceiver()
    await h.start()
    yield h
    await h.stop()


@pytest.fixture
async def smtp() -> AsyncIterator[SmtpSink]:
    s = SmtpSink()
    await s.start()
    yield s
    await s.stop()


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture
async def gw(store_url: str | None, upstream: RecordingUpstream, smtp: SmtpSink
             ) -> AsyncIterator[RunningGateway]:
    async with running_gateway(RULES.format(upstream=upstream.url), store_url,
                               alert_interval_s=0, smtp_url=smtp.url,
                               alert_from="billing@gw.test",
                               alert_allow_private=True) as g:  # the hooks are on loopback
        clock = Clock(T_NOV)
        g.runtime.clock_ms = clock
        g.runtime.engine.clock_ms = clock
        yield g


def set_time(gw: RunningGateway, now: int) -> None:
    clock = gw.runtime.clock_ms
    assert isinstance(clock, Clock)
    clock.now = now


async def setup_budget(gw: RunningGateway, hooks: HookReceiver, user: str = "ann",
                       email: str | None = "ann@example.com") -> str:
    _, secret = await gw.runtime.registry.create(user=user, role="billing")
    body: dict[str, object] = {"monthly_cap_usd": "0.0001", "alert_webhook": hooks.url}
    if email:
        body["alert_email"] = email
    async with client(gw.url) as c:
        r = await c.post("/billing/budget", headers={"X-Api-Key": secret}, json=body)
    assert r.status_code == 200, r.text
    return secret


async def spend(gw: RunningGateway, secret: str, requests: int) -> None:
    """Each request is 10 units of overage = 20 µ$ (the cap is 100 µ$)."""
    async with client(gw.url) as c:
        for _ in range(requests):
            r = await c.get("/api/x", headers={"X-Api-Key": secret})
            assert r.status_code == 200


def sent(gw: RunningGateway, threshold: str, channel: str) -> float:
    value = gw.runtime.metrics.registry.get_sample_value(
        "gateway_budget_alerts_sent_total", {"threshold": threshold, "channel": channel})
    return value or 0.0


def failed(gw: RunningGateway, threshold: str, channel: str) -> float:
    value = gw.runtime.metrics.registry.get_sample_value(
        "gateway_budget_alert_failures_total", {"threshold": threshold, "channel": channel})
    return value or 0.0


async def test_thresholds_fire_exactly_once_across_runs_and_restart(
    gw: RunningGateway, hooks: HookReceiver, smtp: SmtpSink
) -> None:
    secret = await setup_budget(gw, hooks)
    checker = gw.runtime.alert_checker
    await spend(gw, secret, 3)                       # 60 µ$: 60 %
    assert await checker.run_once() == []
    await spend(gw, secret, 1)                       # 80 µ$: exactly 80 %
    first = await checker.run_once()
    assert [a.threshold for a in first] == [80]
    assert await checker.run_once() == []            # a second run sends nothing
    assert await AlertChecker(gw.runtime).run_once() == []  # nor a restarted process
    assert hooks.posts == [{
        "scope": "user", "id": "ann", "threshold": 80, "spend_usd": "0.000080",
        "cap_usd": "0.000100", "period": "2026-11", "period_start": "2026-11-01T00:00:00Z",
        "period_end": "2026-12-01T00:00:00Z"}]
    assert hooks.headers[0]["x-gateway-alert-id"] == "user:ann:2026-11:100:80"
    assert len(smtp.messages) == 1
    mail = smtp.messages[0]
    assert (mail.sender, mail.recipients) == ("billing@gw.test", ["ann@example.com"])
    msg = mail.parsed()
    assert " ".join(str(msg["Subject"]).split()) == (  # long headers come folded
        "Budget alert: 80% of your budget cap (user ann, 2026-11-01 to 2026-12-01)")
    assert "$0.000080" in str(msg.get_payload())
    await spend(gw, secret, 1)                       # 100 µ$: the cap
    restarted = AlertChecker(gw.runtime)
    assert [a.threshold for a in await restarted.run_once()] == [100]
    assert await restarted.run_once() == []
    await restarted.close()
    assert await checker.run_once() == []
    await spend(gw, secret, 2)                       # beyond the cap: nothing more
    assert await checker.run_once() == []
    assert [p["threshold"] for p in hooks.posts] == [80, 100]
    assert hooks.posts[1]["spend_usd"] == "0.000100"
    assert [str(m.parsed()["Subject"]).strip()[:17] for m in smtp.messages] == [
        "Budget alert: 80%", "Budget alert: 100"]
    assert (sent(gw, "80", "webhook"), sent(gw, "80", "email"),
            sent(gw, "100", "webhook"), sent(gw, "100", "email")) == (1, 1, 1, 1)
    marker = await gw.runtime.store.client.get(marker_key(Account("user", "ann"), "2026-11",
                                                          100, 80))
    assert marker == b"sent"


async def test_jump_past_both_thresholds_sends_both_once(
    gw: RunningGateway, hooks: HookReceiver, smtp: SmtpSink
) -> None:
    secret = await setup_budget(gw, hooks, email=None)
    await spend(gw, secret, 6)                       # 120 µ$
    first = await gw.runtime.alert_checker.run_once()
    assert [a.threshold for a in first] == [80, 100]
    assert await gw.runtime.alert_checker.run_once() == []
    assert [(p["threshold"], p["spend_usd"]) for p in hooks.posts] == [
        (80, "0.000120"), (100, "0.000120")]
    assert smtp.messages == []


async def test_period_rollover_rearms_alerts(
    gw: RunningGateway, hooks: HookReceiver, smtp: SmtpSink
) -> None:
    secret = await setup_budget(gw, hooks)
    await spend(gw, secret, 4)
    assert [a.threshold for a in await gw.runtime.alert_checker.run_once()] == [80]
    set_time(gw, T_DEC)                              # a new calendar month: spend is 0
    assert await gw.runtime.alert_checker.run_once() == []
    async with client(gw.url) as c:
        b = (await c.get("/billing/budget", headers={"X-Api-Key": secret})).json()
    assert (b["spend_usd"], b["period"]["id"]) == ("0.000000", "2026-12")
    await spend(gw, secret, 4)
    again = await gw.runtime.alert_checker.run_once()
    assert [(a.threshold, a.period["id"]) for a in again] == [(80, "2026-12")]
    assert [(p["threshold"], p["period"]) for p in hooks.posts] == [
        (80, "2026-11"), (80, "2026-12")]
    assert len(smtp.messages) == 2


async def test_failed_channel_is_retried_next_round_without_resending_the_other(
    gw: RunningGateway, hooks: HookReceiver, smtp: SmtpSink
) -> None:
    secret = await setup_budget(gw, hooks)
    await spend(gw, secret, 4)
    hooks.fail = True
    assert await gw.runtime.alert_checker.run_once() == []
    assert (len(hooks.posts), len(smtp.messages)) == (0, 1)
    assert failed(gw, "80", "webhook") == 1
    assert await gw.runtime.alert_checker.run_once() == []   # still failing
    assert failed(gw, "80", "webhook") == 2
    hooks.fail = False
    assert [a.threshold for a in await gw.runtime.alert_checker.run_once()] == [80]
    assert await gw.runtime.alert_checker.run_once() == []
    assert (len(hooks.posts), len(smtp.messages)) == (1, 1)   # email not sent twice
    assert (sent(gw, "80", "webhook"), sent(gw, "80", "email")) == (1, 1)


async def test_smtp_failure_is_retried(
    gw: RunningGateway, hooks: HookReceiver, smtp: SmtpSink
) -> None:
    secret = await setup_budget(gw, hooks)
    await spend(gw, secret, 4)
    smtp.fail = True
    assert await gw.runtime.alert_checker.run_once() == []
    assert failed(gw, "80", "email") == 1
    smtp.fail = False
    assert len(await gw.runtime.alert_checker.run_once()) == 1
    assert await gw.runtime.alert_checker.run_once() == []
    assert (len(hooks.posts), len(smtp.messages)) == (1, 1)


async def test_concurrent_checkers_send_once(
    gw: RunningGateway, hooks: HookReceiver, smtp: SmtpSink
) -> None:
    secret = await setup_budget(gw, hooks)
    await spend(gw, secret, 4)
    replicas = [AlertChecker(gw.runtime) for _ in range(4)]
    results = await asyncio.gather(*(r.run_once() for r in replicas))
    try:
        assert sorted(len(r) for r in results) == [0, 0, 0, 1]
        assert (len(hooks.posts), len(smtp.messages)) == (1, 1)
    finally:
        for r in replicas:
            await r.close()


async def test_no_target_nothing_marked_until_one_is_set(
    gw: RunningGateway, hooks: HookReceiver, smtp: SmtpSink
) -> None:
    _, secret = await gw.runtime.registry.create(user="bo", role="billing")
    async with client(gw.url) as c:
        await c.post("/billing/budget", headers={"X-Api-Key": secret},
                     json={"monthly_cap_usd": "0.0001"})
    await spend(gw, secret, 4)
    assert await gw.runtime.alert_checker.run_once() == []
    await setup_budget(gw, hooks, user="bo")
    assert [a.threshold for a in await gw.runtime.alert_checker.run_once()] == [80]


async def test_checker_task_runs_inside_the_gateway(
    store_url: str | None, upstream: RecordingUpstream, hooks: HookReceiver, smtp: SmtpSink
) -> None:
    async with running_gateway(RULES.format(upstream=upstream.url), store_url,
                               alert_interval_s=0.05, smtp_url=smtp.url,
                               alert_allow_private=True) as g:
        secret = await setup_budget(g, hooks)
        await spend(g, secret, 4)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while len(hooks.posts) < 1 and loop.time() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)                     # several more rounds
        assert [p["threshold"] for p in hooks.posts] == [80]
        assert len(smtp.messages) == 1


def test_parse_smtp_url() -> None:
    t = parse_smtp_url("smtp://mail.example.com:2525")
    assert (t.host, t.port, t.tls, t.user) == ("mail.example.com", 2525, False, None)
    s = parse_smtp_url("smtps://u%40x:p%3Aw@mail.example.com")
    assert (s.port, s.tls, s.user, s.password) == (465, True, "u@x", "p:w")
    with pytest.raises(ValueError):
        parse_smtp_url("http://mail.example.com")


async def test_a_new_cap_rearms_its_thresholds(
        gw: RunningGateway, hooks: HookReceiver, smtp: SmtpSink) -> None:
    """Raised mid-period, the cap's 80 % and 100 % are new thresholds: they alert again."""
    secret = await setup_budget(gw, hooks)
    await spend(gw, secret, 5)                       # 100 % of $0.0001
    assert [a.threshold for a in await gw.runtime.alert_checker.run_once()] == [80, 100]
    async with client(gw.url) as c:
        r = await c.post("/billing/budget", headers={"X-Api-Key": secret}, json={
            "monthly_cap_usd": "0.00012", "alert_webhook": hooks.url})
        assert r.status_code == 200, r.text
    # 100 µ$ spent of a 120 µ$ cap: 83 %.
    assert [a.threshold for a in await gw.runtime.alert_checker.run_once()] == [80]
    assert await gw.runtime.alert_checker.run_once() == []


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/hook", "http://localhost/hook", "http://[::1]/hook",
    "http://10.0.0.5/hook", "http://169.254.169.254/latest/meta-data",
    "http://[::ffff:127.0.0.1]/hook", "http://user@evil.example/hook"])
def test_alert_webhooks_must_be_public(url: str) -> None:
    assert not valid_webhook(url)
    assert valid_webhook("https://hooks.example.com/budget")
    assert valid_webhook(url, allow_private=True) == ("@" not in url)


async def test_names_resolving_inside_the_network_are_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    answer = "10.1.2.3"

    async def getaddrinfo(host: str, port: int, *args: Any, **kw: Any) -> list[Any]:
        return [(2, 1, 6, "", (answer, port))]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    assert not await resolves_publicly("hooks.example.com", 443)
    answer = "93.184.215.14"
    assert await resolves_publicly("hooks.example.com", 443)
    assert not await resolves_publicly("127.0.0.1", 443)


async def test_a_webhook_that_does_not_resolve_publicly_is_not_posted(
        store_url: str | None, upstream: RecordingUpstream, hooks: HookReceiver) -> None:
    async with running_gateway(RULES.format(upstream=upstream.url), store_url,
                               alert_interval_s=0) as g:
        rt = g.runtime
        _, secret = await rt.registry.create(user="ann", role="billing")
        async with client(g.url) as c:
            refused = await c.post("/billing/budget", headers={"X-Api-Key": secret}, json={
                "monthly_cap_usd": "0.0001", "alert_webhook": hooks.url})
            assert refused.status_code == 400 and "public" in refused.json()["detail"]
            ok = await c.post("/billing/budget", headers={"X-Api-Key": secret}, json={
                "monthly_cap_usd": "0.0001",
                "alert_webhook": hooks.url.replace("127.0.0.1", "hooks.invalid")})
            assert ok.status_code == 200, ok.text
        await spend(g, secret, 4)
        assert await rt.alert_checker.run_once() == []
        assert hooks.posts == []
        assert failed(g, "80", "webhook") == 1
