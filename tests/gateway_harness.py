"""Start a real gateway (both listeners, real HTTP on loopback) inside the test's loop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx

from gateway.config import Settings
from gateway.rules import parse_rules
from gateway.runtime import Runtime
from gateway.server import Gateway
from gateway.store import open_store

ADMIN_TOKEN = "test-admin-token"  # generated per test run would be no safer: loopback only

BASE_RULES = """
version: 1
upstreams:
  main: {{url: "{upstream}", timeout: {timeout}, connect_timeout: 2s}}
routes:
  - {{prefix: /api/, upstream: main}}
  - {{prefix: /v1/, upstream: main}}
  - {{prefix: /, upstream: main, name: root}}
identity:
  api_key_headers: [X-Api-Key, Authorization]
  trusted_proxies: [10.9.9.0/24]
meters:
  fcu: {{usd_per_unit: 0.000002}}
weights:
  default: {{meter: fcu, units: 1}}
  rules: []
plans:
  big: {{throughput: [{{limit: 1000000000, window: 60s}}], quota: {{fcu: 1000000000000}}}}
defaults: {{user_plan: big}}
enforce: true
store_failure: closed
"""


@dataclass
class RunningGateway:
    gateway: Gateway
    url: str
    admin_url: str

    @property
    def runtime(self) -> Runtime:
        return self.gateway.runtime

    async def new_key(self, user: str = "u1", workspace: str | None = None,
                      test: bool = False) -> str:
        _, secret = await self.runtime.registry.create(user=user, workspace=workspace,
                                                       test=test)
        return secret


@asynccontextmanager
async def running_gateway(
    rules_text: str,
    store_url: str | None = None,
    **settings: object,
) -> AsyncIterator[RunningGateway]:
    rules = parse_rules(rules_text, filename="test-rules.yaml")
    settings.setdefault("journal_path", "")  # memory only, unless a test names a file
    config = Settings.from_env(host="127.0.0.1", port=0, admin_host="127.0.0.1",
                               admin_port=0, admin_token=ADMIN_TOKEN, access_log=False,
                               redis_url=store_url, **settings)
    store = open_store(store_url)
    await store.client.flushdb()
    gw = Gateway(Runtime(config, rules, store=store))
    await gw.start()
    try:
        yield RunningGateway(gw, f"http://127.0.0.1:{gw.port()}",
                             f"http://127.0.0.1:{gw.port('admin')}")
    finally:
        await gw.stop()


def client(base_url: str, timeout: float = 10, **kw: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url, timeout=timeout, **kw)  # type: ignore[arg-type]
