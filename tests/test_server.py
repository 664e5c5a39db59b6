"""`gateway serve` and the store commands as a user runs them: real processes, real HTTP."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.redis_servers import RedisServer, free_port
from tests.upstream import DuplexUpstream, RecordingUpstream

GATEWAY = [sys.executable, "-m", "gateway"]
TOKEN = "serve-test-token"

RULES = """
version: 1
upstreams:
  main: {{url: "{upstream}", timeout: 10s}}
routes:
  - {{prefix: /api/, upstream: main}}
identity:
  api_key_headers: [X-Api-Key]
meters:
  fcu: {{usd_per_unit: 0.000002}}
weights:
  default: {{meter: fcu, units: {units}}}
  rules: []
plans:
  free: {{throughput: [{{limit: 100000, window: 60s}}], quota: {{fcu: 1000000}}}}
defaults: {{user_plan: free}}
"""


class Served:
    def __init__(self, process: subprocess.Popen[bytes], port: int, admin: int) -> None:
        self.process, self.port, self.admin = process, port, admin
        self.url = f"http://127.0.0.1:{port}"
        self.admin_url = f"http://127.0.0.1:{admin}"

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=10)


def serve(rules: Path, env: dict[str, str] | None = None) -> Served:
    port, admin = free_port(), free_port()
    process = subprocess.Popen(
        [*GATEWAY, "serve", "--rules", str(rules), "--host", "127.0.0.1", "--port", str(port),
         "--admin-port", str(admin), "--no-access-log"],
        env={**os.environ, "GATEWAY_ADMIN_TOKEN": TOKEN, "GATEWAY_DRAIN_TIMEOUT_S": "10",
             **(env or {})},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    served = Served(process, port, admin)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(process.stderr.read().decode() if process.stderr else "")
        try:
            if httpx.get(served.admin_url + "/healthz", timeout=0.5).status_code == 200:
                return served
        except httpx.TransportError:
            time.sleep(0.1)
    served.stop()
    raise AssertionError("gateway serve did not start")


@pytest.fixture
def rules_file(tmp_path: Path, upstream: RecordingUpstream) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES.format(upstream=upstream.url, units=1))
    return path


@pytest.fixture
def served(rules_file: Path, redis_server: RedisServer) -> Iterator[Served]:
    s = serve(rules_file, {"GATEWAY_REDIS_URL": redis_server.url})
    yield s
    s.stop()


async def new_key(served: Served, user: str = "u") -> str:
    async with httpx.AsyncClient(base_url=served.admin_url) as a:
        r = await a.post("/admin/keys", json={"user": user},
                         headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 201
    return str(r.json()["key"])


async def test_health_readiness_and_metrics(served: Served) -> None:
    key = await new_key(served)
    async with httpx.AsyncClient() as c:
        assert (await c.get(served.url + "/api/echo", headers={"X-Api-Key": key})
                ).status_code == 200
        health = await c.get(served.admin_url + "/healthz")
        ready = await c.get(served.admin_url + "/readyz")
        metrics = (await c.get(served.admin_url + "/metrics")).text
    assert health.json() == {"status": "ok"}
    assert ready.json() == {"status": "ready", "checks": {"store": "ok", "rules": "ok"}}
    assert 'gateway_requests_total{code="OK",decision="admit",route="/api/"} 1.0' in metrics
    assert 'gateway_request_duration_seconds_bucket{le="0.05",route="/api/"}' in metrics
    assert "gateway_upstream_duration_seconds_count" in metrics
    assert 'gateway_store_duration_seconds_count{op="debit"} 1.0' in metrics
    assert 'gateway_units_debited_total{meter="fcu",pool="quota"} 1.0' in metrics


def test_readiness_fails_and_requests_get_503_when_the_store_is_down(rules_file: Path) -> None:
    s = serve(rules_file, {"GATEWAY_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    try:
        ready = httpx.get(s.admin_url + "/readyz", timeout=5)
        assert ready.status_code == 503
        assert ready.json()["checks"]["store"] == "unreachable"
        well_formed = "gw_live_" + "A" * 43  # malformed keys are refused before the store
        r = httpx.get(s.url + "/api/echo", headers={"X-Api-Key": well_formed}, timeout=5)
        assert r.status_code == 503
        assert r.json()["code"] == "STORE_UNAVAILABLE"
    finally:
        assert s.stop() == 0


async def test_reload_by_sighup_and_admin_api_keeps_old_rules_on_bad_file(
    served: Served, rules_file: Path, upstream: RecordingUpstream
) -> None:
    key = await new_key(served)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient() as c:
        before = await c.get(served.url + "/api/echo", headers={"X-Api-Key": key})
        rules_file.write_text(RULES.format(upstream=upstream.url, units=7))
        served.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        after = before
        while after.headers.get("x-gateway-units") != "7" and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            after = await c.get(served.url + "/api/echo", headers={"X-Api-Key": key})
        rules_file.write_text("version: 1\nupstreams: {main: {url: nope}}\n")
        refused = await c.post(served.admin_url + "/admin/reload", headers=auth)
        still = await c.get(served.url + "/api/echo", headers={"X-Api-Key": key})
        rules_file.write_text(RULES.format(upstream=upstream.url, units=3))
        ok = await c.post(served.admin_url + "/admin/reload", headers=auth)
        now = await c.get(served.url + "/api/echo", headers={"X-Api-Key": key})
    assert before.headers["x-gateway-units"] == "1"
    assert after.headers["x-gateway-units"] == "7"
    assert refused.status_code == 422
    assert refused.json()["code"] == "RULES_INVALID"
    assert any("upstreams.main.url" in p for p in refused.json()["problems"])
    assert still.headers["x-gateway-units"] == "7"
    assert ok.status_code == 200
    assert now.headers["x-gateway-units"] == "3"


async def test_sigterm_drains_an_in_flight_stream(served: Served) -> None:
    key = await new_key(served)
    async with httpx.AsyncClient(timeout=20) as c, c.stream(
        "GET", served.url + "/api/sse?n=15&ms=100", headers={"X-Api-Key": key}
    ) as r:
        events = 0
        async for chunk in r.aiter_raw():
            if events == 0:
                served.process.send_signal(signal.SIGTERM)
            events += chunk.count(b"data:")
    assert events == 15, "the stream was cut instead of drained"
    assert served.process.wait(timeout=20) == 0


def test_store_commands_against_redis(redis_server: RedisServer, rules_file: Path) -> None:
    env = {**os.environ, "GATEWAY_REDIS_URL": redis_server.url}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*GATEWAY, *args], env=env, capture_output=True, text=True,
                              timeout=30)

    created = run("keys", "create", "--user", "zed", "--workspace", "acme", "--test", "--json")
    assert created.returncode == 0, created.stderr
    key = orjson.loads(created.stdout)
    assert key["key"].startswith("gw_test_") and key["id"].startswith("key_")
    listed = run("keys", "list", "--json")
    assert key["id"] in listed.stdout and key["key"] not in listed.stdout
    sub = run("subscriptions", "set", "--scope", "workspace", "--id", "acme", "--plan",
              "free", "--rules", str(rules_file))
    assert sub.returncode == 0, sub.stderr
    bad = run("subscriptions", "set", "--scope", "user", "--id", "zed", "--plan", "gold",
              "--rules", str(rules_file))
    assert bad.returncode == 1 and "gold" in bad.stderr
    grant = run("credits", "grant", "--scope", "user", "--id", "zed", "--usd", "2.50")
    assert grant.returncode == 0 and "$2.500000" in grant.stdout
    for usd in ("1e-9", "1e999999999", "-5"):
        bad_usd = run("credits", "grant", "--scope", "user", "--id", "zed", "--usd", usd)
        assert bad_usd.returncode == 1 and bad_usd.stderr.startswith("error: "), usd
        assert "Traceback" not in bad_usd.stderr and "decimal" not in bad_usd.stderr
    for bad_name in ("", "a}b{c"):  # ids the admin API refuses are refused here too
        bad_id = run("credits", "grant", "--scope", "user", "--id", bad_name, "--usd", "1")
        assert bad_id.returncode == 1 and "invalid user id" in bad_id.stderr
    usage = run("usage", "--scope", "workspace", "--id", "acme", "--json", "--rules",
                str(rules_file))
    assert orjson.loads(usage.stdout)["plan"] == "free"
    # The rules file may come from GATEWAY_RULES instead of --rules (or ./rules.yaml).
    env["GATEWAY_RULES"] = str(rules_file)
    assert run("subscriptions", "set", "--scope", "user", "--id", "zed", "--plan",
               "free").returncode == 0
    env["GATEWAY_RULES"] = str(rules_file.parent / "missing.yaml")
    missing = run("subscriptions", "set", "--scope", "user", "--id", "zed", "--plan", "free")
    assert missing.returncode == 1 and "missing.yaml" in missing.stderr
    assert "--rules" in missing.stderr and "Traceback" not in missing.stderr
    del env["GATEWAY_RULES"]
    revoked = run("keys", "revoke", key["id"])
    assert revoked.returncode == 0
    assert run("keys", "revoke", "key_0000000000000000").returncode == 1


def test_store_commands_explain_themselves_without_a_store() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_REDIS_URL"}
    r = subprocess.run([*GATEWAY, "keys", "list"], env=env, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2
    assert "GATEWAY_REDIS_URL" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_gateway_demo_prints_working_keys() -> None:
    port, admin = free_port(), free_port()
    demo = subprocess.Popen([*GATEWAY, "demo", "--port", str(port), "--admin-port", str(admin)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert demo.stderr is not None
        lines: list[str] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any("Ctrl-C" in x for x in lines):
            lines.append(demo.stderr.readline())
        text = "".join(lines)
        keys = list(dict.fromkeys(re.findall(r"gw_live_[A-Za-z0-9]+", text)))
        assert len(keys) == 2, text
        assert not any(line.rstrip().endswith('-w " %{http_code}') for line in lines), \
            "a printed curl line is broken across lines"
        base = f"http://127.0.0.1:{port}"
        ok = httpx.post(base + "/api/v1/ops/add", headers={"X-Api-Key": keys[0]})
        assert ok.status_code == 200 and ok.headers["x-gateway-units"] == "1"
        trial = [httpx.post(base + "/api/v1/ops/bootstrap", headers={"X-Api-Key": keys[-1]}
                            ).status_code for _ in range(3)]
        assert trial == [200, 200, 402]
        throttled = [httpx.post(base + "/api/v1/ops/bootstrap", headers={"X-Api-Key": keys[0]}
                                ).status_code for _ in range(2)]
        assert throttled == [200, 429]
    finally:
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=20) == 0


async def test_an_upload_stays_whole_while_the_upstream_streams_its_answer(
        tmp_path: Path, redis_server: RedisServer) -> None:
    """A real gateway process between a raw client and an upstream that answers while it
    reads: every byte of the upload arrives (the in-process twin could not show the race
    where a second receive() took body parts away)."""
    duplex = DuplexUpstream()
    url = await duplex.start()
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES.format(upstream=url, units=1))
    s = serve(rules, {"GATEWAY_REDIS_URL": redis_server.url})
    try:
        async with httpx.AsyncClient() as admin:
            key = (await admin.post(s.admin_url + "/admin/keys", json={"user": "dup"},
                                    headers={"Authorization": f"Bearer {TOKEN}"})).json()["key"]
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
            writer.write((f"POST /api/duplex HTTP/1.1\r\nHost: g\r\nX-Api-Key: {key}\r\n"
                          "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                          ).encode())
            for i in range(200):  # one segment each, as a client streaming an upload
                writer.write(b"%x\r\n%s\r\n" % (1000, b"%04d" % i * 250))
                await writer.drain()
                await asyncio.sleep(0)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            response = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            assert response.startswith(b"HTTP/1.1 200") and b"got 200000" in response
        assert duplex.received == [200_000] * 3
    finally:
        assert s.stop() == 0


def test_store_commands_say_which_store_they_cannot_reach() -> None:
    port = free_port()  # nothing listens on it
    env = {**os.environ, "GATEWAY_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    r = subprocess.run([*GATEWAY, "credits", "grant", "--scope", "user", "--id", "zed",
                        "--usd", "1"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert f"127.0.0.1:{port}" in r.stderr and "Traceback" not in r.stderr
