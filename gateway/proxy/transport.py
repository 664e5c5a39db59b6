"""Upstream transports: what carries a proxied request to the backend.

The proxy speaks httpx's model (`httpx.Request` in, `httpx.Response` out) and calls a
transport directly, skipping `httpx.AsyncClient`: a reverse proxy wants no client
policy (no redirects, no cookie jar that would leak one tenant's cookies into another's
requests, no default headers).

Two transports are interchangeable, chosen by `GATEWAY_UPSTREAM_TRANSPORT`:
- `aiohttp` (default): `AiohttpTransport` below. aiohttp's pool is several times faster
  than httpcore's on this hardware (bench/bench.py measures both in one run).
- `httpcore`: httpx's own `AsyncHTTPTransport`.

`httpx-aiohttp` exists, but it lets aiohttp add `Accept-Encoding`, `User-Agent` and
`Content-Type` of its own and maps a server disconnect to a *connect timeout*, which
would turn a 502 into a 504; this transport keeps the request exactly as given and maps
errors precisely.

Read timeouts are this module's own (asyncio deadlines on the response head, counted from
the end of the request body, and between body chunks), not aiohttp's `sock_read`: aiohttp
3.14 can re-arm its read timer on a connection already back in the pool (when a transport
paused for backpressure resumes after the body ended), and the next request on that
connection then fails at once with a timeout that never happened.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any, cast

import aiohttp
import httpx
import yarl
from multidict import CIMultiDict

MAX_HEADER_LINE = 64 * 1024
MAX_HEADERS = 512
# Headers aiohttp would otherwise invent. A proxy forwards what the client sent.
_SKIP_AUTO = frozenset({"User-Agent", "Accept", "Accept-Encoding", "Content-Type"})


@contextmanager
def _translated(connecting: bool) -> Iterator[None]:
    """Translate aiohttp/asyncio exceptions into httpx's tree at this one boundary."""
    try:
        yield
    except aiohttp.ServerTimeoutError as exc:  # also covers sock_read/sock_connect timeouts
        if connecting and isinstance(exc, aiohttp.ConnectionTimeoutError):
            raise httpx.ConnectTimeout(str(exc) or "connect timeout") from exc
        raise httpx.ReadTimeout(str(exc) or "read timeout") from exc
    except TimeoutError as exc:
        cls = httpx.ConnectTimeout if connecting else httpx.ReadTimeout
        raise cls("timeout") from exc
    except aiohttp.ClientConnectorError as exc:
        raise httpx.ConnectError(str(exc)) from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise httpx.RemoteProtocolError(str(exc) or "server disconnected") from exc
    except aiohttp.ClientPayloadError as exc:
        raise httpx.ReadError(str(exc)) from exc
    except aiohttp.ClientOSError as exc:
        cls2 = httpx.ConnectError if connecting else httpx.ReadError
        raise cls2(str(exc)) from exc
    except aiohttp.ClientError as exc:
        raise httpx.RemoteProtocolError(str(exc)) from exc


class _ResponseStream(httpx.AsyncByteStream):
    """The upstream body, yielded as it arrives (SSE must not wait for a full buffer);
    `read_timeout` bounds the wait for each chunk."""

    def __init__(self, response: aiohttp.ClientResponse, read_timeout: float | None) -> None:
        self._response = response
        self._read_timeout = read_timeout

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        timeout = self._read_timeout
        with _translated(connecting=False):
            while True:
                if timeout is None:
                    chunk = await content.readany()
                else:
                    async with asyncio.timeout(timeout):
                        chunk = await content.readany()
                if not chunk:
                    return
                yield chunk

    async def aclose(self) -> None:
        # release() returns a fully read connection to the pool; an unfinished one is
        # closed by aiohttp (should_close), so an abandoned stream never poisons the pool.
        if self._response.content.is_eof():
            self._response.release()
        else:
            self._response.close()


