"""Path normalisation: examples from RFC 3986 and the attacks it exists for, then fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError
from gateway.proxy.paths import BadPath, normalise_path


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/", "/"),
        ("/api/v1/ops/bootstrap", "/api/v1/ops/bootstrap"),
        ("/a/./b/../c", "/a/c"),
        ("/a/b/c/./../../g", "/a/g"),  # RFC 3986 §5.2.4 example
        ("/mid/content=5/../6", "/mid/6"),
        ("/..", "/"),
        ("/../../a", "/a"),
        ("/a/..", "/"),
        ("/a/b/..", "/a/"),
        ("/a/.", "/a/"),
        ("/a/", "/a/"),
        ("//a///b//", "/a/b/"),
        ("/a/%2E%2E/b", "/b"),
        ("/a/%2e/b", "/a/b"),
        ("/a/.%2E/b", "/b"),
        ("/%61%62%63", "/abc"),
        ("/%7e%2D%5f%2E", "/~-_."),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/a%3ab", "/a%3Ab"),
        ("/a:b@c!$&'()*+,;=", "/a:b@c!$&'()*+,;="),
        ("/a{b}|", "/a%7Bb%7D%7C"),
        ("/a b", "/a%20b"),
        ("/.well-known/x", "/.well-known/x"),
        ("/a..b/..c", "/a..b/..c"),
        (b"/api/v1/x", "/api/v1/x"),
        (b"/api/./v1", "/api/v1"),
    ],
)
def test_normalises(raw: str | bytes, expected: str) -> None:
    assert normalise_path(raw) == expected


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("/a%2Fb", "%2F"),
        ("/a%2fb", "%2F"),
        ("/a%5cb", "%5C"),
        ("/a%00", "%00"),
        ("/a\\b", "backslash"),
        ("/a%", "malformed"),
        ("/a%4", "malformed"),
        ("/a%zz", "malformed"),
        ("/a%+1", "malformed"),
        ("/a\x00b", "control"),
        ("/a\tb", "control"),
        ("/a\x7f", "control"),
        ("/café", "non-ASCII"),
        (b"/caf\xc3\xa9", "non-ASCII"),
        ("", "must start with '/'"),
        ("a/b", "must start with '/'"),
        ("*", "must start with '/'"),
        ("http://x/a", "must start with '/'"),
    ],
)
def test_refuses(raw: str | bytes, fragment: str) -> None:
    with pytest.raises(BadPath) as caught:
        normalise_path(raw)
    assert caught.value.code == "BAD_PATH" and caught.value.status == 400
    assert fragment in caught.value.detail
    assert isinstance(caught.value, GatewayError)


_ALPHABET = st.sampled_from(
    ["/", "/", ".", "..", "%", "%2", "%2e", "%2E", "%2f", "%5C", "%00", "%41", "%7e", "%c3",
     "a", "B", "~", "-", "_", ":", "@", "{", " ", "\\", "?", "#", "\x00", "\t", "é", "9", "F"]
)
paths = st.lists(_ALPHABET, max_size=24).map(lambda parts: "/" + "".join(parts))


def _check_output(out: str) -> None:
    assert out.startswith("/")
    for bad in ("//", "/./", "/../", "\\", "%2F", "%2f"):
        assert bad not in out
    assert not out.endswith(("/.", "/.."))
    assert all(" " < ch <= "~" for ch in out)


@settings(max_examples=2000, deadline=None)
@given(paths)
@example("/a/%2E%2E/%2e/b/")
def test_fuzz_idempotent_and_clean(raw: str) -> None:
    try:
        out = normalise_path(raw)
    except BadPath:
        return
    _check_output(out)
    assert normalise_path(out) == out
    assert normalise_path(out.encode()) == out


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=40))
def test_fuzz_arbitrary_bytes_only_raise_bad_path(raw: bytes) -> None:
    try:
        out = normalise_path(b"/" + raw)
    except BadPath:
        return
    _check_output(out)
    assert normalise_path(out) == out


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=40))
def test_fuzz_arbitrary_text_only_raises_bad_path(raw: str) -> None:
    try:
        out = normalise_path(raw)
    except BadPath:
        return
    _check_output(out)
    assert normalise_path(out) == out


def test_fast_path_returns_the_same_object() -> None:
    path = "/api/v1/ops/bootstrap"
    assert normalise_path(path) is path
