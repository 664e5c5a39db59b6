"""API keys: the stored record, and how secrets are made and hashed.

A secret looks like `gw_live_<43 base62 chars>` (or `gw_test_…`): 32 random bytes from
`secrets`, base62 so the whole key is one "word" (double-click selects it; no `-`/`_`
inside the random part to confuse with the prefix). Only its SHA-256 is stored; the secret
is shown once, at creation.

Why an unsalted, fast hash is enough: the secret carries 256 bits of entropy, so there
is nothing to brute-force or precompute; salts and slow KDFs protect low-entropy
passwords. A plain digest also lets the hot path find a key with one lookup by hash.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
from dataclasses import dataclass
from typing import Any

LIVE_PREFIX = "gw_live_"
TEST_PREFIX = "gw_test_"
ROLES = ("member", "billing")

_ALPHABET = string.digits + string.ascii_letters  # base62
_SECRET_BYTES = 32
_BODY_LEN = 43  # ceil(256 / log2(62)): every 32-byte value fits, zero-padded
_WELL_FORMED = re.compile(rf"gw_(?:live|test)_[0-9A-Za-z]{{{_BODY_LEN}}}")


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as stored: everything about it except its secret."""

    id: str
    user: str
    workspace: str | None
    role: str  # "member" | "billing"
    test: bool
    revoked: bool
    created_at: int  # unix seconds
    limit: int | None = None  # optional per-key throughput limit (units per window)
    window_s: int | None = None

    def describe(self) -> dict[str, Any]:
        """The public view (admin API, CLI): never includes a secret, which isn't stored."""
        return {
            "id": self.id,
            "user": self.user,
            "workspace": self.workspace,
            "role": self.role,
            "test": self.test,
            "revoked": self.revoked,
            "created_at": self.created_at,
            "limit": self.limit,
            "window_s": self.window_s,
        }


def generate_secret(test: bool = False) -> str:
    """A new secret: `gw_live_`/`gw_test_` + 32 random bytes in base62."""
    n = int.from_bytes(secrets.token_bytes(_SECRET_BYTES), "big")
    digits = []
    for _ in range(_BODY_LEN):
        n, r = divmod(n, 62)
        digits.append(_ALPHABET[r])
    return (TEST_PREFIX if test else LIVE_PREFIX) + "".join(reversed(digits))


def key_id() -> str:
    """A new public key id: `key_` + 16 hex digits (safe to log and show)."""
    return "key_" + secrets.token_hex(8)


def hash_secret(secret: str) -> str:
    """SHA-256 hex of the secret: what the store is indexed by (see module docstring)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def is_well_formed(secret: str) -> bool:
    """Whether `secret` could be one of ours; anything else is refused without a lookup."""
    return _WELL_FORMED.fullmatch(secret) is not None
