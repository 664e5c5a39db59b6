"""The HTTP/1.1 server: requests that are not HTTP are answered in problem+json, on both
listeners; responses are written byte for byte as uvicorn writes them."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.httpserver import HEAD_EXTENSION, GatewayHttpProtocol
from tests.gateway_harness import BASE_RULES, client, running_gateway
from tests.upstream import RecordingUpstream

GARBAGE = [
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",         # a header without a colon
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 64,  # TLS to a plain port
    b"POST /api/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
]


async def exchange(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    response = await asyncio.wait_for(reader.read(1 << 16), 5)  # the server closes
    writer.close()
    return response


@pytest.mark.parametrize("data", GARBAGE)
async def test_unparseable_requests_get_a_problem(data: bytes) -> None:
    rules = BASE_RULES.format(upstream="http://127.0.0.1:9", timeout="1s")
    async with running_gateway(rules) as gw:
        for port in (gw.gateway.port(), gw.gateway.port("admin")):
            response = await exchange(port, data)
            head, _, body = response.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400 "), response
            assert b"content-type: application/problem+json" in head.lower()
            assert b"connection: close" in head.lower()
            problem = orjson.loads(body)
            assert (problem["status"], problem["code"]) == (400, "BAD_REQUEST")


# --- Responses: the same bytes as uvicorn's own writer --------------------------------

Fields = list[tuple[bytes, bytes]]
CL2: Fields = [(b"content-type", b"text/plain"), (b"content-length", b"2")]
# (method, status, fields, the gateway's own pre-encoded fields, body chunks)
RESPONSES: list[tuple[str, int, Fields, bytes | None, list[bytes]]] = [
    ("GET", 200, CL2, None, [b"ok"]),
    ("GET", 200, [(b"Content-Type", b"a/b"), (b"X-Mixed", b"v\tw")], None,  # chunked
     [b"one", b"", b"two"]),
    ("HEAD", 200, [(b"content-length", b"2")], None, []),
    ("GET", 204, [], None, []),
    ("GET", 304, [(b"etag", b'"x"')], None, []),
    ("GET", 200, [*CL2, (b"connection", b"Keep-Alive, Close")], None, [b"ok"]),
    ("GET", 200, [(b"transfer-encoding", b"CHUNKED")], None, [b"abc"]),
    ("GET", 200, CL2, b"x-request-id: r1\r\nx-gateway-units: 7\r\n", [b"o", b"k"]),
    ("GET", 200, [], b"x-gateway-account: user\r\n", [b"streamed"]),
    ("GET", 200, [(b"x-obs-text", "café".encode("latin-1"))], None, [b"ok"]),
    # Refused by both: the connection is dropped.
    ("GET", 200, [(b"bad name", b"v")], None, [b"ok"]),
    ("GET", 200, [(b"x-bad", b"line\r\nbreak")], None, [b"ok"]),
    ("GET", 200, CL2, None, [b"too long"]),
    ("GET", 200, CL2, None, [b"o"]),
]


def _app(status: int, fields: Fields, own: bytes | None, chunks: list[bytes]) -> object:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        start: dict[str, Any] = {"type": "http.response.start", "status": status,
                                 "headers": fields}
        if own is not None:
            if HEAD_EXTENSION in scope.get("extensions", {}):
                start[HEAD_EXTENSION] = own
            else:  # what the gateway does on a server without the extension
                start["headers"] = fields + [
                    tuple(line.split(b": ", 1)) for line in own.split(b"\r\n") if line]
        await send(start)
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    return app


async def _raw_exchange(protocol: type, app: object, request: bytes) -> bytes:
    server = uvicorn.Server(uvicorn.Config(
        app, host="127.0.0.1", port=0, lifespan="off", http=protocol,  # type: ignore[arg-type]
        access_log=False, server_header=False, date_header=False, log_config=None))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await writer.drain()
        data = b""
        with contextlib.suppress(TimeoutError):
            while chunk := await asyncio.wait_for(reader.read(65536), 0.5):
                data += chunk
        writer.close()
        return data
    finally:
        server.should_exit = True
        await task


@pytest.mark.parametrize(("method", "status", "fields", "own", "chunks"), RESPONSES)
async def test_responses_are_written_as_uvicorn_writes_them(
    method: str, status: int, fields: Fields, own: bytes | None, chunks: list[bytes],
) -> None:
    app = _app(status, fields, own, chunks)
    request = f"{method} / HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    ours = await _raw_exchange(GatewayHttpProtocol, app, request)
    theirs = await _raw_exchange(HttpToolsProtocol, app, request)
    assert ours == theirs
    assert ours.startswith(b"HTTP/1.1 ") or ours == b""


@pytest.mark.parametrize("request_bytes", [
    b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b?q=1 HTTP/1.1\r\nHost: x\r\n\r\n",  # pipelined
    b"GET /%41%2F HTTP/1.0\r\n\r\n",                                         # 1.0, quoted
    b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
])
async def test_requests_reach_the_app_as_uvicorn_hands_them(request_bytes: bytes) -> None:
    seen: list[tuple[Any, ...]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = (await receive()).get("body", b"")
        seen.append((scope["method"], scope["path"], scope["raw_path"],
                     scope["query_string"], scope["http_version"], body))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    ours = await _raw_exchange(GatewayHttpProtocol, app, request_bytes)
    ours_seen, seen[:] = list(seen), []
    theirs = await _raw_exchange(HttpToolsProtocol, app, request_bytes)
    assert (ours, ours_seen) == (theirs, seen)
    assert ours.count(b"HTTP/1.1 200") == request_bytes.count(b"HTTP/1.")


async def test_the_gateway_sends_its_own_fields_pre_encoded(
    upstream: RecordingUpstream,
) -> None:
    """Through the real gateway: units and rate-limit fields arrive as ordinary headers."""
    rules = BASE_RULES.format(upstream=upstream.url, timeout="5s")
    async with running_gateway(rules) as gw:
        key = await gw.new_key()
        async with client(gw.url) as c:
            r = await c.get("/api/echo", headers={"X-Api-Key": key})
    assert r.status_code == 200
    assert r.headers["x-request-id"]
    assert r.headers["x-gateway-units"] == "1"
    assert r.headers["x-gateway-account"] == "user"
    assert r.headers["ratelimit-policy"].startswith('"account";q=')
    assert r.headers["ratelimit"].startswith('"account";r=')
