"""Request bodies of the JSON APIs (admin, billing): bounded, one object, known fields.

The proxy never reads bodies this way: these are small operator and self-service calls.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from decimal import Decimal
from typing import Any

from starlette.requests import Request

from gateway.errors import GatewayError

MAX_BODY = 16 * 1024


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The whole body, refused (413) as soon as it passes `limit` bytes."""
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise GatewayError("PAYLOAD_TOO_LARGE", f"the body is larger than {limit} bytes")
    return bytes(raw)


class _Repeated(ValueError):
    """A key given twice in one object: which one wins is no business to guess."""


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Repeated(repr(key))
        out[key] = value
    return out


async def json_object(request: Request, allowed: Collection[str], *,
                      exact_numbers: bool = False, empty_ok: bool = False) -> dict[str, Any]:
    """A JSON object with only `allowed` fields (else 400 BAD_REQUEST).

    With `exact_numbers`, numbers with a fraction are Decimals, never floats (money).
    With `empty_ok`, an empty body is `{}`.
    """
    raw = await read_body(request)
    if empty_ok and not raw.strip():
        return {}
    try:
        body = json.loads(raw, parse_float=Decimal if exact_numbers else float,
                          object_pairs_hook=_no_repeats)
    except _Repeated as exc:
        raise GatewayError("BAD_REQUEST", f"field {exc} is given twice") from None
    except (ValueError, RecursionError):
        raise GatewayError("BAD_REQUEST", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise GatewayError("BAD_REQUEST", "the body must be a JSON object")
    unknown = set(body) - set(allowed)
    if unknown:
        raise GatewayError("BAD_REQUEST", f"unknown field(s): {', '.join(sorted(unknown))} "
                           f"(allowed: {', '.join(sorted(allowed))})")
    return body
