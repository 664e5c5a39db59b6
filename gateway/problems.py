"""Exception handlers of the Starlette apps (admin, billing): every error is problem+json.

Starlette's own (404, 405) keep their headers (405 says Allow); anything unexpected is a
500 INTERNAL without its traceback (which goes to the log).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import GatewayError, problem_response

log = logging.getLogger("gateway")

Handler = Callable[[Request, Exception], Awaitable[Response]]


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return problem_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "BAD_REQUEST")
    return problem_response(GatewayError(code, str(exc.detail), status=exc.status_code,
                                         headers=exc.headers or {}))


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(GatewayError("INTERNAL", "internal error; see the gateway log"))


def exception_handlers() -> Mapping[Any, Handler]:
    return {GatewayError: _gateway_error, HTTPException: _http_error,
            Exception: _internal_error}
