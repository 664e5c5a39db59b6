"""`/admin/keys`: create, list and revoke API keys.

Mount with `Starlette(routes=[*key_routes(), …])`. The handlers read the registry from
`request.app.state.registry` and the admin token from `request.app.state.admin_token`,
so the routes are plain values that any admin app can include.

    POST   /admin/keys       {user, workspace?, role?, test?, limit?, window_s?}
                             → 201 {id, key, user, workspace, role, test, created_at, …}
    GET    /admin/keys       → 200 {keys: [...]}   (never secrets: they are not stored)
    DELETE /admin/keys/{id}  → 200 {id, revoked: true} | 404 NOT_FOUND
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.admin.auth import require_admin
from gateway.errors import GatewayError, problem_response
from gateway.identity.registry import KeyRegistry
from gateway.jsonbody import json_object
from gateway.methods import route

Handler = Callable[[Request], Awaitable[Response]]

# field -> accepted JSON types (bool is not an int here; see _check_types)
_CREATE_FIELDS: dict[str, tuple[type, ...]] = {
    "user": (str,),
    "workspace": (str, type(None)),
    "role": (str,),
    "test": (bool,),
    "limit": (int, type(None)),
    "window_s": (int, type(None)),
}


def key_routes() -> list[Route]:
    """The `/admin/keys` routes, to include in the admin app's route list."""
    return [
        route("/admin/keys", {"POST": create_key, "GET": list_keys}),
        Route("/admin/keys/{id}", revoke_key, methods=["DELETE"]),
    ]


def _admin(handler: Handler) -> Handler:
    """Check the admin token first; render GatewayErrors as problem+json here, so the
    routes behave the same in any app, with or without its exception handlers."""

    @wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            require_admin(request, request.app.state.admin_token)
            return await handler(request)
        except GatewayError as err:
            return problem_response(err)

    return wrapped


def _json(data: object, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _registry(request: Request) -> KeyRegistry:
    registry: KeyRegistry = request.app.state.registry
    return registry


@_admin
async def create_key(request: Request) -> Response:
    """Create a key; the response is the only place its secret ever appears."""
    body = await _json_object(request)
    key, secret = await _registry(request).create(
        user=body["user"],  # present and a str; its shape is checked by the registry
        workspace=body.get("workspace"),
        role=body.get("role", "member"),
        test=body.get("test", False),
        limit=body.get("limit"),
        window_s=body.get("window_s"),
    )
    return _json({"id": key.id, "key": secret, **key.describe()}, status=201)


@_admin
async def list_keys(request: Request) -> Response:
    """All keys, oldest first, without secrets."""
    keys = await _registry(request).list()
    return _json({"keys": [k.describe() for k in keys]})


@_admin
async def revoke_key(request: Request) -> Response:
    """Revoke by id; replicas stop accepting the key within the key cache TTL (≤ 5 s)."""
    id_ = request.path_params["id"]
    if not await _registry(request).revoke(id_):
        raise GatewayError("NOT_FOUND", f"no key with id {id_}")
    return _json({"id": id_, "revoked": True})


async def _json_object(request: Request) -> dict[str, Any]:
    body = await json_object(request, _CREATE_FIELDS)
    if "user" not in body:
        raise GatewayError("BAD_REQUEST", "user is required")
    for name, value in body.items():
        types = _CREATE_FIELDS[name]
        # bool is a subclass of int in Python but not a number in this API.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise GatewayError("BAD_REQUEST", f"{name} has the wrong type")
    return body
