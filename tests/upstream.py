"""A recording HTTP/1.1 upstream on a raw asyncio socket.

It records the exact bytes of every request head it receives (so tests can check what
the proxy really sent) and offers behaviours by path:

  /echo…            200 JSON {method, target, headers, body_len}
  /upload           reads the body in a streaming way, answers {"bytes": n, "sha256": …}
  /status/NNN       answers with that status
  /sse?n=N&ms=D     N server-sent events, D ms apart (chunked)
  /forever          an endless chunked stream until the peer goes away
  /big?mb=N         N MiB body with Content-Length, streamed
  /usage?tokens=N   {"model": …, "usage": {"total_tokens": N}} and X-Units: ?units
  /sse-usage?n=K&tokens=N  K chunks, an OpenAI-style usage chunk, then [DONE]
  /gzip             a gzip-encoded body with Content-Encoding: gzip
  /hop              a response carrying hop-by-hop headers
  /hang             never answers
  /slow?ms=D        answers after D ms, unless the peer closes first (counted in `abandoned`)
  /close            closes the connection without answering
  /half             declares Content-Length 1000, sends 10 bytes, closes
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import orjson

GZIP_BODY = gzip.compress(b'{"compressed": true}' * 50)


@dataclass
class Received:
    method: str
    target: str
    raw_head: bytes
    headers: list[tuple[str, str]]
    body_len: int = 0

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def header_names(self) -> list[str]:
        return [k.lower() for k, _ in self.headers]


@dataclass
class RecordingUpstream:
    requests: list[Received] = field(default_factory=list)
    open_connections: int = 0
    open_streams: int = 0
    streams_closed_by_peer: int = 0
    abandoned: int = 0               # /slow requests whose peer left before the answer
    port: int = 0
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open_connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if not await self._one(head, reader, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self.open_connections -= 1
            with contextlib.suppress(Exception):
                writer.close()

    async def _read_body(self, rec: Received, reader: asyncio.StreamReader,
                         digest: hashlib._Hash | None = None) -> None:
        te = (rec.header("transfer-encoding") or "").lower()
        if "chunked" in te:
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    return
                remaining = size
                while remaining:
                    chunk = await reader.read(min(remaining, 1 << 16))
                    if not chunk:
                        raise asyncio.IncompleteReadError(b"", remaining)
                    remaining -= len(chunk)
                    rec.body_len += len(chunk)
                    if digest is not None:
                        digest.update(chunk)
                await reader.readexactly(2)
        else:
            remaining = int(rec.header("content-length") or 0)
            while remaining:
                chunk = await reader.read(min(remaining, 1 << 16))
                if not chunk:
                    raise asyncio.IncompleteReadError(b"", remaining)
                remaining -= len(chunk)
                rec.body_len += len(chunk)
                if digest is not None:
                    digest.update(chunk)

    async def _one(self, head: bytes, reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter) -> bool:
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = [tuple(x.split(":", 1)) for x in lines[1:] if x]
        rec = Received(method, target, head, [(k, v.strip()) for k, v in headers])
        self.requests.append(rec)
        parts = urlsplit(target)
        q = {k: v[0] for k, v in parse_qs(parts.query).items()}
        # Routes keep their prefix (/api/…, /v1/…); behaviours are named by the rest.
        path = parts.path
        for prefix in ("/api", "/v1"):
            if path.startswith(prefix + "/"):
                path = path[len(prefix):]
                break
        digest = hashlib.sha256()
        if path == "/hang":
            await asyncio.sleep(3600)
        if path == "/close":
            return False
        await self._read_body(rec, reader, digest)
        if path == "/slow":
            # The GPU job: busy for a while, but watching for a caller that hangs up.
            try:
                eof = await asyncio.wait_for(reader.read(1), int(q.get("ms", "1000")) / 1000)
            except TimeoutError:
                eof = None
            if eof == b"":
                self.abandoned += 1
                return False
        if path.startswith("/status/"):
            status = int(path.rsplit("/", 1)[1])
            if "ms" in q:  # a job that fails after a while
                await asyncio.sleep(int(q["ms"]) / 1000)
            await self._send(writer, status, b'{"status": %d}' % status)
        elif path == "/upload":
            await self._send(writer, 200, orjson.dumps(
                {"bytes": rec.body_len, "sha256": digest.hexdigest()}))
        elif path == "/sse" or path == "/forever":
            n = int(q.get("n", "1000000000")) if path == "/sse" else 10**12
            await self._stream(writer, n, float(q.get("ms", "10")) / 1000)
            return path == "/sse"
        elif path == "/big":
            size = int(float(q.get("mb", "1")) * (1 << 20))
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
                         b"content-length: %d\r\n\r\n" % size)
            block = b"x" * (1 << 16)
            sent = size if method == "HEAD" else 0
            while sent < size:
                piece = block[: min(len(block), size - sent)]
                writer.write(piece)
                sent += len(piece)
                await writer.drain()
        elif path in ("/usage", "/zero"):
            body = orjson.dumps({"model": q.get("model", "m-small"),
                                 "usage": {"total_tokens": int(q.get("tokens", "0"))}})
            extra = b"x-units: %d\r\n" % int(q.get("units", "0"))
            # ?gz=1: compress when the client accepts it, like most servers (?gz=force:
            # whatever it accepts)
            if q.get("gz") == "force" or (q.get("gz") and "gzip" in (
                    rec.header("accept-encoding") or "")):
                body = gzip.compress(body)
                extra += b"content-encoding: gzip\r\n"
            await self._send(writer, 200, body, extra=extra)
        elif path == "/sse-usage":
            await self._stream_usage(writer, int(q.get("n", "3")), int(q.get("tokens", "0")),
                                     float(q.get("ms", "0")) / 1000)
        elif path == "/notmodified":  # legal: a 304 may say the length of what it stands for
            writer.write(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 1234\r\n"
                         b"etag: \"v1\"\r\n\r\n")
            await writer.drain()
        elif path == "/status600":
            writer.write(b"HTTP/1.1 600 Beyond\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
        elif path == "/bigheaders":  # one 12 KiB header and 150 more
            many = b"".join(b"x-h%d: %d\r\n" % (i, i) for i in range(150))
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-big: " + b"b" * 12288
                         + b"\r\n" + many + b"\r\n{}")
            await writer.drain()
        elif path == "/gzip":
            await self._send(writer, 200, GZIP_BODY, extra=b"content-encoding: gzip\r\n")
        elif path == "/hop":
            await self._send(writer, 200, b"{}", extra=(
                b"Connection: keep-alive, X-Secret-Hop\r\nX-Secret-Hop: 1\r\n"
                b"keep-alive: timeout=5\r\n"
                b"proxy-authenticate: Basic\r\nx-end-to-end: kept\r\nvia: 1.0 backend\r\n"))
        elif path == "/half":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"y" * 10)
            await writer.drain()
            return False
        else:
            await self._send(writer, 200, orjson.dumps({
                "method": method, "target": target, "headers": rec.headers,
                "body_len": rec.body_len}))
        return True

    async def _send(self, writer: asyncio.StreamWriter, status: int, body: bytes,
                    extra: bytes = b"") -> None:
        writer.write(b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                     % (status, len(body)) + extra + b"\r\n" + body)
        await writer.drain()

    async def _stream(self, writer: asyncio.StreamWriter, n: int, delay: float) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"transfer-encoding: chunked\r\n\r\n")
        self.open_streams += 1
        try:
            for i in range(n):
                event = b"data: {\"i\": %d}\n\n" % i
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                await writer.drain()
                if writer.is_closing():
                    raise ConnectionResetError
                await asyncio.sleep(delay)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except ConnectionError:
            self.streams_closed_by_peer += 1
            raise
        finally:
            self.open_streams -= 1

    async def _stream_usage(self, writer: asyncio.StreamWriter, n: int, tokens: int,
                            delay: float) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"transfer-encoding: chunked\r\n\r\n")
        events = [b'data: {"model": "m-stream", "choices": [{"delta": {"content": "t"}}]}\n\n'
                  for _ in range(n)]
        events.append(b'data: {"model": "m-stream", "choices": [], "usage": '
                      b'{"prompt_tokens": 1, "total_tokens": %d}}\n\n' % tokens)
        events.append(b"data: [DONE]\n\n")
        for event in events:
            # Split events across chunk boundaries, as real streams do.
            for part in (event[:7], event[7:]):
                writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                await writer.drain()
                if delay:
                    await asyncio.sleep(delay)
        writer.write(b"0\r\n\r\n")
        await writer.drain()


class DuplexUpstream:
    """Answers at once (chunked), echoes the request body as it reads it, then tells how
    much it got: an upstream that streams while the client still uploads."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(b"5\r\nstart\r\n")
        await writer.drain()
        total = 0
        while True:  # the request body, chunked
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            data = await reader.readexactly(size)
            total += len(data)
            await reader.readexactly(2)
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))  # echoed as it is read
            await writer.drain()
        self.received.append(total)
        msg = b"got %d" % total
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(msg), msg))
        await writer.drain()
        writer.close()
