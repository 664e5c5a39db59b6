"""Path patterns and method sets of weight rules, compiled once at load time.

Patterns match *normalised* paths (see gateway.proxy.paths):
- `*` matches within one segment (`[^/]*`): a whole segment (`/ops/*`) or part of one
  (`/v1/models/*:predict`);
- `**` matches any rest, including nothing, and may only be the whole last segment:
  `/api/v1/**` matches `/api/v1`, `/api/v1/` and `/api/v1/a/b`.
Anything a normalised path can never contain is refused, so a rule cannot silently
never match.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.proxy.paths import BadPath, normalise_path

__all__ = ["METHODS", "PathPattern", "compile_pattern", "parse_method"]

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

_FORBIDDEN_CHARS = {"?": "'?' (a query is not part of the path)",
                    "#": "'#' (a fragment never reaches the server)",
                    "[": "'[' (character classes are not supported)",
                    "\\": "a backslash"}
_FORBIDDEN_ESCAPES = ("%2F", "%5C", "%00")


@dataclass(frozen=True, slots=True)
class PathPattern:
    """A compiled path pattern; literal patterns compare strings, others use a regex."""

    text: str
    literal: str | None
    regex: re.Pattern[str] | None

    def matches(self, path: str) -> bool:
        if self.literal is not None:
            return path == self.literal
        assert self.regex is not None
        return self.regex.fullmatch(path) is not None


def compile_pattern(text: str) -> PathPattern:
    """Compile a path pattern; raises ValueError saying what is wrong."""
    if not text.startswith("/"):
        raise ValueError("a path pattern must start with '/'")
    for char, why in _FORBIDDEN_CHARS.items():
        if char in text:
            raise ValueError(f"a path pattern must not contain {why}")
    if any(c.isspace() for c in text):
        raise ValueError("a path pattern must not contain whitespace")
    upper = text.upper()
    for escape in _FORBIDDEN_ESCAPES:
        if escape in upper:
            raise ValueError(f"a path pattern must not contain {escape}; such paths are refused")
    segments = text[1:].split("/")
    for index, segment in enumerate(segments):
        if segment in (".", ".."):
            raise ValueError(f"'{segment}' segments never survive path normalisation")
        if segment == "" and index != len(segments) - 1:
            raise ValueError("empty segment ('//') never matches a normalised path")
        if "**" in segment and (segment != "**" or index != len(segments) - 1):
            raise ValueError("'**' is only allowed as the whole last segment")
    try:
        # Spell literals the way requests are spelled after normalisation (`%7e` -> `~`).
        canonical = normalise_path(text)
    except BadPath as exc:
        raise ValueError(exc.detail) from None
    if "*" not in canonical:
        return PathPattern(text, canonical, None)
    return PathPattern(text, None, re.compile(_to_regex(canonical)))


def _to_regex(canonical: str) -> str:
    if canonical.endswith("/**"):
        head, tail = canonical[:-3], "(?:/.*)?"
    else:
        head, tail = canonical, ""
    return "/".join(re.escape(part).replace(r"\*", "[^/]*") for part in head.split("/")) + tail


def parse_method(value: str) -> str:
    """Upper-case a method name; '*' stays '*'. Raises ValueError for non-standard methods."""
    method = value.strip().upper()
    if method != "*" and method not in METHODS:
        raise ValueError(f"'{value}' is not an HTTP method (one of {', '.join(METHODS)} or '*')")
    return method
