"""The billing endpoints under /billing/ on the public listener, as one Starlette app.

The gateway identifies the caller before dispatching here (except for the webhook,
which Stripe signs) and passes it as `scope["gateway.caller"]`.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request

from gateway.billing import budget, selfservice, webhooks
from gateway.caller import Caller
from gateway.errors import GatewayError
from gateway.problems import exception_handlers
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


def build_billing_app(runtime: Runtime) -> Starlette:
    app = Starlette(
        routes=[*selfservice.routes(), *webhooks.routes(), *budget.routes()],
        exception_handlers=dict(exception_handlers()))
    app.router.redirect_slashes = False
    app.state.runtime = runtime
    return app