class _ExactRequest(aiohttp.ClientRequest):
    """aiohttp gives a bodyless POST/PUT/PATCH/DELETE a `Content-Length: 0` of its own; a
    request without a body goes out as the client sent it (no length: no body)."""

    def update_body_from_data(self, body: Any, _stacklevel: int = 3) -> None:
        if body is None:
            self._body = None
            return
        super().update_body_from_data(body, _stacklevel + 1)


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport over one pooled `aiohttp.ClientSession`."""

    def __init__(self, *, max_connections: int = 1000, keepalive_s: float = 30.0) -> None:
        self._max_connections = max_connections
        self._keepalive_s = keepalive_s
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        # Created lazily so it binds to the running event loop of the server.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                keepalive_timeout=self._keepalive_s,
                ttl_dns_cache=60,
                enable_cleanup_closed=False,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                skip_auto_headers=_SKIP_AUTO,
                cookie_jar=aiohttp.DummyCookieJar(),
                request_class=_ExactRequest,
                # aiohttp's defaults (8 KiB a line, 128 headers) turn legal responses
                # into 502s that a browser would take; these match common servers.
                max_line_size=MAX_HEADER_LINE, max_field_size=MAX_HEADER_LINE,
                max_headers=MAX_HEADERS,
                trust_env=False,
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._get_session()
        timeout = request.extensions.get("timeout", {})
        read_timeout: float | None = timeout.get("read")
        headers = CIMultiDict[str](
            (k.decode("latin-1"), _header_text(v)) for k, v in request.headers.raw
        )
        body: _BodyStream | None = None
        if "content-length" in headers or "transfer-encoding" in headers:
            body = _BodyStream(request.stream)
            # aiohttp frames a body of unknown length itself (chunked); a declared
            # Content-Length is kept and the body sent as is.
            headers.pop("transfer-encoding", None)
        sending = session.request(
            request.method,
            # encoded=True: yarl must not re-quote what httpx carries as raw bytes.
            yarl.URL(str(request.url), encoded=True),
            headers=headers,
            data=body,
            allow_redirects=False,
            auto_decompress=False,
            compress=None,
            chunked=None,
            skip_auto_headers=_SKIP_AUTO,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout.get("connect"),
                                          sock_read=None),
        )
        with _translated(connecting=True):
            response = await _response_head(sending, body, read_timeout,
                                            timeout.get("write"))
        return httpx.Response(
            status_code=response.status,
            headers=list(response.raw_headers),
            stream=_ResponseStream(response, read_timeout),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": response.reason or ""},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            # Let the connector finish closing its sockets (aiohttp's documented idiom).
            await asyncio.sleep(0)


def _header_text(value: bytes) -> str:
    """aiohttp writes header values as UTF-8: a UTF-8 value goes out byte for byte (other
    bytes, rare and obsolete in HTTP, as their Latin-1 reading)."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


class _BodyStream:
    """The request body as aiohttp reads it, noting its progress: while it moves, the
    write timeout is what bounds it (an upload may take its time); once it has all been
    read, the read timeout for the response head starts."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.sent = asyncio.Event()
        self.moved = asyncio.get_running_loop().time()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        async for chunk in self._stream:
            yield chunk
            self.moved = loop.time()  # the upstream took it
        self.sent.set()


async def _response_head(sending: Any, body: _BodyStream | None,
                         read_timeout: float | None,
                         write_timeout: float | None = None) -> aiohttp.ClientResponse:
    """Await the response head: while the body goes out, no more than `write_timeout`
    without progress (an upstream that stops reading, a client that stops sending);
    then `read_timeout` (a bodyless request: from the start)."""
    if body is None:
        if read_timeout is None:
            return cast(aiohttp.ClientResponse, await sending)
        async with asyncio.timeout(read_timeout):
            return cast(aiohttp.ClientResponse, await sending)
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(sending)
    try:
        sent = asyncio.ensure_future(body.sent.wait())
        try:
            while not task.done() and not sent.done():
                await asyncio.wait((task, sent), timeout=write_timeout,
                                   return_when=asyncio.FIRST_COMPLETED)
                if (write_timeout is not None and not task.done() and not sent.done()
                        and loop.time() - body.moved >= write_timeout):
                    raise TimeoutError("the request body stopped moving")
        finally:
            sent.cancel()
        if not task.done():
            async with asyncio.timeout(read_timeout):
                await task
        return cast(aiohttp.ClientResponse, task.result())
    except BaseException:
        # A timeout, or the caller cancelled: the request is abandoned with its connection.
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise


def build_transport(name: str, *, max_connections: int = 1000) -> httpx.AsyncBaseTransport:
    """The upstream transport named by configuration."""
    if name == "aiohttp":
        return AiohttpTransport(max_connections=max_connections)
    if name == "httpcore":
        return httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=max_connections),
            retries=0,
        )
    raise ValueError(f"unknown upstream transport {name!r} (aiohttp or httpcore)")
