"""Request path normalisation: one spelling per path, so what is weighed is what runs.

The weight rules match on the normalised path and the upstream receives exactly that
path. Anything whose meaning depends on who decodes it (`%2F`, `%5C`, `%00`, a literal
backslash, broken escapes, raw bytes outside printable ASCII) is refused with BAD_PATH
rather than guessed at.

Steps, in order: decode percent-encoded unreserved characters, upper-case the hex of the
remaining escapes, percent-encode printable characters that are not allowed in a path,
remove dot segments (RFC 3986 §5.2.4, after decoding, so `%2E%2E` is `..`), fold repeated
slashes. A trailing slash is kept.
"""

from __future__ import annotations

import re

from gateway.errors import GatewayError

__all__ = ["BadPath", "normalise_path"]


class BadPath(GatewayError):
    """The request path is ambiguous or malformed (400 BAD_PATH)."""

    def __init__(self, detail: str) -> None:
        super().__init__("BAD_PATH", detail)


# RFC 3986 pchar without pct-encoded, plus "/": what may appear literally in the output.
_PCHAR = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/"
)
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")
# Decoded values that change a path's structure or truncate it somewhere downstream.
_FORBIDDEN_ESCAPES = {"2F": "%2F (encoded slash)", "5C": "%5C (encoded backslash)",
                      "00": "%00 (encoded NUL)"}
# The common case: already canonical, so nothing to do but check.
_SAFE = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@/]*")


def normalise_path(raw: bytes | str) -> str:
    """Return the canonical form of a raw (still percent-encoded, query-less) path.

    Raises `BadPath` for anything ambiguous or malformed; never anything else.
    """
    if isinstance(raw, bytes):
        try:
            path = raw.decode("ascii")
        except UnicodeDecodeError:
            raise BadPath("the path contains non-ASCII bytes; percent-encode them") from None
    else:
        path = raw
    # Fast path: only safe characters, no escapes, no empty or dot segments.
    if _SAFE.fullmatch(path) and "//" not in path and "/." not in path:
        return path
    return _normalise_slow(path)


def _normalise_slow(path: str) -> str:
    if not path.startswith("/"):
        raise BadPath("the path must start with '/'")
    out: list[str] = []
    i, n = 0, len(path)
    while i < n:
        ch = path[i]
        if ch == "%":
            hexpair = path[i + 1 : i + 3]
            if len(hexpair) != 2 or not (hexpair[0] in _HEX and hexpair[1] in _HEX):
                raise BadPath(f"malformed percent escape at offset {i}")
            hexpair = hexpair.upper()
            if hexpair in _FORBIDDEN_ESCAPES:
                raise BadPath(f"the path contains {_FORBIDDEN_ESCAPES[hexpair]}")
            decoded = chr(int(hexpair, 16))
            out.append(decoded if decoded in _UNRESERVED else "%" + hexpair)
            i += 3
            continue
        if ch in _PCHAR:
            out.append(ch)
        elif ch == "\\":
            raise BadPath("the path contains a backslash")
        elif " " <= ch <= "~":
            out.append(f"%{ord(ch):02X}")  # printable but not allowed literally: encode
        else:
            raise BadPath("the path contains a control or non-ASCII character")
        i += 1
    return _remove_dot_segments("".join(out))


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 on an absolute path, also folding empty segments (`//`)."""
    parts = path[1:].split("/")
    kept: list[str] = []
    trailing = False
    last = len(parts) - 1
    for index, segment in enumerate(parts):
        if segment in ("", "."):
            trailing = index == last
            continue
        if segment == "..":
            if kept:
                kept.pop()
            trailing = index == last
            continue
        kept.append(segment)
        trailing = False
    if not kept:
        return "/"
    return "/" + "/".join(kept) + ("/" if trailing else "")
