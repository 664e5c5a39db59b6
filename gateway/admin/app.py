"""The admin listener (default 127.0.0.1:9090): metrics, health, operator API.

`/metrics`, `/healthz` and `/readyz` are open (scrapers and probes); everything under
`/admin/` needs `Authorization: Bearer $GATEWAY_ADMIN_TOKEN`.
"""

from __future__ import annotations

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.admin.accounts import account_routes
from gateway.admin.auth import require_admin
from gateway.admin.economics import economics_routes
from gateway.admin.keys import key_routes
from gateway.errors import GatewayError
from gateway.problems import exception_handlers
from gateway.runtime import Runtime


def _json(data: object, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


async def metrics(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def healthz(request: Request) -> Response:
    return _json({"status": "ok"})


async def readyz(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    store_ok = await runtime.store.ping()
    checks = {"store": "ok" if store_ok else "unreachable",
              "rules": "ok" if runtime.ready else "not loaded"}
    ready = store_ok and runtime.ready
    return _json({"status": "ready" if ready else "not ready", "checks": checks},
                 200 if ready else 503)


async def reload_rules(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    require_admin(request, runtime.settings.admin_token)
    problems = runtime.reload()
    if problems:
        raise GatewayError("RULES_INVALID", f"{runtime.settings.rules_path} refused; the "
                           "old rules stay", problems=problems)
    return _json({"reloaded": True, "source": runtime.rules.source})


def build_admin_app(runtime: Runtime) -> Starlette:
    routes = [
        Route("/metrics", metrics),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/admin/reload", reload_rules, methods=["POST"]),
        *key_routes(),
        *account_routes(),
        *economics_routes(),
    ]
    app = Starlette(routes=routes, exception_handlers=dict(exception_handlers()))
    # No redirect from /admin/keys/ to /admin/keys: a 307 would answer before the
    # token is checked. An unknown path is a plain 404.
    app.router.redirect_slashes = False
    app.state.runtime = runtime
    app.state.registry = runtime.registry
    app.state.admin_token = runtime.settings.admin_token
    return app
