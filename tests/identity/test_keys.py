"""Secrets, ids and hashes: format and entropy, no store involved."""

from __future__ import annotations

import hashlib
import re

from gateway.identity.keys import (
    ApiKey,
    generate_secret,
    hash_secret,
    is_well_formed,
    key_id,
)


def test_secrets_have_prefix_and_base62_body() -> None:
    live, test = generate_secret(False), generate_secret(True)
    assert re.fullmatch(r"gw_live_[0-9A-Za-z]{43}", live)
    assert re.fullmatch(r"gw_test_[0-9A-Za-z]{43}", test)
    assert is_well_formed(live) and is_well_formed(test)


def test_secrets_are_unique() -> None:
    assert len({generate_secret() for _ in range(1000)}) == 1000


def test_key_ids() -> None:
    ids = {key_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"key_[0-9a-f]{16}", i) for i in ids)


def test_hash_is_sha256_hex() -> None:
    assert hash_secret("gw_live_x") == hashlib.sha256(b"gw_live_x").hexdigest()


def test_malformed_secrets() -> None:
    for bad in ("", "gw_live_nope", "gw_prod_" + "a" * 43, "gw_live_" + "a" * 42,
                "gw_live_" + "a" * 42 + "-", " gw_live_" + "a" * 43):
        assert not is_well_formed(bad), bad


def test_describe_has_no_secret_fields() -> None:
    key = ApiKey("key_0123456789abcdef", "u", None, "member", False, False, 1, None, None)
    assert set(key.describe()) == {"id", "user", "workspace", "role", "test", "revoked",
                                   "created_at", "limit", "window_s"}
