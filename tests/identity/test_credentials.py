"""api_key_from_headers on raw ASGI headers."""

from __future__ import annotations

import pytest

from gateway.identity.credentials import api_key_from_headers, bearer_token

BOTH = ("x-api-key", "authorization")


@pytest.mark.parametrize("value", [
    b"Bearer gw_live_abc", b"bearer gw_live_abc", b"BEARER gw_live_abc",
    b"  Bearer   gw_live_abc  ", b"Bearer\tgw_live_abc",
])
def test_bearer_variants(value: bytes) -> None:
    assert api_key_from_headers([(b"authorization", value)], BOTH) == "gw_live_abc"


@pytest.mark.parametrize("value", [b"Basic dXNlcjpwdw==", b"Bearer", b"Bearer   ", b"",
                                   b"gw_live_abc", b"Bearerx gw_live_abc"])
def test_authorization_without_a_bearer_key(value: bytes) -> None:
    assert api_key_from_headers([(b"authorization", value)], BOTH) is None


def test_x_api_key() -> None:
    assert api_key_from_headers([(b"x-api-key", b" gw_test_k ")], BOTH) == "gw_test_k"


def test_missing_and_empty() -> None:
    assert api_key_from_headers([], BOTH) is None
    assert api_key_from_headers([(b"host", b"h"), (b"x-other", b"gw_live_k")], BOTH) is None
    assert api_key_from_headers([(b"x-api-key", b"")], BOTH) is None
    assert api_key_from_headers([(b"x-api-key", b"   ")], BOTH) is None


def test_configured_order_wins() -> None:
    headers = [(b"authorization", b"Bearer from-auth"), (b"x-api-key", b"from-header")]
    assert api_key_from_headers(headers, BOTH) == "from-header"
    assert api_key_from_headers(headers, ("authorization", "x-api-key")) == "from-auth"


def test_empty_preferred_header_falls_back() -> None:
    headers = [(b"x-api-key", b""), (b"authorization", b"Bearer k2")]
    assert api_key_from_headers(headers, BOTH) == "k2"


def test_backend_basic_auth_leaves_x_api_key_alone() -> None:
    headers = [(b"authorization", b"Basic dXNlcjpwdw=="), (b"x-api-key", b"k")]
    assert api_key_from_headers(headers, BOTH) == "k"


def test_only_configured_headers_count() -> None:
    headers = [(b"authorization", b"Bearer k")]
    assert api_key_from_headers(headers, ("x-api-key",)) is None


def test_first_occurrence_of_a_repeated_header() -> None:
    headers = [(b"x-api-key", b"one"), (b"x-api-key", b"two")]
    assert api_key_from_headers(headers, BOTH) == "one"


def test_bearer_token() -> None:
    assert bearer_token(b"Bearer t") == b"t"
    assert bearer_token(b"Token t") is None
