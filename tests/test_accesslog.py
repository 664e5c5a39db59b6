"""The access log: one JSON line per request, with what an operator greps for."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

from gateway import accesslog
from tests.gateway_harness import BASE_RULES, client, running_gateway
from tests.upstream import RecordingUpstream


@contextmanager
def access_lines() -> Iterator[list[dict[str, Any]]]:
    """The access log's lines written inside the block (read when it ends)."""
    buf = io.BytesIO()
    lines: list[dict[str, Any]] = []
    accesslog.configure(True, buf)
    try:
        yield lines
    finally:
        accesslog.configure(False)
        lines.extend(orjson.loads(line) for line in buf.getvalue().splitlines())


async def test_one_json_line_per_request(upstream: RecordingUpstream) -> None:
    rules = BASE_RULES.format(upstream=upstream.url, timeout="5s")
    async with running_gateway(rules) as gw:
        key = await gw.new_key(user="alice")
        with access_lines() as lines:
            async with client(gw.url) as c:
                ok = await c.get("/api/one", headers={"X-Api-Key": key,
                                                      "X-Request-Id": "req-1"})
                denied = await c.get("/api/two", headers={"X-Api-Key": "nope"})
    assert (ok.status_code, denied.status_code) == (200, 401)
    assert len(lines) == 2
    first, second = lines
    assert first["id"] == "req-1" and first["user"] == "alice"
    assert (first["method"], first["path"], first["status"], first["code"]) == (
        "GET", "/api/one", 200, "OK")
    assert first["units"] == 1 and first["account"] == "user" and first["ms"] > 0
    assert (second["status"], second["code"]) == (401, "UNAUTHENTICATED")


def test_a_broken_stream_loses_lines_not_requests() -> None:
    closed = io.BytesIO()
    closed.close()
    accesslog.configure(True, closed)
    try:
        accesslog.record({"id": "x"})  # no exception
    finally:
        accesslog.configure(False)


def test_off_writes_nothing() -> None:
    buf = io.BytesIO()
    accesslog.configure(False, buf)
    accesslog.record({"id": "x"})
    assert buf.getvalue() == b""


async def test_the_gateways_own_answers_are_logged_and_counted_as_sent(
    upstream: RecordingUpstream,
) -> None:
    """/usage/me, /billing/* and problem answers: the caller, the bytes sent, and a
    billing error's own code (in the line and in the request metrics), not OK."""
    rules = BASE_RULES.format(upstream=upstream.url, timeout="5s")
    async with running_gateway(rules) as gw:
        key = await gw.new_key(user="alice")
        with access_lines() as lines:
            async with client(gw.url) as c:
                me = await c.get("/usage/me", headers={"X-Api-Key": key})
                billing = await c.post("/billing/checkout", json={"plan": "nope"},
                                       headers={"X-Api-Key": key})
                denied = await c.get("/api/two", headers={"X-Api-Key": "nope"})
        registry = gw.runtime.metrics.registry
        code = billing.json()["code"]
        assert registry.get_sample_value("gateway_requests_total", {
            "route": "/billing/", "decision": "reject", "code": code}) == 1
        assert registry.get_sample_value("gateway_requests_total", {
            "route": "/billing/", "decision": "admit", "code": "OK"}) is None
    assert me.status_code == 200 and billing.status_code >= 400
    usage, checkout, problem = lines
    assert (usage["user"], usage["code"], usage["bytes_out"]) == ("alice", "OK", len(me.content))
    assert (checkout["user"], checkout["status"], checkout["code"], checkout["bytes_out"]) == (
        "alice", billing.status_code, code, len(billing.content))
    assert (problem["code"], problem["bytes_out"]) == ("UNAUTHENTICATED", len(denied.content))


async def test_a_settled_or_refunded_request_logs_what_it_cost(
    upstream: RecordingUpstream,
) -> None:
    """units: the reserve until the response settles it, then what was charged."""
    rules = BASE_RULES.format(upstream=upstream.url, timeout="5s").replace(
        "  rules: []",
        "  rules:\n"
        "    - {path: /api/usage, reserve: 100, settle: {json: usage.total_tokens}}\n"
        "    - {path: /api/status/*, units: 5}")
    async with running_gateway(rules) as gw:
        key = await gw.new_key(user="alice")
        with access_lines() as lines:
            async with client(gw.url) as c:
                settled = await c.post("/api/usage?tokens=13", headers={"X-Api-Key": key})
                refunded = await c.get("/api/status/502", headers={"X-Api-Key": key})
                kept = await c.get("/api/status/200", headers={"X-Api-Key": key})
    assert (settled.status_code, refunded.status_code, kept.status_code) == (200, 502, 200)
    assert [line["units"] for line in lines] == [13, 0, 5]
