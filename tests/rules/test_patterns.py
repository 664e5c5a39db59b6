"""Path patterns, methods and durations: what compiles, what matches, what is refused."""

from __future__ import annotations

import pytest

from gateway.rules.durations import parse_duration_ms
from gateway.rules.patterns import compile_pattern, parse_method


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/api/v1/ops/*", "/api/v1/ops/add", True),
        ("/api/v1/ops/*", "/api/v1/ops/a/b", False),
        ("/api/v1/ops/*", "/api/v1/opsx", False),
        ("/v1/models/*:predict", "/v1/models/m1:predict", True),
        ("/v1/models/*:predict", "/v1/models/m1:explain", False),
        ("/v1/models/*:predict", "/v1/models/a/b:predict", False),
        ("/api/v1/**", "/api/v1", True),
        ("/api/v1/**", "/api/v1/", True),
        ("/api/v1/**", "/api/v1/a/b/c", True),
        ("/api/v1/**", "/api/v1x", False),
        ("/**", "/", True),
        ("/a.b/c+d", "/a.b/c+d", True),
        ("/a.b/c+d", "/aXb/c+d", False),  # '.' is literal, not a regex wildcard
        ("/a/%7e", "/a/~", True),  # written encoded, matched as normalised
        ("/a/%3a", "/a/%3A", True),
    ],
)
def test_matching(pattern: str, path: str, matches: bool) -> None:
    assert compile_pattern(pattern).matches(path) is matches


def test_literal_patterns_skip_the_regex() -> None:
    compiled = compile_pattern("/v1/chat/completions")
    assert compiled.literal == "/v1/chat/completions" and compiled.regex is None


@pytest.mark.parametrize(
    ("pattern", "fragment"),
    [
        ("api/v1", "must start with '/'"),
        ("/a?b", "'?'"),
        ("/a#b", "'#'"),
        ("/a[b]", "'['"),
        ("/a b", "whitespace"),
        ("/a\\b", "backslash"),
        ("/a%2fb", "%2F"),
        ("/a%5Cb", "%5C"),
        ("/a%00", "%00"),
        ("/a/**/b", "'**' is only allowed"),
        ("/a/x**", "'**' is only allowed"),
        ("/a/../b", "'..' segments"),
        ("/a/./b", "'.' segments"),
        ("/a//b", "empty segment"),
        ("/a/%zz", "malformed percent escape"),
    ],
)
def test_refused_patterns(pattern: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=None) as caught:
        compile_pattern(pattern)
    assert fragment in str(caught.value)


def test_methods() -> None:
    assert parse_method("post") == "POST"
    assert parse_method("*") == "*"
    with pytest.raises(ValueError, match="'FETCH' is not an HTTP method"):
        parse_method("FETCH")


@pytest.mark.parametrize(
    ("value", "ms"),
    [("250ms", 250), ("30s", 30_000), ("5m", 300_000), ("1h", 3_600_000),
     ("2d", 172_800_000), (45, 45_000), ("0s", 0)],
)
def test_durations(value: str | int, ms: int) -> None:
    assert parse_duration_ms(value) == ms


@pytest.mark.parametrize("value", ["30", "1.5s", "30 seconds", "s", "-1s", "1w", "", True, -3])
def test_bad_durations(value: str | int) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration_ms(value)
