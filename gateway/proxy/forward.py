"""Stream one request to the upstream and its response back, both ways unbuffered.

The caller has already decided *whether* the request may run (identity, route, budget);
this module only moves bytes and reports what happened in an `Outcome`, which the
metering layer uses to refund or settle.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from gateway.errors import GatewayError
from gateway.httpserver import HEAD_EXTENSION
from gateway.proxy.departure import HeadWait, client_gone
from gateway.proxy.headers import RawHeaders, response_headers

Scope = dict[str, Any]
Message = dict[str, Any]


class Receive(Protocol):
    async def __call__(self) -> Message: ...


class Send(Protocol):
    async def __call__(self, message: Message, /) -> None: ...


class ResponseObserver(Protocol):
    """Sees the upstream response as it streams (settlement reads usage from it)."""

    def on_start(self, status: int, headers: RawHeaders) -> None: ...

    def on_chunk(self, chunk: bytes) -> None: ...


class UpstreamFailed(GatewayError):
    """The upstream could not be reached or did not answer in time (nothing was sent)."""


class StreamAborted(Exception):
    """The upstream broke off mid-response (or stopped sending for its read timeout);
    the client connection must be dropped so a truncated body is never mistaken for a
    complete one. `outcome` is what had been relayed by then."""

    def __init__(self, message: str, outcome: Outcome) -> None:
        super().__init__(message)
        self.outcome = outcome


MAX_CACHED_URLS = 4096  # per upstream: distinct paths seen, before starting over


@dataclass(frozen=True, slots=True)
class Target:
    """One upstream, resolved once at start-up."""

    name: str
    url: httpx.URL                    # scheme://host[:port][/base-path], no trailing slash
    host_header: bytes
    timeouts: dict[str, float | None]  # httpx timeout extension: connect/read/write/pool
    _urls: dict[bytes, httpx.URL] = field(default_factory=dict, repr=False, compare=False)

    def url_for(self, path: str, query: bytes) -> httpx.URL:
        """The upstream URL for a request's (normalised) path and query, in raw bytes:
        the backend gets exactly the weighed path and the client's query, not a
        re-quoted version of them. httpx parses a URL anew on every copy_with (~50 µs
        here), so one per path is kept (bounded); a query string makes a new one."""
        raw = self.url.raw_path.rstrip(b"/") + path.encode("ascii")
        if query:
            return self.url.copy_with(raw_path=raw + b"?" + query)
        url = self._urls.get(raw)
        if url is None:
            if len(self._urls) >= MAX_CACHED_URLS:
                self._urls.clear()
            url = self._urls[raw] = self.url.copy_with(raw_path=raw)
        return url


@dataclass(slots=True)
class Outcome:
    """What happened to a forwarded request, for metering, metrics and the access log."""

    upstream_status: int = 0
    client_disconnected: bool = False
    upstream_broken: bool = False     # the upstream failed after the response started
    complete: bool = False            # the whole response reached the client
    bytes_out: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class ClientGone(Exception):
    """The client disconnected while its request body was being read."""


class _ClientBody(httpx.AsyncByteStream):
    """The client's request body as an async byte stream, read as the upstream takes it."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.disconnected = False
        self.done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                raise ClientGone()
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                self.done = True
                return


_NO_BODY = httpx.ByteStream(b"")
BODYLESS_STATUS = frozenset({204, 304})


