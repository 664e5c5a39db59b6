"""Open the store named by `GATEWAY_REDIS_URL`, or the embedded one.

URL forms:
- `redis://host:port/db`, `rediss://…` — one Redis (TLS with rediss)
- `redis+cluster://host:port` — Redis Cluster, discovered from that seed node
- `redis+sentinel://host:port[,host:port…]/service_name[/db]` — Sentinel-managed primary

Without a URL the gateway runs on fakeredis with lupa: the very same Lua scripts,
in-process, not persisted. Useful for `gateway demo` and for trying rules out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar
from urllib.parse import parse_qs, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from gateway.config import SettingsError
from gateway.errors import StoreUnavailable
from gateway.store.batch import ScriptBatcher
from gateway.store.pipe import RedisPipe
from gateway.store.resp import pack

log = logging.getLogger("gateway.store")

T = TypeVar("T")

# Every Redis call has a short deadline so a dead Redis never stalls requests.
DEFAULT_DEADLINE_S = 0.25


def reraise(exc: Exception) -> NoReturn:
    """Raise what a failed store call means for the request: STORE_UNAVAILABLE when the
    store did not answer in time or answered with an error; anything else (a bug in the
    caller) as itself."""
    if isinstance(exc, TimeoutError):
        raise StoreUnavailable() from exc
    if isinstance(exc, (RedisError, OSError)):
        raise StoreUnavailable(f"store error: {type(exc).__name__}") from exc
    raise exc


@dataclass
class Store:
    """A Redis-compatible client plus the facts the gateway needs about it."""

    client: Any  # redis.asyncio.Redis | RedisCluster | fakeredis FakeRedis
    description: str
    embedded: bool = False
    cluster: bool = False
    deadline_s: float = DEFAULT_DEADLINE_S
    pipe: RedisPipe | None = field(default=None, repr=False)
    _batcher: ScriptBatcher | None = field(default=None, repr=False)

    def run_script(self, script: Any, keys: Sequence[Any], args: Sequence[Any]
                   ) -> Awaitable[Any]:
        """EVALSHA a registered script on the hot path, pipelined with concurrent calls:
        over the lean connection for a single Redis (pipe.py), else redis-py (batch.py);
        on a Cluster, one call per script, routed to the account's slot."""
        if self.pipe is not None:
            return self.pipe.evalsha(script, keys, args)
        if self.cluster:
            # Routed by the keys' slot; redis-py reloads the script on NOSCRIPT.
            return script(keys=keys, args=args)  # type: ignore[no-any-return]
        if self._batcher is None:
            self._batcher = ScriptBatcher(self.client)
        return self._batcher.call(script, keys, args)

    async def call(self, awaitable: Awaitable[T], deadline_s: float | None = None) -> T:
        """Await one store operation within the deadline; failures become StoreUnavailable."""
        try:
            async with asyncio.timeout(deadline_s or self.deadline_s):
                return await awaitable
        except Exception as exc:
            reraise(exc)

    async def read(self, make: Callable[[], Awaitable[T]], deadline_s: float | None = None
                   ) -> T:
        """A read, retried once on a broken connection (a pooled connection goes stale
        when Redis restarts). Writes use `call`: a write may have run before the
        connection broke, and money must not move twice."""
        try:
            return await self.call(make(), deadline_s)
        except StoreUnavailable as exc:
            if not isinstance(exc.__cause__, (RedisConnectionError, ConnectionError)):
                raise
        return await self.call(make(), deadline_s)

    async def script(self, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """`run_script` within the deadline: the hot path's one store call."""
        if self.pipe is None:
            return await self.call(self.run_script(script, keys, args))
        return await self.script_packed(
            script, pack(["EVALSHA", script.sha, len(keys), *keys, *args]))

    async def script_packed(self, script: Any, command: bytes) -> Any:
        """An EVALSHA of `script` already in RESP (see resp.CommandTemplate), within the
        deadline. Only with `pipe` (a single Redis): the other clients take arguments."""
        assert self.pipe is not None, "packed commands need the pipelined connection"
        try:
            return await self.pipe.evalsha_packed(script, command, self.deadline_s)
        except Exception as exc:
            reraise(exc)

    async def ping(self) -> bool:
        try:
            await self.call(self.client.ping())
        except StoreUnavailable:
            return False
        return True

    async def close(self) -> None:
        if self.pipe is not None:
            await self.pipe.close()
        try:
            await self.client.aclose()
        except Exception:  # closing a dead connection may raise; nothing to do about it
            log.debug("store close failed", exc_info=True)


def open_store(url: str | None, *, deadline_s: float = DEFAULT_DEADLINE_S) -> Store:
    """Build the store client (connections are opened lazily by redis-py). A URL it
    cannot use is a SettingsError naming GATEWAY_REDIS_URL."""
    if not url:
        return _embedded(deadline_s)
    try:
        return _open(url, deadline_s)
    except ValueError as exc:
        raise SettingsError(f"GATEWAY_REDIS_URL {url!r}: {exc}") from None


def _check_db(number: str) -> None:
    if not (number.isascii() and number.isdigit()):
        raise ValueError(f"the database must be a number, not {number!r}")


def _open(url: str, deadline_s: float) -> Store:
    parts = urlsplit(url)
    if parts.scheme in ("redis", "rediss", "redis+cluster"):
        if not parts.hostname:
            raise ValueError("no host (redis://host:port/db)")
        parts.port  # noqa: B018 -- raises ValueError on a port that is not a number
        _check_db(parts.path.strip("/") or "0")
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("no socket path (unix:///path/to/redis.sock?db=N)")
        _check_db(parse_qs(parts.query).get("db", ["0"])[0])
    # The socket timeouts are a backstop; Store.call's deadline is the real limit.
    socket_s = deadline_s * 4
    client: Any
    if parts.scheme == "redis+cluster":
        client = RedisCluster.from_url(
            url.replace("redis+cluster://", "redis://", 1),
            socket_timeout=socket_s, socket_connect_timeout=socket_s)
        return Store(client, f"Redis Cluster at {parts.netloc}", cluster=True,
                     deadline_s=deadline_s)
    if parts.scheme == "redis+sentinel":
        hosts = []
        for hostport in parts.netloc.split(","):
            host, _, port = hostport.rpartition(":")
            hosts.append((host, int(port or 26379)))
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ValueError("redis+sentinel:// URL needs a service name: …/service_name")
        db = int(path[1]) if len(path) > 1 else 0
        sentinel = Sentinel(hosts, socket_timeout=socket_s,  # type: ignore[no-untyped-call]
                            socket_connect_timeout=socket_s)
        client = sentinel.master_for(path[0], db=db, socket_timeout=socket_s,
                                     socket_connect_timeout=socket_s)
        return Store(client, f"Redis via Sentinel {parts.netloc}/{path[0]}",
                     deadline_s=deadline_s)
    if parts.scheme in ("redis", "rediss", "unix"):
        client = aioredis.Redis.from_url(url, socket_timeout=socket_s,
                                         socket_connect_timeout=socket_s)
        where = (parts.path if parts.scheme == "unix"
                 else f"{parts.hostname}:{parts.port or 6379}")
        return Store(client, f"Redis at {where}", deadline_s=deadline_s,
                     pipe=RedisPipe(url, connect_timeout_s=socket_s))
    raise ValueError(f"unsupported scheme {parts.scheme!r} (redis://, rediss://, "
                     "redis+cluster://, redis+sentinel://, unix://)")


def _embedded(deadline_s: float) -> Store:
    import fakeredis

    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    # In-process calls cannot hang on a network; a generous deadline only guards bugs.
    return Store(client, "embedded store (in-process, same Lua, NOT persisted)",
                 embedded=True, deadline_s=max(deadline_s, 2.0))
