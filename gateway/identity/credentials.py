"""The API key a request carries, read from its raw ASGI headers.

Runs on every request, so it makes one pass over the headers and no allocations beyond
the answer. The configured header order is the preference order: with
`("x-api-key", "authorization")` an `X-Api-Key` wins, and an `Authorization` header with
another scheme (e.g. `Basic …` meant for the backend) is not a gateway key at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

_AUTHORIZATION = b"authorization"


@lru_cache(maxsize=16)
def _ranks(header_names: tuple[str, ...]) -> dict[bytes, int]:
    # Encoded once per configuration (header_names comes from the parsed rules).
    ranks: dict[bytes, int] = {}
    for rank, name in enumerate(header_names):
        ranks.setdefault(name.lower().encode("latin-1"), rank)
    return ranks


def bearer_token(value: bytes) -> bytes | None:
    """The credentials of `Bearer <token>` (scheme case-insensitive), else None."""
    parts = value.split(None, 1)
    if len(parts) == 2 and parts[0].lower() == b"bearer":
        return parts[1].strip() or None
    return None


def api_key_from_headers(
    headers: Sequence[tuple[bytes, bytes]], header_names: tuple[str, ...]
) -> str | None:
    """The API key from the first configured header that carries one, or None.

    `headers` are ASGI raw headers (lower-case names); `header_names` are lower-case.
    For `authorization` only the `Bearer` scheme counts. Empty values count as absent.
    """
    ranks = _ranks(header_names)
    best: bytes | None = None
    best_rank = len(ranks)
    for name, value in headers:
        rank = ranks.get(name)
        if rank is None or rank >= best_rank:
            continue
        candidate = bearer_token(value) if name == _AUTHORIZATION else value.strip()
        if candidate:
            best, best_rank = candidate, rank
    return best.decode("latin-1") if best is not None else None
