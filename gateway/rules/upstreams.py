"""The `upstreams:` and `routes:` sections: where traffic goes."""

from __future__ import annotations

from urllib.parse import urlsplit

import yaml

from gateway.proxy.paths import BadPath, normalise_path
from gateway.rules.model import Route, Upstream
from gateway.rules.reader import Reader, child

__all__ = ["check_url", "read_routes", "read_upstreams"]

DEFAULT_TIMEOUT_MS = 30_000
MAX_CONNECT_TIMEOUT_MS = 5_000


def check_url(url: str) -> str | None:
    """Why `url` is not a usable http(s) URL, or None if it is."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        return f"'{url}' is not a valid URL: {exc}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"'{url}' is not an http:// or https:// URL with a host"
    if parts.query or parts.fragment:
        return f"'{url}' must not have a query or fragment"
    return None


def read_upstreams(r: Reader, node: yaml.Node) -> tuple[dict[str, Upstream], set[str]]:
    """Parse `upstreams:`; returns the valid upstreams and every declared name."""
    upstreams: dict[str, Upstream] = {}
    declared: set[str] = set()
    for _key, name, body in r.entries(node, "upstreams") or ():
        declared.add(name)
        loc = f"upstreams.{name}"
        f = r.mapping(body, loc, ("url", "timeout", "connect_timeout"), required=("url",))
        if f is None or "url" not in f:
            continue
        url = r.string(f["url"], child(loc, "url"))
        if url is not None and (why := check_url(url)) is not None:
            r.error(f["url"], child(loc, "url"), why)
            url = None
        timeout = r.duration_ms(f["timeout"], child(loc, "timeout"), minimum_ms=1) \
            if "timeout" in f else DEFAULT_TIMEOUT_MS
        connect: int | None = None
        if "connect_timeout" in f:
            connect = r.duration_ms(f["connect_timeout"], child(loc, "connect_timeout"), 1)
            if connect is None:
                continue
        elif timeout is not None:
            connect = min(timeout, MAX_CONNECT_TIMEOUT_MS)
        if url is None or timeout is None or connect is None:
            continue
        upstreams[name] = Upstream(name, url.rstrip("/"), timeout / 1000, connect / 1000)
    return upstreams, declared


def read_routes(
    r: Reader, node: yaml.Node, upstreams: dict[str, Upstream], declared: set[str]
) -> list[Route] | None:
    """Parse `routes:`; prefixes must be distinct (ignoring a trailing slash) and canonical."""
    items = r.sequence(node, "routes")
    if items is None:
        return None
    if not items:
        r.error(node, "routes", "at least one route is needed (every request would be 404)")
    routes: list[Route] = []
    seen: dict[str, int] = {}
    ok = True
    for i, item in enumerate(items):
        loc = f"routes[{i}]"
        f = r.mapping(item, loc, ("prefix", "upstream", "name"), required=("prefix", "upstream"))
        if f is None or "prefix" not in f or "upstream" not in f:
            ok = False
            continue
        prefix = _prefix(r, f["prefix"], child(loc, "prefix"))
        if prefix is not None:
            key = prefix.rstrip("/")
            if key in seen:
                r.error(f["prefix"], child(loc, "prefix"),
                        f"duplicate prefix '{prefix}' (same as routes[{seen[key]}])")
                prefix = None
            else:
                seen[key] = i
        up_name = r.string(f["upstream"], child(loc, "upstream"))
        if up_name is not None and up_name not in declared:
            r.error(f["upstream"], child(loc, "upstream"), f"unknown upstream '{up_name}' "
                    f"(declared: {', '.join(sorted(declared)) or 'none'})")
        name = r.string(f["name"], child(loc, "name")) if "name" in f else prefix
        upstream = upstreams.get(up_name) if up_name is not None else None
        if prefix is None or upstream is None or name is None:
            ok = False
            continue
        routes.append(Route(prefix, upstream, name))
    return routes if ok else None


def _prefix(r: Reader, node: yaml.Node, loc: str) -> str | None:
    prefix = r.string(node, loc)
    if prefix is None:
        return None
    if not prefix.startswith("/"):
        r.error(node, loc, f"'{prefix}' must start with '/'")
        return None
    try:
        canonical = normalise_path(prefix)
    except BadPath as exc:
        r.error(node, loc, f"'{prefix}': {exc.detail}")
        return None
    if canonical != prefix:
        # Requests are matched after normalisation, so this spelling could never match.
        r.error(node, loc, f"'{prefix}' is not a normalised path; write '{canonical}'")
        return None
    return prefix
