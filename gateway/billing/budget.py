"""GET|POST /billing/budget: a monthly budget cap and where its alerts go.

POST (billing role) {monthly_cap_usd > 0, hard_cap?, allow_soft_overage?, alert_email?,
alert_webhook?, scope?} sets the fields it names and leaves the others as they were (as
Stripe's update calls do: raising the cap must not quietly drop a hard cap or the alert
address); `null` clears an alert target; the first POST must name the cap. DELETE (billing
role) removes the budget: no cap, no alerts. GET (any key) shows it. All answer

    {scope, id, monthly_cap_usd, hard_cap, allow_soft_overage, alert_email, alert_webhook,
     spend_usd, spend_pct, period: {id, start, end}}

A hard cap refuses (402 BUDGET_HARD_CAP_HIT) what would take spend past the cap; a soft cap
only alerts, unless `allow_soft_overage` is false (default true): then it refuses too.

Amounts are exact decimal strings (6 places, micro-USD); spend is the period hash's
`spend` (credits consumed + overage, kept by debit.lua, which also enforces the hard
cap). The account is remembered in the set `gw:budget:accounts` ("scope:id") so the alert
checker (alerts.py) only looks at accounts that have a budget. Test keys may set budgets:
nothing here touches Stripe.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any
from urllib.parse import urlsplit

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.billing.alerts import BUDGET_ACCOUNTS, budget_member, host_allowed
from gateway.caller import Caller
from gateway.errors import GatewayError
from gateway.jsonbody import json_object
from gateway.metering.accounts import Account
from gateway.metering.ledger import MAX_GRANT_MICRO
from gateway.methods import route
from gateway.money import micro_to_usd, usd_to_micro
from gateway.runtime import Runtime

MAX_CAP_MICRO = MAX_GRANT_MICRO  # $10M a month: a typo guard
_FIELDS = {"monthly_cap_usd", "hard_cap", "allow_soft_overage", "alert_email",
           "alert_webhook", "scope"}
# Deliberately plain: one @, no spaces or control characters (no header injection).
_EMAIL = re.compile(r"[^@\s\x00-\x1f\x7f<>,;\"]+@[^@\s\x00-\x1f\x7f<>,;\"]+\.[A-Za-z0-9-]+")


def _json(data: object, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _caller(request: Request, *, billing: bool) -> Caller:
    # Imported here: routes.py imports this module to build the billing app.
    from gateway.billing.routes import caller_of, require_billing_role

    caller = caller_of(request)
    if billing:
        require_billing_role(caller)
    return caller


def _account(caller: Caller, scope: object) -> Account:
    if scope is None or scope == "user":
        return Account("user", caller.user)
    if scope == "workspace":
        if not caller.workspace:
            raise GatewayError("BAD_REQUEST", "scope workspace: this key has no workspace")
        return Account("workspace", caller.workspace)
    raise GatewayError("BAD_REQUEST", "scope must be user or workspace")


def valid_email(value: str) -> bool:
    return len(value) <= 254 and _EMAIL.fullmatch(value) is not None


def valid_webhook(value: str, allow_private: bool = False) -> bool:
    """An http(s) URL; unless `allow_private`, not to localhost or a non-public address
    (customers' URLs are fetched from inside the operator's network)."""
    if len(value) > 2048 or any(c.isspace() or ord(c) < 0x20 for c in value):
        return False
    try:
        parts = urlsplit(value)
        port = parts.port  # raises on a bad port
    except ValueError:
        return False
    del port
    if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        return False
    return allow_private or host_allowed(parts.hostname)


def spend_pct(spend_micro: int, cap_micro: int) -> float | None:
    """Spend as a percentage of the cap, rounded to 2 places (not money: a ratio)."""
    if cap_micro <= 0:
        return None
    pct = (Decimal(spend_micro) * 100 / Decimal(cap_micro)).quantize(
        Decimal("0.01"), rounding=ROUND_HALF_EVEN)
    return float(pct)


async def budget_view(runtime: Runtime, account: Account) -> dict[str, Any]:
    config = await runtime.ledger.config(account)
    now = runtime.clock_ms() if runtime.clock_ms else None
    view = await runtime.ledger.view(runtime.rules, runtime.routing.tables, account, now)
    spend = int(view["spend_micro_usd"])
    cap = int(config["cap_micro"]) if config.get("cap_micro") else None
    return {
        "scope": account.scope,
        "id": account.id,
        "monthly_cap_usd": micro_to_usd(cap) if cap is not None else None,
        # (A budget set before allow_soft_overage existed has only `hard_cap`.)
        "hard_cap": config.get("hard_cap_asked", config.get("hard_cap")) == "1"
        and cap is not None,
        "allow_soft_overage": config.get("allow_soft_overage", "1") == "1" or cap is None,
        "alert_email": config.get("alert_email") or None,
        "alert_webhook": config.get("alert_webhook") or None,
        "spend_usd": micro_to_usd(spend),
        "spend_micro_usd": spend,
        "spend_pct": spend_pct(spend, cap) if cap is not None else None,
        "period": view["period"],
    }


async def _body(request: Request) -> dict[str, Any]:
    return await json_object(request, _FIELDS, exact_numbers=True)


_BUDGET_FIELDS = ("cap_micro", "hard_cap", "hard_cap_asked", "allow_soft_overage",
                  "alert_email", "alert_webhook")


def _parse(body: dict[str, Any], config: dict[str, str], allow_private: bool
           ) -> tuple[int, bool, bool, str | None, str | None]:
    """The budget after this POST: the fields it names, the account's `config` for the
    rest."""
    if "monthly_cap_usd" in body:
        if body["monthly_cap_usd"] is None:
            raise GatewayError("BAD_REQUEST", "monthly_cap_usd cannot be null; DELETE "
                               "/billing/budget removes the budget")
        try:
            cap = usd_to_micro(body["monthly_cap_usd"])
        except ValueError as exc:
            raise GatewayError("BAD_REQUEST", f"monthly_cap_usd: {exc}") from None
        if cap <= 0 or cap > MAX_CAP_MICRO:
            raise GatewayError("BAD_REQUEST", "monthly_cap_usd must be more than 0 and at "
                               "most 10000000")
    elif config.get("cap_micro"):
        cap = int(config["cap_micro"])
    else:
        raise GatewayError("BAD_REQUEST", "monthly_cap_usd is required: this account has "
                           "no budget yet")
    kept = config.get("cap_micro") is not None
    # (A budget set before allow_soft_overage existed has only `hard_cap`.)
    hard = body.get("hard_cap", kept and config.get(
        "hard_cap_asked", config.get("hard_cap")) == "1")
    if not isinstance(hard, bool):
        raise GatewayError("BAD_REQUEST", "hard_cap must be true or false")
    soft_overage = body.get("allow_soft_overage",
                            not kept or config.get("allow_soft_overage", "1") == "1")
    if not isinstance(soft_overage, bool):
        raise GatewayError("BAD_REQUEST", "allow_soft_overage must be true or false")
    email = body.get("alert_email", config.get("alert_email") or None)
    if email is not None and not (isinstance(email, str) and valid_email(email)):
        raise GatewayError("BAD_REQUEST", "alert_email must be an email address")
    hook = body.get("alert_webhook", config.get("alert_webhook") or None)
    if hook is not None and not (isinstance(hook, str) and valid_webhook(hook, allow_private)):
        raise GatewayError("BAD_REQUEST", "alert_webhook must be an http(s) URL of a public "
                           "host")
    return cap, hard, soft_overage, email, hook


async def get_budget(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    caller = _caller(request, billing=False)
    account = _account(caller, request.query_params.get("scope"))
    return _json(await budget_view(runtime, account))


async def post_budget(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    caller = _caller(request, billing=True)
    body = await _body(request)
    scope = body.get("scope", request.query_params.get("scope"))
    account = _account(caller, scope)
    cap, hard, soft_overage, email, hook = _parse(body, await runtime.ledger.config(account),
                                                  runtime.settings.alert_allow_private)
    store = runtime.store
    await runtime.ledger.set_budget(account, cap_micro=cap, hard_cap=hard,
                                    allow_soft_overage=soft_overage)
    targets = {"alert_email": email, "alert_webhook": hook}
    present = {k: v for k, v in targets.items() if v is not None}
    if present:
        await store.call(store.client.hset(account.config_key, mapping=present))
    absent = [k for k, v in targets.items() if v is None]
    if absent:
        await store.call(store.client.hdel(account.config_key, *absent))
    await store.call(store.client.sadd(BUDGET_ACCOUNTS, budget_member(account)))
    return _json(await budget_view(runtime, account))


async def delete_budget(request: Request) -> Response:
    """Remove the budget: no cap (nothing refused for spend), no alerts."""
    runtime: Runtime = request.app.state.runtime
    caller = _caller(request, billing=True)
    account = _account(caller, request.query_params.get("scope"))
    store = runtime.store
    await store.call(store.client.hdel(account.config_key, *_BUDGET_FIELDS))
    await store.call(store.client.srem(BUDGET_ACCOUNTS, budget_member(account)))
    return _json(await budget_view(runtime, account))


def routes() -> list[Route]:
    return [
        route("/billing/budget", {"GET": get_budget, "POST": post_budget,
                                  "DELETE": delete_budget}),
    ]
