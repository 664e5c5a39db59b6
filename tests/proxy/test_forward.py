"""The proxy over real HTTP: what the upstream receives and what the client gets back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from tests.gateway_harness import BASE_RULES, RunningGateway, client, running_gateway
from tests.upstream import GZIP_BODY, DuplexUpstream, RecordingUpstream


@pytest.fixture(params=["aiohttp", "httpcore"])
async def gw(request: pytest.FixtureRequest, upstream: RecordingUpstream
             ) -> AsyncIterator[RunningGateway]:
    rules = BASE_RULES.format(upstream=upstream.url, timeout="1s")
    async with running_gateway(rules, upstream_transport=request.param) as g:
        yield g


async def raw_request(port: int, data: bytes) -> bytes:
    """Send exact bytes, return the whole response (the server closes after it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    response = await asyncio.wait_for(reader.read(1 << 20), 5)
    writer.close()
    return response


async def test_get_without_body_is_sent_without_body_or_invented_headers(
    gw: RunningGateway, upstream: RecordingUpstream
) -> None:
    key = await gw.new_key()
    port = gw.gateway.port()
    resp = await raw_request(port, (
        f"GET /api/echo?a=1&b=%20x HTTP/1.1\r\nHost: front.example\r\nX-Api-Key: {key}\r\n"
        "Connection: close\r\n\r\n").encode())
    assert resp.startswith(b"HTTP/1.1 200")
    got = upstream.requests[-1]
    assert got.method == "GET"
    assert got.target == "/api/echo?a=1&b=%20x"
    names = got.header_names()
    assert "transfer-encoding" not in names
    assert "content-length" not in names
    for invented in ("accept-encoding", "accept", "user-agent", "content-type"):
        assert invented not in names, f"proxy invented {invented}"
    assert got.header("host") == f"127.0.0.1:{upstream.port}"
    assert got.header("x-forwarded-for") == "127.0.0.1"
    assert got.header("x-forwarded-proto") == "http"
    assert got.header("x-forwarded-host") == "front.example"
    assert got.header("via") == "1.1 gateway"
    assert got.header("x-api-key") is None, "the gateway key must not reach the backend"
    assert got.header("x-gateway-user") == "u1"


async def test_content_length_kept_and_body_intact(
    gw: RunningGateway, upstream: RecordingUpstream
) -> None:
    key = await gw.new_key()
    body = b"z" * 100_000
    async with client(gw.url) as c:
        r = await c.post("/api/upload", content=body, headers={"X-Api-Key": key})
    assert r.status_code == 200
    assert r.json()["bytes"] == len(body)
    got = upstream.requests[-1]
    assert got.header("content-length") == str(len(body))
    assert got.header("transfer-encoding") is None


async def test_chunked_client_body_is_streamed_through(
    gw: RunningGateway, upstream: RecordingUpstream
) -> None:
    key = await gw.new_key()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(50):
            yield bytes([65 + i % 26]) * 1000

    async with client(gw.url) as c:
        r = await c.post("/api/upload", content=chunks(), headers={"X-Api-Key": key})
    assert r.status_code == 200
    assert r.json()["bytes"] == 50_000
    assert upstream.requests[-1].header("transfer-encoding") == "chunked"


async def test_hop_by_hop_request_headers_removed(
    gw: RunningGateway, upstream: RecordingUpstream
) -> None:
    key = await gw.new_key()
    async with client(gw.url) as c:
        r = await c.get("/api/echo", headers={
            "X-Api-Key": key, "Connection": "keep-alive, X-Private", "X-Private": "secret",
            "Keep-Alive": "timeout=5", "TE": "trailers", "Proxy-Authorization": "Basic eA==",
            "Upgrade": "h2c", "X-End-To-End": "yes", "X-Gateway-User": "spoofed",
            "Authorization": "Basic dXNlcjpwdw==",
        })
    assert r.status_code == 200
    got = upstream.requests[-1]
    for hop in ("connection", "x-private", "keep-alive", "te", "proxy-authorization",
                "upgrade"):
        assert got.header(hop) is None, hop
    assert got.header("x-end-to-end") == "yes"
    assert got.header("x-gateway-user") == "u1", "client-sent identity must be replaced"
    assert got.header("authorization") == "Basic dXNlcjpwdw==", "backend credentials pass"


async def test_bearer_gateway_key_is_accepted_and_not_forwarded(
    gw: RunningGateway, upstream: RecordingUpstream
) -> None:
    key = await gw.new_key(user="bob")
    async with client(gw.url) as c:
        r = await c.get("/api/echo", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200
    got = upstream.requests[-1]
    assert got.header("authorization") is None
    assert got.header("x-gateway-user") == "bob"


@pytest.mark.parametrize("spelling", ["Bearer  {key}", "bearer\t{key}", "BEARER {key}"])
async def test_no_spelling_of_a_bearer_gateway_key_is_forwarded(
    gw: RunningGateway, upstream: RecordingUpstream, spelling: str
) -> None:
    key = await gw.new_key(user="bob")
    async with client(gw.url) as c:
        r = await c.get("/api/echo", headers={"Authorization": spelling.format(key=key)})
    assert r.status_code == 200
    assert upstream.requests[-1].header("authorization") is None


async def test_response_hop_by_hop_removed_and_via_appended(gw: RunningGateway) -> None:
    key = await gw.new_key()
    async with client(gw.url) as c:
        r = await c.get("/api/hop", headers={"X-Api-Key": key})
    assert r.status_code == 200
    assert "x-secret-hop" not in r.headers
    assert "keep-alive" not in r.headers
    assert "proxy-authenticate" not in r.headers
    assert r.headers["x-end-to-end"] == "kept"
    assert r.headers["via"] == "1.0 backend, 1.1 gateway"


async def test_encoded_response_passes_through_untouched(gw: RunningGateway) -> None:
    key = await gw.new_key()
    async with client(gw.url) as c, c.stream(
        "GET", "/api/gzip", headers={"X-Api-Key": key, "Accept-Encoding": "gzip"}
    ) as r:
        raw = b"".join([chunk async for chunk in r.aiter_raw()])
    assert r.headers["content-encoding"] == "gzip"
    assert raw == GZIP_BODY


async def test_forwarding_headers_from_untrusted_peer_are_not_believed(
    gw: RunningGateway, upstream: RecordingUpstream
) -> None:
    key = await gw.new_key()
    async with client(gw.url) as c:
        await c.get("/api/echo", headers={
            "X-Api-Key": key, "X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "evil.example"})
    got = upstream.requests[-1]
    assert got.header("x-forwarded-for") == "127.0.0.1"
    assert got.header("x-forwarded-proto") == "http"
    assert got.header("x-forwarded-host") == f"127.0.0.1:{gw.gateway.port()}"
    async with client(gw.url) as c:
        await c.get("/api/echo", headers={
            "X-Api-Key": key, "Forwarded": "for=6.6.6.6;proto=https", "X-Real-IP": "6.6.6.6"})
    got = upstream.requests[-1]
    assert got.header("forwarded") is None and got.header("x-real-ip") is None


async def test_forwarding_headers_from_trusted_peer_are_extended(
    upstream: RecordingUpstream,
) -> None:
    rules = BASE_RULES.format(upstream=upstream.url, timeout="1s").replace(
        "10.9.9.0/24", "127.0.0.1/32")
    async with running_gateway(rules) as gw:
        key = await gw.new_key()
        async with client(gw.url) as c:
            await c.get("/api/echo", headers={
                "X-Api-Key": key, "X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "api.example", "Forwarded": "for=6.6.6.6",
                "X-Real-IP": "6.6.6.6"})
            got = upstream.requests[-1]
            await c.get("/api/echo", headers={
                "X-Api-Key": key, "X-Forwarded-Proto": "javascript, https"})
    assert got.header("x-forwarded-for") == "6.6.6.6, 127.0.0.1"
    assert got.header("x-forwarded-proto") == "https"
    assert got.header("x-forwarded-host") == "api.example"
    assert (got.header("forwarded"), got.header("x-real-ip")) == ("for=6.6.6.6", "6.6.6.6")
    assert upstream.requests[-1].header("x-forwarded-proto") == "http"  # not a scheme


async def test_upstream_receives_the_normalised_path(
    gw: RunningGateway, upstream: RecordingUpstream
) -> None:
    key = await gw.new_key()
    resp = await raw_request(gw.gateway.port(), (
        f"GET /api//x/./y/../%65cho%7e?q=%2F HTTP/1.1\r\nHost: h\r\nX-Api-Key: {key}\r\n"
        "Connection: close\r\n\r\n").encode())
    assert resp.startswith(b"HTTP/1.1 200")
    assert upstream.requests[-1].target == "/api/x/echo~?q=%2F"


@pytest.mark.parametrize("path", ["/api/a%2Fb", "/api/a%5cb", "/api/a%00", "/api/a\\b"])
async def test_ambiguous_paths_are_400_bad_path(
    gw: RunningGateway, upstream: RecordingUpstream, path: str
) -> None:
    key = await gw.new_key()
    before = len(upstream.requests)
    resp = await raw_request(gw.gateway.port(), (
        f"GET {path} HTTP/1.1\r\nHost: h\r\nX-Api-Key: {key}\r\nConnection: close\r\n\r\n"
    ).encode())
    head, _, body = resp.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert b"application/problem+json" in head
    assert orjson.loads(body)["code"] == "BAD_PATH"
    assert len(upstream.requests) == before


async def test_no_route_is_404(upstream: RecordingUpstream) -> None:
    rules = BASE_RULES.format(upstream=upstream.url, timeout="1s").replace(
        "  - {prefix: /, upstream: main, name: root}\n", "")
    async with running_gateway(rules) as gw:
        key = await gw.new_key()
        async with client(gw.url) as c:
            r = await c.get("/elsewhere", headers={"X-Api-Key": key})
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "NO_ROUTE"


async def test_unknown_missing_and_revoked_keys(gw: RunningGateway) -> None:
    async with client(gw.url) as c:
        missing = await c.get("/api/echo")
        unknown = await c.get("/api/echo", headers={"X-Api-Key": "gw_live_nope"})
        key, secret = await gw.runtime.registry.create(user="carol")
        ok = await c.get("/api/echo", headers={"X-Api-Key": secret})
        await gw.runtime.registry.revoke(key.id)
        deadline = asyncio.get_running_loop().time() + 5
        revoked = await c.get("/api/echo", headers={"X-Api-Key": secret})
        while revoked.status_code == 200 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
            revoked = await c.get("/api/echo", headers={"X-Api-Key": secret})
    assert (missing.status_code, missing.json()["code"]) == (401, "UNAUTHENTICATED")
    assert (unknown.status_code, unknown.json()["code"]) == (401, "UNAUTHENTICATED")
    assert ok.status_code == 200
    assert (revoked.status_code, revoked.json()["code"]) == (401, "KEY_REVOKED")


async def test_connect_error_is_502() -> None:
    from tests.redis_servers import free_port

    rules = BASE_RULES.format(upstream=f"http://127.0.0.1:{free_port()}", timeout="1s")
    async with running_gateway(rules) as gw:
        key = await gw.new_key()
        async with client(gw.url) as c:
            r = await c.get("/api/echo", headers={"X-Api-Key": key})
            metrics = (await c.get(gw.admin_url + "/metrics")).text
    assert r.status_code == 502
    assert r.json()["code"] == "UPSTREAM_UNAVAILABLE"
    # Counted under the upstream's name (the route is "/api/").
    assert 'gateway_upstream_errors_total{code="UPSTREAM_UNAVAILABLE",upstream="main"} 1.0' \
        in metrics


async def test_timeout_is_504_and_close_is_502(gw: RunningGateway) -> None:
    key = await gw.new_key()
    async with client(gw.url) as c:
        hang = await c.get("/api/hang", headers={"X-Api-Key": key})
        closed = await c.get("/api/close", headers={"X-Api-Key": key})
    assert (hang.status_code, hang.json()["code"]) == (504, "UPSTREAM_TIMEOUT")
    assert (closed.status_code, closed.json()["code"]) == (502, "UPSTREAM_UNAVAILABLE")


async def test_truncated_upstream_body_is_not_passed_off_as_complete(gw: RunningGateway) -> None:
    key = await gw.new_key()
    async with client(gw.url) as c:
        with pytest.raises(httpx.RemoteProtocolError):
            await c.get("/api/half", headers={"X-Api-Key": key})
        metrics = (await c.get(gw.admin_url + "/metrics")).text
    # Counted as what it was: the upstream broke off after its 200 and 10 bytes.
    assert 'gateway_upstream_errors_total{code="UPSTREAM_ABORTED",upstream="main"} 1.0' \
        in metrics
    assert 'gateway_requests_total{code="UPSTREAM_ABORTED",decision="reject",route="/api/"}' \
        ' 1.0' in metrics


async def test_server_sent_events_arrive_as_they_are_produced(gw: RunningGateway) -> None:
    key = await gw.new_key()
    loop = asyncio.get_running_loop()
    start = loop.time()
    arrivals: list[float] = []
    async with client(gw.url) as c, c.stream(
        "GET", "/api/sse?n=5&ms=200", headers={"X-Api-Key": key}
    ) as r:
        async for chunk in r.aiter_raw():
            arrivals.extend(loop.time() - start for _ in range(chunk.count(b"data:")))
    assert len(arrivals) == 5
    assert arrivals[0] < 0.5, "first event was held back"
    assert arrivals[-1] >= 0.75


async def test_head_request_passes(gw: RunningGateway) -> None:
    key = await gw.new_key()
    async with client(gw.url) as c:
        r = await c.head("/api/big?mb=1", headers={"X-Api-Key": key})
    assert r.status_code == 200
    assert r.headers["content-length"] == str(1 << 20)
    assert r.content == b""


async def test_identity_headers_are_believed_only_from_trusted_proxies(
    upstream: RecordingUpstream,
) -> None:
    rules = BASE_RULES.format(upstream=upstream.url, timeout="1s").replace(
        "  trusted_proxies: [10.9.9.0/24]",
        "  trusted_proxies: [127.0.0.1/32]\n"
        "  trusted_identity_headers: {user: X-Gateway-User, workspace: X-Gateway-Workspace}")
    async with running_gateway(rules) as gw, client(gw.url) as c:
        asserted = await c.get("/api/echo", headers={"X-Gateway-User": "erin",
                                                     "X-Gateway-Workspace": "acme"})
        twice = await c.get("/api/echo", headers=[("X-Gateway-User", "erin"),
                                                  ("X-Gateway-User", "mallory")])
    assert asserted.status_code == 200
    got = upstream.requests[-1]
    assert (got.header("x-gateway-user"), got.header("x-gateway-workspace")) == ("erin", "acme")
    assert twice.status_code == 401  # ambiguous: the proxy should have replaced the header
    # Ids the admin API and the CLI would refuse are refused here too, before any charge.
    async with running_gateway(rules) as gw, client(gw.url) as c:
        sent = len(upstream.requests)
        bad = [await c.get("/api/echo", headers=h) for h in (
            {"X-Gateway-User": "bad user"}, {"X-Gateway-User": "x" * 129},
            {"X-Gateway-User": "a{b}c"},
            {"X-Gateway-User": "erin", "X-Gateway-Workspace": "ac me"})]
        assert len(upstream.requests) == sent
        assert await gw.runtime.store.client.keys("gw:{u:bad user}*") == []
    for r in bad:
        assert (r.status_code, r.json()["code"]) == (400, "BAD_REQUEST"), r.text
    assert "x-gateway-workspace" in bad[3].json()["detail"]
    untrusted_rules = rules.replace("127.0.0.1/32", "10.9.9.0/24")
    async with running_gateway(untrusted_rules) as gw, client(gw.url) as c:
        refused = await c.get("/api/echo", headers={"X-Gateway-User": "erin"})
    assert refused.status_code == 401


async def test_request_id_reaches_the_upstream_once_and_in_flight_returns_to_zero(
    gw: RunningGateway, upstream: RecordingUpstream
) -> None:
    key = await gw.new_key()
    async with client(gw.url) as c:
        mine = await c.get("/api/echo", headers={"X-Api-Key": key, "X-Request-Id": "abc-1"})
        theirs = await c.get("/api/echo", headers={"X-Api-Key": key})
        metrics = (await c.get(gw.admin_url + "/metrics")).text
        bad = await c.get("/api/echo", headers={"X-Api-Key": key, "X-Request-Id": "../etc"})
    sent = [r.header_names().count("x-request-id") for r in upstream.requests[-3:]]
    assert sent == [1, 1, 1]
    assert upstream.requests[-1].header("x-request-id") == bad.headers["x-request-id"] != \
        "../etc"
    del upstream.requests[-1]
    assert upstream.requests[-2].header("x-request-id") == "abc-1"
    assert mine.headers["x-request-id"] == "abc-1"
    assert upstream.requests[-1].header("x-request-id") == theirs.headers["x-request-id"]
    assert "gateway_requests_in_flight 0.0" in metrics


async def test_header_values_reach_the_upstream_byte_for_byte(
    gw: RunningGateway, upstream: RecordingUpstream
) -> None:
    key = await gw.new_key()
    resp = await raw_request(gw.gateway.port(), (
        b"GET /api/echo HTTP/1.1\r\nHost: g\r\nX-Api-Key: " + key.encode()
        + b"\r\nX-Name: caf\xc3\xa9\r\nConnection: close\r\n\r\n"))
    assert resp.startswith(b"HTTP/1.1 200")
    assert upstream.requests[-1].header("x-name") == b"caf\xc3\xa9".decode("latin-1")


async def test_a_transfer_coding_other_than_chunked_is_501_and_costs_nothing(
    gw: RunningGateway, upstream: RecordingUpstream
) -> None:
    key = await gw.new_key(user="tec")
    before = len(upstream.requests)
    resp = await raw_request(gw.gateway.port(), (
        f"POST /api/echo HTTP/1.1\r\nHost: g\r\nX-Api-Key: {key}\r\n"
        "Transfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n"
        "3\r\nabc\r\n0\r\n\r\n").encode())
    assert resp.startswith(b"HTTP/1.1 501")
    assert b'"code":"UNSUPPORTED_TRANSFER_CODING"' in resp
    assert len(upstream.requests) == before


async def test_a_bodyless_post_gets_no_length_the_client_did_not_send(
    gw: RunningGateway, upstream: RecordingUpstream
) -> None:
    key = await gw.new_key()
    for method in ("POST", "PUT", "DELETE"):
        resp = await raw_request(gw.gateway.port(), (
            f"{method} /api/echo HTTP/1.1\r\nHost: g\r\nX-Api-Key: {key}\r\n"
            "Connection: close\r\n\r\n").encode())
        assert resp.startswith(b"HTTP/1.1 200"), method
        names = upstream.requests[-1].header_names()
        assert "content-length" not in names and "transfer-encoding" not in names, method


async def test_a_websocket_upgrade_is_a_problem_json_501(gw: RunningGateway) -> None:
    key = await gw.new_key()
    resp = await raw_request(gw.gateway.port(), (
        f"GET /api/echo HTTP/1.1\r\nHost: g\r\nX-Api-Key: {key}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    assert resp.startswith(b"HTTP/1.1 501")
    assert b"application/problem+json" in resp and b'"UPGRADE_NOT_SUPPORTED"' in resp


@pytest.mark.parametrize("transport", ["aiohttp", "httpcore"])
async def test_an_upload_is_whole_while_the_upstream_already_answers(transport: str) -> None:
    duplex = DuplexUpstream()
    url = await duplex.start()
    rules = BASE_RULES.format(upstream=url, timeout="5s")
    async with running_gateway(rules, upstream_transport=transport) as gw:
        key = await gw.new_key()

        async def upload(pause: float) -> AsyncIterator[bytes]:
            for i in range(200):
                if pause and i % 20 == 0:
                    await asyncio.sleep(pause)
                yield b"u" * 1000

        async with client(gw.url) as c:
            for pause in (0.0, 0.001, 0.01):
                r = await c.post("/api/duplex", content=upload(pause),
                                 headers={"X-Api-Key": key})
                assert r.status_code == 200
                # (the proxy frames the body in chunks of its own: count bytes, not dots)
                assert r.content.startswith(b"start"), pause
                assert r.content.endswith(b"got 200000"), (pause, r.content[-20:])
    assert duplex.received == [200_000] * 3


async def test_expect_100_continue_is_answered_here_not_passed_on(
    gw: RunningGateway, upstream: RecordingUpstream
) -> None:
    """The upstream never sends a 100 (it need not): the gateway does, reads the body
    and sends it on without an Expect that would make the upstream client wait."""
    key = await gw.new_key()
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.gateway.port())
    writer.write((f"POST /api/upload HTTP/1.1\r\nHost: g\r\nX-Api-Key: {key}\r\n"
                  "Content-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
                  ).encode())
    await writer.drain()
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim.startswith(b"HTTP/1.1 100")
    writer.write(b"hello")
    await writer.drain()
    response = await asyncio.wait_for(reader.read(1 << 16), 5)
    writer.close()
    assert response.startswith(b"HTTP/1.1 200") and b'"bytes":5' in response
    assert upstream.requests[-1].header("expect") is None


async def test_legal_but_unusual_upstream_answers(gw: RunningGateway) -> None:
    key = await gw.new_key()
    async with client(gw.url) as c:
        not_modified = await c.get("/api/notmodified", headers={"X-Api-Key": key})
        after = await c.get("/api/echo", headers={"X-Api-Key": key})  # same connection
        big = await c.get("/api/bigheaders", headers={"X-Api-Key": key})
        weird = await c.get("/api/status600", headers={"X-Api-Key": key})
    assert (not_modified.status_code, not_modified.headers["etag"]) == (304, '"v1"')
    assert after.status_code == 200
    assert big.status_code == 200 and len(big.headers["x-big"]) == 12288
    assert big.headers["x-h149"] == "149"
    assert (weird.status_code, weird.json()["code"]) == (502, "UPSTREAM_UNAVAILABLE")


async def test_an_upstream_that_stops_reading_the_body_times_out(gw: RunningGateway) -> None:
    """The upstream (timeout 1 s) never reads the 20 MiB upload: 504, not a hang."""
    key = await gw.new_key()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(320):
            yield b"z" * 65536

    loop = asyncio.get_running_loop()
    t0 = loop.time()
    async with client(gw.url, timeout=30) as c:
        r = await c.post("/api/hang", content=body(),
                         headers={"X-Api-Key": key, "Content-Length": str(320 * 65536)})
    assert (r.status_code, r.json()["code"]) == (504, "UPSTREAM_TIMEOUT")
    assert loop.time() - t0 < 10


async def test_via_names_the_protocol_received(
    gw: RunningGateway, upstream: RecordingUpstream
) -> None:
    key = await gw.new_key()
    resp = await raw_request(gw.gateway.port(), (
        f"GET /api/echo HTTP/1.0\r\nHost: g\r\nX-Api-Key: {key}\r\n\r\n").encode())
    assert resp.startswith(b"HTTP/1.1 200")
    assert upstream.requests[-1].header("via") == "1.0 gateway"


def test_upstream_urls_are_built_once_per_path_and_exactly() -> None:
    from gateway.proxy import forward as fwd

    target = fwd.Target("t", httpx.URL("http://10.0.0.1:8080/base/"), b"10.0.0.1:8080",
                        {"connect": 1.0, "read": 1.0, "write": 1.0, "pool": 1.0})
    first = target.url_for("/v1/a%2Fb", b"")
    assert first is target.url_for("/v1/a%2Fb", b"")  # kept: no parsing per request
    assert first.raw_path == b"/base/v1/a%2Fb"          # as sent, not re-quoted
    with_query = target.url_for("/v1/x", b"q=%7E&q=2")
    assert with_query.raw_path == b"/base/v1/x?q=%7E&q=2"
    assert with_query is not target.url_for("/v1/x", b"q=%7E&q=2")  # queries: not kept
    for i in range(fwd.MAX_CACHED_URLS + 10):  # bounded: starts over when full
        assert target.url_for(f"/p{i}", b"").raw_path == f"/base/p{i}".encode()
    assert len(target._urls) <= fwd.MAX_CACHED_URLS
