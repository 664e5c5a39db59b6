"""The billing endpoints under /billing/ on the public listener, as one Starlette app.

The gateway identifies the caller before dispatching here (except for the webhook,
which Stripe signs) and passes it as `scope["gateway.caller"]`.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway.billing import budget, selfservice, webhooks
from gateway.caller import Caller
from gateway.errors import GatewayError, problem_response
from gateway.runtime import Runtime


def caller_of(request: Request) -> Caller:
    caller = request.scope.get("gateway.caller")
    if not isinstance(caller, Caller):
        raise GatewayError("UNAUTHENTICATED", "send an API key")
    return caller


def require_billing_role(caller: Caller) -> None:
    """Writes (checkout, top-up, portal, cancel, budget) need a key with role billing."""
    if caller.role != "billing":
        raise GatewayError("FORBIDDEN", "this needs an API key with the billing role "
                           "(gateway keys create --role billing)")


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return problem_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "BAD_REQUEST")
    return problem_response(GatewayError(code, str(exc.detail), status=exc.status_code))


async def _internal_error(request: Request, exc: Exception) -> Response:
    return problem_response(GatewayError("INTERNAL", "internal error; see the gateway log"))


def build_billing_app(runtime: Runtime) -> Starlette:
    app = Starlette(
        routes=[*selfservice.routes(), *webhooks.routes(), *budget.routes()],
        exception_handlers={GatewayError: _gateway_error, HTTPException: _http_error,
                            Exception: _internal_error})
    app.router.redirect_slashes = False
    app.state.runtime = runtime
    return app
