"""Who may use the admin API: whoever presents `Authorization: Bearer $GATEWAY_ADMIN_TOKEN`.

A plain function rather than middleware, so each admin endpoint states its own check in
its first line and open endpoints (`/metrics`, `/healthz`, `/readyz`) need no exemption
list. Fail closed: with no token configured, every admin request is refused.
"""

from __future__ import annotations

import hmac

from starlette.requests import HTTPConnection

from gateway.errors import GatewayError
from gateway.identity.credentials import bearer_token

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="gateway-admin"'}


def require_admin(request: HTTPConnection, token: str | None) -> None:
    """Return if the request carries the admin token; raise GatewayError otherwise.

    403 FORBIDDEN when no token is configured (the admin API is disabled), 401
    UNAUTHENTICATED when the token is missing or wrong. The comparison takes the same
    time wherever the first difference is, so the token cannot be guessed byte by byte.
    """
    if not token:
        raise GatewayError("FORBIDDEN", "the admin API is disabled: GATEWAY_ADMIN_TOKEN is "
                           "not set on the gateway")
    header = request.headers.get("authorization")
    presented = bearer_token(header.encode("latin-1")) if header else None
    if presented is None or not hmac.compare_digest(presented, token.encode()):
        raise GatewayError("UNAUTHENTICATED", "send Authorization: Bearer <admin token>",
                           headers=_CHALLENGE)