def _content_length(headers: RawHeaders) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def forward(
    transport: httpx.AsyncBaseTransport,
    target: Target,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    with_body: bool,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    observer: ResponseObserver | None = None,
) -> Outcome:
    """Forward the request; raises UpstreamFailed if nothing could be sent to the client.

    `extra_headers`: the gateway's own response fields (request id, units, rate limits),
    names and values it made or checked itself: on our server they skip its checks."""
    outcome = Outcome()
    url = target.url_for(path, scope.get("query_string", b""))
    body = _ClientBody(receive) if with_body else None
    if body is not None and _content_length(headers) is None:
        # The client's chunked framing ended at this hop (hop-by-hop); the next hop gets
        # its own.
        headers = [*headers, (b"transfer-encoding", b"chunked")]
    # `stream=`, not `content=`: httpx would add headers of its own (Content-Length: 0 on
    # a bodyless POST); the request goes out with the client's framing only.
    request = httpx.Request(
        method, url, headers=headers, stream=body or _NO_BODY,
        extensions={"timeout": target.timeouts},
    )
    # A client that leaves while the upstream has not answered yet cancels the request.
    head = HeadWait(receive, body)
    try:
        try:
            response = await transport.handle_async_request(request)
        except BaseException:
            head.close()
            raise
    except asyncio.CancelledError:
        if not head.left():
            raise
        outcome.client_disconnected = True
        return outcome
    except httpx.TimeoutException as exc:
        if body is not None and body.disconnected:
            outcome.client_disconnected = True
            return outcome
        raise UpstreamFailed("UPSTREAM_TIMEOUT", f"upstream {target.name} timed out") from exc
    except (httpx.TransportError, ClientGone, OSError) as exc:
        if body is not None and body.disconnected:
            outcome.client_disconnected = True
            return outcome
        raise UpstreamFailed(
            "UPSTREAM_UNAVAILABLE", f"upstream {target.name} unavailable: {type(exc).__name__}"
        ) from exc
    watcher = head.take()
    if not 100 <= response.status_code <= 599:
        if watcher is not None:
            watcher.cancel()
        await response.aclose()
        raise UpstreamFailed("UPSTREAM_UNAVAILABLE", f"upstream {target.name} answered "
                             f"with status {response.status_code}, which HTTP has not")
    outcome.upstream_status = response.status_code
    # A server that takes pre-encoded header lines (ours) gets the gateway's fields so.
    encoded = HEAD_EXTENSION in (scope.get("extensions") or ())
    try:
        await _relay(response, receive, send, outcome, extra_headers, observer, body, watcher,
                     encoded)
    finally:
        await response.aclose()
    return outcome


async def _relay(
    response: httpx.Response,
    receive: Receive,
    send: Send,
    outcome: Outcome,
    extra_headers: list[tuple[bytes, bytes]] | None,
    observer: ResponseObserver | None,
    body: _ClientBody | None = None,
    watcher: asyncio.Task[None] | None = None,
    encoded: bool = False,
) -> None:
    raw = response.headers.raw
    out_headers = response_headers(raw)
    if response.status_code in BODYLESS_STATUS:
        # No body follows: a Content-Length there (legal on a 304) describes another
        # response, and the server would wait for bytes that never come.
        out_headers = [(n, v) for n, v in out_headers if n != b"content-length"]
    start: Message = {"type": "http.response.start", "status": response.status_code,
                      "headers": out_headers}
    if extra_headers:
        if encoded:
            start[HEAD_EXTENSION] = b"".join([b"%b: %b\r\n" % f for f in extra_headers])
        else:
            out_headers.extend(extra_headers)
    if observer is not None:
        observer.on_start(response.status_code, raw)
    expected = _content_length(raw)
    chunks = response.aiter_raw()
    try:
        await send(start)
        while True:
            # Only once the request body is all read: until then its reader owns
            # receive() (and sees a departure itself); a second reader would take body
            # parts away from the upload.
            if watcher is None and outcome.bytes_out and (body is None or body.done) and (
                expected is None or outcome.bytes_out < expected
            ):
                # More body to wait for: from now on notice a client that leaves, or an
                # endless event stream would be relayed into the void forever.
                watcher = asyncio.create_task(client_gone(receive))
            try:
                if watcher is None:
                    chunk = await _next(chunks)
                else:
                    # This task owns the upstream response: it waits for the next chunk
                    # or the client's departure, and on departure cancels its own read
                    # (both transports close the connection on a cancelled read).
                    read = asyncio.ensure_future(_next(chunks))
                    await asyncio.wait((read, watcher), return_when=asyncio.FIRST_COMPLETED)
                    # A fast upstream finishes every read first: the client's departure
                    # must be noticed even then (sending to a gone client is silent).
                    if watcher.done():
                        if not read.done():
                            read.cancel()
                        with contextlib.suppress(BaseException):
                            await read
                        outcome.client_disconnected = True
                        return
                    chunk = read.result()
            except (httpx.TransportError, OSError) as exc:
                outcome.upstream_broken = True
                raise StreamAborted(str(exc), outcome) from exc
            if chunk is None:
                break
            if observer is not None:
                observer.on_chunk(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            outcome.bytes_out += len(chunk)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        outcome.complete = True
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


async def _next(chunks: AsyncIterator[bytes]) -> bytes | None:
    """The next body chunk, or None at the end."""
    try:
        return await chunks.__anext__()
    except StopAsyncIteration:
        return None
