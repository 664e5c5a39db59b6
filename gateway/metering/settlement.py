"""Reading the actual cost from a response as it streams past (reserve → settle).

Sources, from the weight rule's `settle`:
- `{header: X-Units}` — a response header;
- `{json: usage.total_tokens}` — a dotted path into a JSON body, or into the events of a
  `text/event-stream` response (OpenAI-style streams report `usage` in the final chunk).

Event streams are scanned line by line and never buffered; only the last event carrying
the path is kept. A JSON body is copied aside (up to `MAX_JSON_BYTES`) while it streams
to the client untouched; a larger body settles at the reserve.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson

from gateway.proxy.headers import RawHeaders
from gateway.rules.model import MAX_UNITS

MAX_JSON_BYTES = 8 << 20
# A reported amount beyond what one request may cost (the rules' limit for units) is not
# believed: the reserve stands.
MAX_REPORTED = MAX_UNITS


def dig(doc: Any, path: tuple[str, ...]) -> Any:
    """Follow a dotted path through dicts and lists; None when absent."""
    for part in path:
        if isinstance(doc, dict):
            doc = doc.get(part)
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            return None
    return doc


def _units(value: Any) -> int | None:
    found: int | None = None
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value >= 0:
        found = value
    elif isinstance(value, float) and value >= 0 and value.is_integer():
        found = int(value)
    elif isinstance(value, (str, bytes)):
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        text = text.strip()
        found = int(text) if text.isascii() and text.isdigit() and len(text) <= 12 else None
    return found if found is not None and found <= MAX_REPORTED else None


class UsageObserver:
    """Watches one response for its actual units (and model, where configured)."""

    def __init__(
        self,
        json_path: tuple[str, ...] | None,
        header: bytes | None,
        model_path: tuple[str, ...] | None,
    ) -> None:
        self._json_path = json_path
        self._header = header
        self._model_path = model_path
        # Cheap pre-filter: only decode SSE lines that mention the path's last key.
        self._needle = (b'"' + json_path[-1].encode() + b'"') if json_path else None
        self._model_needle = (b'"' + model_path[-1].encode() + b'"') if model_path else None
        self._sse = False
        self._carry = b""
        # A body compressed anyway (the upstream was not asked to): gzip and deflate are
        # read through a decompressor, bounded like the body itself; others are not read.
        self._inflate: Any = None
        self._unreadable = False
        self._body: bytearray | None = None
        self.actual: int | None = None
        self.model: str | None = None
        self.status = 0

    def on_start(self, status: int, headers: RawHeaders) -> None:
        self.status = status
        for name, value in headers:
            lname = name.lower()
            if self._header is not None and lname == self._header:
                self.actual = _units(value)
            elif lname == b"content-type":
                self._sse = value.split(b";")[0].strip().lower() == b"text/event-stream"
            elif lname == b"content-encoding":
                coding = value.strip().lower()
                if coding in (b"gzip", b"x-gzip"):
                    self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
                elif coding == b"deflate":
                    self._inflate = zlib.decompressobj()
                elif coding not in (b"", b"identity"):
                    self._unreadable = True
        if not self._sse and (self._json_path or self._model_path):
            self._body = bytearray()

    def on_chunk(self, chunk: bytes) -> None:
        if self._unreadable:
            return
        if self._inflate is not None:
            try:
                chunk = self._inflate.decompress(chunk, MAX_JSON_BYTES)
            except zlib.error:
                self._unreadable = True
                return
        if self._sse:
            self._scan_events(chunk)
        elif self._body is not None:
            if len(self._body) + len(chunk) > MAX_JSON_BYTES:
                self._body = None  # too large to inspect: settles at the reserve
            else:
                self._body += chunk

    def finish(self) -> None:
        """Call once the body has ended (or stopped): parse a buffered JSON body."""
        if self._sse:
            if self._carry:
                self._line(self._carry)
                self._carry = b""
            return
        if self._body:
            try:
                doc = orjson.loads(self._body)
            except orjson.JSONDecodeError:
                return
            finally:
                self._body = None
            self._take(doc)

    def _scan_events(self, chunk: bytes) -> None:
        data = self._carry + chunk if self._carry else chunk
        lines = data.split(b"\n")
        self._carry = lines.pop()
        if len(self._carry) > MAX_JSON_BYTES:
            self._carry = b""  # a runaway line without newline: not an event we can read
        for line in lines:
            self._line(line)

    def _line(self, line: bytes) -> None:
        if not line.startswith(b"data:"):
            return
        if not ((self._needle and self._needle in line)
                or (self._model_needle and self.model is None and self._model_needle in line)):
            return
        try:
            doc = orjson.loads(line[5:].strip())
        except orjson.JSONDecodeError:
            return
        self._take(doc)

    def _take(self, doc: Any) -> None:
        if self._json_path:
            found = _units(dig(doc, self._json_path))
            if found is not None:
                self.actual = found
        if self._model_path and self.model is None:
            model = dig(doc, self._model_path)
            if isinstance(model, str) and 0 < len(model) <= 128:
                self.model = model
