"""CLI implementations: `gateway subscriptions set`, `gateway credits grant`, `gateway usage`."""

from __future__ import annotations

from typing import TYPE_CHECKING, TextIO

import orjson

from gateway.errors import GatewayError
from gateway.identity.registry import valid_name
from gateway.metering.accounts import Account, parse_scope
from gateway.metering.ledger import Ledger
from gateway.metering.plans import PlanTables
from gateway.metering.scripts import Scripts
from gateway.money import micro_to_usd, usd_to_micro
from gateway.store import Store

if TYPE_CHECKING:
    from gateway.rules import Rules


def _ledger(store: Store) -> Ledger:
    return Ledger(store, Scripts.register(store))


def _account(scope: str, account_id: str) -> Account:
    """The account named on the command line, checked as the admin API checks it."""
    if not valid_name(account_id):
        raise ValueError(f"invalid {scope} id {account_id!r} (1-128 of A-Z a-z 0-9 . _ : @ -)")
    return Account(parse_scope(scope), account_id)


async def subscriptions_set(store: Store, rules: Rules, scope: str, account_id: str,
                            plan: str, out: TextIO, err: TextIO) -> int:
    try:
        result = await _ledger(store).set_plan(rules, _account(scope, account_id), plan)
    except (GatewayError, ValueError) as exc:
        print(f"error: {getattr(exc, 'detail', exc)}", file=err)
        return 1
    print(f"{result['scope']} {result['id']}: plan {result['plan']} (active, manual)", file=out)
    for sub_id in result["replaced_subscriptions"]:
        print(f"note: it replaces Stripe subscription {sub_id}, whose events no longer change "
              "the plan; Stripe still bills it until it is cancelled there", file=err)
    return 0


async def credits_grant(store: Store, scope: str, account_id: str, usd: str,
                        out: TextIO, err: TextIO) -> int:
    try:
        micro = usd_to_micro(usd)
        balance = await _ledger(store).grant_credits(_account(scope, account_id), micro)
    except (GatewayError, ValueError) as exc:
        print(f"error: {getattr(exc, 'detail', exc)}", file=err)
        return 1
    print(f"granted ${micro_to_usd(micro)} to {scope} {account_id}; "
          f"balance ${micro_to_usd(balance)}", file=out)
    return 0


async def usage(store: Store, rules: Rules, scope: str, account_id: str, as_json: bool,
                out: TextIO, err: TextIO) -> int:
    try:
        view = await _ledger(store).view(rules, PlanTables.build(rules),
                                         _account(scope, account_id))
    except (GatewayError, ValueError) as exc:
        print(f"error: {getattr(exc, 'detail', exc)}", file=err)
        return 1
    if as_json:
        print(orjson.dumps(view, option=orjson.OPT_INDENT_2).decode(), file=out)
        return 0
    print(f"{view['scope']} {view['id']}: plan {view['plan'] or '-'} "
          f"({view['status'] or 'no plan'}), period {view['period']['id']} "
          f"{view['period']['start']} .. {view['period']['end']}", file=out)
    for q in view["quota"]:
        total = "-" if q["total"] is None else q["total"]
        print(f"  {q['meter']}: {q['used']} of {total} quota used, {q['units']} units in all",
              file=out)
    print(f"  credits ${micro_to_usd(view['credits_micro_usd'])}, "
          f"{view['requests']} requests this period", file=out)
    for w in view["windows"]:
        print(f"  window {w['window_seconds']}s: {w['used']}/{w['limit']} used", file=out)
    return 0
