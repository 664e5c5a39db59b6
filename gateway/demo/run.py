"""`gateway demo`: the gateway on the embedded store in front of a built-in demo upstream.

It prints a demo key and curl lines that show an admitted request, a throttled one and
one refused for money, so a newcomer sees 200, 429 and 402 within a minute.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sys
from importlib import resources

import uvicorn

from gateway.config import Settings
from gateway.demo.upstream import build_demo_upstream
from gateway.metering.accounts import Account
from gateway.rules import Rules
from gateway.server import Gateway, serve

log = logging.getLogger("gateway.demo")


def bundled_rules_path() -> str:
    """The example rules.yaml shipped inside the package (the repo's rules.yaml)."""
    return str(resources.files("gateway.demo").joinpath("rules.yaml"))


def run_demo(rules_path: str | None, port: int, admin_port: int, upstream_port: int) -> int:
    # The bundled example unless asked: the printed curl lines are written for its plans,
    # whatever rules.yaml lies in the current directory.
    path = rules_path or bundled_rules_path()
    from gateway.cli import _load_rules_or_exit, _run

    rules: Rules = _load_rules_or_exit(path)
    _run(_demo(path, rules, port, admin_port, upstream_port))
    return 0


async def _demo(path: str, rules: Rules, port: int, admin_port: int, upstream_port: int) -> None:
    upstream = uvicorn.Server(uvicorn.Config(
        build_demo_upstream(), host="127.0.0.1", port=upstream_port, lifespan="off",
        access_log=False, log_config=None))
    upstream_task = asyncio.create_task(upstream._serve())
    while not upstream.started:
        if upstream_task.done():
            raise SystemExit("the demo upstream failed to start")
        await asyncio.sleep(0.01)
    up_port = upstream.servers[0].sockets[0].getsockname()[1]
    up_url = f"http://127.0.0.1:{up_port}"

    def prepare(r: Rules) -> Rules:
        return r.with_upstream_urls({name: up_url for name in r.upstreams})

    token = os.environ.get("GATEWAY_ADMIN_TOKEN") or secrets.token_urlsafe(24)
    settings = Settings.from_env(rules_path=path, host="127.0.0.1", port=port,
                                 admin_port=admin_port, admin_token=token)
    from gateway.runtime import Runtime

    runtime = Runtime(settings, rules, prepare=prepare)
    try:
        await serve(runtime, on_ready=lambda gw: _introduce(gw, token, up_url))
    finally:
        upstream.should_exit = True
        await upstream_task


async def _introduce(gateway: Gateway, admin_token: str, upstream_url: str) -> None:
    runtime = gateway.runtime
    _, secret = await runtime.registry.create(user="demo-user")
    _, trial_secret = await runtime.registry.create(user="demo-trial")
    if "trial" in runtime.rules.plans:
        await runtime.ledger.set_plan(runtime.rules, Account("user", "demo-trial"), "trial")
    base = f"http://127.0.0.1:{gateway.port('public')}"
    admin = f"http://127.0.0.1:{gateway.port('admin')}"
    h = f'-H "X-Api-Key: {secret}"'
    print(f"""
  Metering gateway demo — {runtime.store.description}
  rules: {runtime.rules.source}   demo upstream: {upstream_url}

  Demo API key (user demo-user, plan free):  {secret}
  Trial key (user demo-trial, plan trial):   {trial_secret}
  Admin token:                               {admin_token}

  200 — an admitted request (see the X-Gateway-* and RateLimit headers):
    curl -i {h} -X POST {base}/api/v1/ops/add

  401 — no key:
    curl -i -X POST {base}/api/v1/ops/add

  429 — throughput: the free plan admits a few expensive ops per minute:
    for i in 1 2 3 4 5; do curl -s -o /dev/null -w "%{{http_code}}\\n" {h} -X POST {base}/api/v1/ops/bootstrap; done

  402 — money: the second key (user demo-trial, plan trial: 100 fcu) pays for two
  bootstraps, then gets 402 QUOTA_EXHAUSTED:
    for i in 1 2 3; do curl -s -w " %{{http_code}}\\n" -H "X-Api-Key: {trial_secret}" -X POST {base}/api/v1/ops/bootstrap; done

  Your plan, quota, credits, usage and window gauges:
    curl -s {h} {base}/usage/me

  Chat completion, streamed, settled from the final usage chunk:
    curl -N {h} {base}/v1/chat/completions -d '{{"model":"demo-7b","stream":true,"messages":[{{"role":"user","content":"hi"}}]}}'

  Metrics:   curl -s {admin}/metrics | grep gateway_requests
  New key:   curl -s -H "Authorization: Bearer {admin_token}" {admin}/admin/keys -d '{{"user":"alice"}}'

  Ctrl-C stops the demo.
""", file=sys.stderr, flush=True)
