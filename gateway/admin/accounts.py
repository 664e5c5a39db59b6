"""Operator API for accounts: manual subscriptions, credit grants, account state.

PUT    /admin/subscriptions/{scope}/{id}   {"plan": "pro"}
DELETE /admin/subscriptions/{scope}/{id}
POST   /admin/accounts/{scope}/{id}/credits {"usd": "12.50"}
GET    /admin/accounts/{scope}/{id}
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.admin.auth import require_admin
from gateway.errors import GatewayError
from gateway.identity.registry import valid_name
from gateway.jsonbody import json_object
from gateway.metering.accounts import Account, parse_scope
from gateway.methods import route
from gateway.money import micro_to_usd, usd_to_micro
from gateway.runtime import Runtime


def _json(data: object, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _account(request: Request) -> Account:
    try:
        scope = parse_scope(request.path_params["scope"])
    except ValueError as exc:
        raise GatewayError("NOT_FOUND", str(exc)) from None
    account_id = request.path_params["id"]
    if not valid_name(account_id):
        raise GatewayError("BAD_REQUEST", f"invalid {scope} id {account_id!r}")
    return Account(scope, account_id)


async def _body(request: Request, allowed: set[str]) -> dict[str, Any]:
    return await json_object(request, allowed, exact_numbers=True)


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    require_admin(request, runtime.settings.admin_token)
    return runtime


async def put_subscription(request: Request) -> Response:
    runtime = _runtime(request)
    account = _account(request)
    body = await _body(request, {"plan"})
    plan = body.get("plan")
    if not isinstance(plan, str):
        raise GatewayError("INVALID_PLAN", "plan must be a string naming a plan in the rules")
    result = await runtime.ledger.set_plan(runtime.rules, account, plan)
    return _json(result)


async def delete_subscription(request: Request) -> Response:
    runtime = _runtime(request)
    account = _account(request)
    await runtime.ledger.clear_plan(account)
    return _json({"scope": account.scope, "id": account.id, "plan": None})


async def grant_credits(request: Request) -> Response:
    runtime = _runtime(request)
    account = _account(request)
    body = await _body(request, {"usd"})
    try:
        micro = usd_to_micro(body.get("usd"))
    except ValueError as exc:
        raise GatewayError("BAD_REQUEST", f"usd: {exc}") from None
    balance = await runtime.ledger.grant_credits(account, micro)
    return _json({"scope": account.scope, "id": account.id, "granted_micro_usd": micro,
                  "balance_micro_usd": balance, "balance_usd": micro_to_usd(balance)}, 201)


async def get_account(request: Request) -> Response:
    runtime = _runtime(request)
    account = _account(request)
    view = await runtime.ledger.view(runtime.rules, runtime.routing.tables, account)
    return _json(view)


def account_routes() -> list[Route]:
    return [
        route("/admin/subscriptions/{scope}/{id}", {"PUT": put_subscription,
                                                    "DELETE": delete_subscription}),
        Route("/admin/accounts/{scope}/{id}/credits", grant_credits, methods=["POST"]),
        Route("/admin/accounts/{scope}/{id}", get_account, methods=["GET"]),
    ]
