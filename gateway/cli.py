"""`gateway` command line: serve, check, explain, demo, keys."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from gateway.config import Settings, SettingsError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway", description="Metering reverse proxy.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="serve the public and admin listeners")
    _rules_arg(s)
    s.add_argument("--host", default="0.0.0.0")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--admin-host", default="127.0.0.1")
    s.add_argument("--admin-port", type=int, default=9090)
    s.add_argument("--no-access-log", action="store_true", help="do not write the access log")

    c = sub.add_parser("check", help="validate a rules file")
    c.add_argument("rules")

    e = sub.add_parser("explain", help="show how a request would be routed and weighed")
    e.add_argument("rules")
    e.add_argument("method")
    e.add_argument("path")

    d = sub.add_parser("demo", help="gateway + demo upstream on the embedded store")
    d.add_argument("--rules", default=None, help="rules file (default: the bundled example)")
    d.add_argument("--port", type=int, default=8080)
    d.add_argument("--admin-port", type=int, default=9090)
    d.add_argument("--upstream-port", type=int, default=0, help="demo upstream port (0: any)")

    k = sub.add_parser("keys", help="manage API keys (needs GATEWAY_REDIS_URL)")
    ksub = k.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    kc = ksub.add_parser("create", help="create a key; the secret is printed once")
    kc.add_argument("--user", required=True)
    kc.add_argument("--workspace", default=None, help="omit for a personal key")
    kc.add_argument("--role", default="member", choices=["member", "billing"])
    kc.add_argument("--test", action="store_true", help="a gw_test_ key (never reaches Stripe)")
    kc.add_argument("--limit", type=int, default=None, help="per-key throughput limit (units)")
    kc.add_argument("--window", type=int, default=None, help="per-key window in seconds")
    kc.add_argument("--json", action="store_true")
    kl = ksub.add_parser("list", help="list keys (never their secrets)")
    kl.add_argument("--json", action="store_true")
    kr = ksub.add_parser("revoke", help="revoke a key by id")
    kr.add_argument("id")

    sb = sub.add_parser("subscriptions", help="manual (comp) subscriptions")
    sbsub = sb.add_subparsers(dest="sub_command", required=True, metavar="ACTION")
    ss = sbsub.add_parser("set", help="give an account a plan now")
    _account_args(ss)
    ss.add_argument("--plan", required=True)

    cr = sub.add_parser("credits", help="prepaid credits")
    crsub = cr.add_subparsers(dest="credits_command", required=True, metavar="ACTION")
    cg = crsub.add_parser("grant", help="add prepaid credits to an account")
    _account_args(cg)
    cg.add_argument("--usd", required=True, help="amount in USD, e.g. 12.50")

    # --- Stripe usage reporting (gateway/billing/reporter.py) ---
    rp = sub.add_parser("report", help="one round of overage reporting to Stripe Billing "
                        "Meters (needs GATEWAY_REDIS_URL and STRIPE_API_KEY)")
    rp.add_argument("--rules", default=None, help="rules file to validate first (optional)")
    rp.add_argument("--json", action="store_true")

    us = sub.add_parser("usage", help="an account's plan, quota, credits and windows")
    _account_args(us)
    us.add_argument("--json", action="store_true")
    return p


def _rules_arg(p: argparse.ArgumentParser) -> None:
    # One rules file for every command of a deployment: GATEWAY_RULES, else ./rules.yaml.
    p.add_argument("--rules", default=os.environ.get("GATEWAY_RULES") or "rules.yaml",
                   help="rules file (default: $GATEWAY_RULES, else rules.yaml)")


def _account_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scope", required=True, choices=["workspace", "user"])
    p.add_argument("--id", required=True, dest="account_id")
    _rules_arg(p)


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _load_rules_or_exit(path: str):  # type: ignore[no-untyped-def]
    from gateway.rules import RulesError, load_rules

    try:
        return load_rules(path)
    except RulesError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as exc:
        raise SystemExit(f"{path}: {exc.strerror or exc} (give the rules file with --rules "
                         "PATH or GATEWAY_RULES)") from None


def _serve(args: argparse.Namespace) -> int:
    from gateway.server import serve

    _logging()
    settings = Settings.from_env(
        rules_path=args.rules, host=args.host, port=args.port, admin_host=args.admin_host,
        admin_port=args.admin_port, access_log=False if args.no_access_log else None)
    rules = _load_rules_or_exit(args.rules)
    if settings.redis_url is None:
        logging.getLogger("gateway").warning(
            "GATEWAY_REDIS_URL is not set: using the EMBEDDED store (in-process, same Lua, "
            "not persisted, one process only). Set GATEWAY_REDIS_URL for production.")
    from gateway.runtime import Runtime

    _run(serve(Runtime(settings, rules)))
    return 0


def _run(coro) -> None:  # type: ignore[no-untyped-def]
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)


async def _store_command(args: argparse.Namespace) -> int:
    """Commands that act on the store directly (GATEWAY_REDIS_URL)."""
    from gateway.identity import commands
    from gateway.metering import commands as metering
    from gateway.store import open_store

    settings = Settings.from_env()
    if settings.redis_url is None:
        print(f"gateway {args.command} needs GATEWAY_REDIS_URL: the embedded store lives "
              "inside the gateway process. Use the admin API instead (see README).",
              file=sys.stderr)
        return 2
    store = open_store(settings.redis_url, deadline_s=2.0)
    try:
        if not await store.ping():  # one sentence that says where, not "store error"
            print(f"gateway {args.command}: cannot reach the store ({store.description}, "
                  "GATEWAY_REDIS_URL)", file=sys.stderr)
            return 1
        if args.command == "subscriptions":
            rules = _load_rules_or_exit(args.rules)
            return await metering.subscriptions_set(
                store, rules, args.scope, args.account_id, args.plan, sys.stdout, sys.stderr)
        if args.command == "credits":
            return await metering.credits_grant(
                store, args.scope, args.account_id, args.usd, sys.stdout, sys.stderr)
        if args.command == "usage":
            rules = _load_rules_or_exit(args.rules)
            return await metering.usage(store, rules, args.scope, args.account_id, args.json,
                                        sys.stdout, sys.stderr)
        if args.keys_command == "create":
            return await commands.keys_create(
                store, user=args.user, workspace=args.workspace, role=args.role,
                test=args.test, limit=args.limit, window_s=args.window,
                as_json=args.json, out=sys.stdout)
        if args.keys_command == "list":
            return await commands.keys_list(store, as_json=args.json, out=sys.stdout)
        return await commands.keys_revoke(store, args.id, out=sys.stdout)
    finally:
        await store.close()


async def _report(args: argparse.Namespace) -> int:
    """`gateway report`: one reporting round (the same one `serve` runs every
    report_interval_s). Exit 0 when everything due went out, 1 when some of it waits."""
    import json

    from gateway.billing.reporter import Reporter
    from gateway.billing.stripe_client import build_stripe_client
    from gateway.store import open_store

    if args.rules:
        _load_rules_or_exit(args.rules)
    settings = Settings.from_env()
    if settings.redis_url is None or not settings.stripe_api_key:
        print("gateway report needs GATEWAY_REDIS_URL and STRIPE_API_KEY", file=sys.stderr)
        return 2
    client = build_stripe_client(settings)
    assert client is not None
    store = open_store(settings.redis_url, deadline_s=2.0)
    try:
        result = await Reporter(store, client, hold_s=settings.report_hold_s).run_once(
            ignore_backoff=True)
    finally:
        await store.close()
    summary = {"streams": result.streams, "sent": result.sent,
               "duplicates": result.duplicates, "acked": result.acked,
               "failures": result.failures, "no_customer": result.no_customer,
               "backlog": result.backlog, "lag_seconds": round(result.lag_s, 3)}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{result.sent} meter events sent, {result.duplicates} already delivered, "
              f"{result.acked} usage entries acknowledged across {result.streams} streams; "
              f"{result.backlog} entries waiting ({result.failures} Stripe failures, "
              f"{result.no_customer} accounts without a Stripe customer)")
    return 1 if result.failures or result.no_customer else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _main(args)
    except SettingsError as exc:  # a bad environment variable: a sentence, exit 2
        print(f"gateway: {exc}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    if args.command == "serve":
        return _serve(args)
    if args.command == "check":
        from gateway.rules.commands import check

        return check(args.rules, sys.stdout, sys.stderr)
    if args.command == "explain":
        from gateway.rules.commands import explain

        return explain(args.rules, args.method, args.path, sys.stdout, sys.stderr)
    if args.command == "demo":
        from gateway.demo.run import run_demo

        _logging()
        return run_demo(rules_path=args.rules, port=args.port, admin_port=args.admin_port,
                        upstream_port=args.upstream_port)
    if args.command == "report":  # Stripe usage reporting
        return _sentence_on_failure(args.command, _report(args))
    if args.command in ("keys", "subscriptions", "credits", "usage"):
        return _sentence_on_failure(args.command, _store_command(args))
    return 2


def _sentence_on_failure(command: str, work: Coroutine[Any, Any, int]) -> int:
    """Run a store or Stripe command; a failure is one sentence, not a traceback."""
    try:
        return asyncio.run(work)
    except SystemExit:
        raise
    except Exception as exc:
        print(f"gateway {command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
