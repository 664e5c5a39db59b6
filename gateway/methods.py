"""One Starlette route per path, whatever methods serve it.

Two `Route`s for one path (GET here, DELETE there) answer a third method with a 405 whose
`Allow` names only the first route's methods; one route that dispatches by method names
them all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

Endpoint = Callable[[Request], Awaitable[Response]]


def route(path: str, handlers: dict[str, Endpoint]) -> Route:
    """`path` served by `handlers` ({"GET": read, "DELETE": cancel}); HEAD follows GET."""
    by_method = {method.upper(): handler for method, handler in handlers.items()}

    async def endpoint(request: Request) -> Response:
        handler = by_method.get(request.method)
        if handler is None:  # HEAD, which Starlette admits wherever GET is
            handler = by_method["GET"]
        return await handler(request)

    endpoint.__name__ = "_".join(h.__name__ for h in by_method.values())
    return Route(path, endpoint, methods=list(by_method))
