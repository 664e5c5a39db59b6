"""A lean pipelined connection for the hot path: one Redis (redis, rediss, unix URLs).

Redis answers the commands of one connection in order, so callers write their command
at once and a protocol callback hands each reply to the oldest waiting caller (FIFO),
decoded by hiredis' C reader. No pool checkout, no lock, no per-command task: ~15 µs of
our CPU per call instead of redis-py's ~100 µs.

A command is written the moment it is made unless two or more are already unanswered;
then it joins the others made in that loop iteration in one write at its end (each
write is a system call, ~25 µs on the benchmark VM, and wakes Redis). Both extremes lost:
holding every command that had one ahead of it delayed each by the rest of the
iteration's work (hundreds of µs on a busy gateway), Redis then ran them back to back
and answered them together, and the gateway meanwhile ran out of work — idle once every
20 to 30 metered requests at 8 benchmark connections (voluntary context switches), against
once every 80 to 100 now; writing every command at once, at 32 connections, cost ~30 µs
more system time per request and gave a throughput ratio of 0.75 (0.97 with this rule).
With two ahead, Redis has ~0.2 ms of debits to run before this one anyway.

Deadlines cost one timer per connection, not one per call: the timer is armed for the
earliest deadline and, when it fires, fails every call past its own and re-arms for the
next (under load it fires a few times a second instead of being set and cancelled on
every request). A lost connection fails every waiting call (the store's deadline turns
that into STORE_UNAVAILABLE) and the next call reconnects. Cluster, Sentinel and the embedded
store use redis-py through `ScriptBatcher` instead. `unix:///path/redis.sock?db=N`
connects over a Unix socket (a Redis on the same host: cheaper than loopback TCP).
"""

from __future__ import annotations

import asyncio
import math
import ssl
from collections import deque
from collections.abc import Awaitable, Sequence
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
from redis.exceptions import ResponseError

from gateway.store.resp import pack

# A timer may fire a hair early (the loop's clock resolution): a call this close to its
# deadline is past it.
_EARLY_S = 0.001
# A command made with this many (or more) unanswered ahead of it is held for the loop
# iteration's one write (see the module's docstring).
HOLD_BEHIND = 2


class PipeError(ConnectionError):
    """The pipelined connection failed or Redis answered with an error."""


class ReplyError(ResponseError):
    """Redis answered the command with an error reply (a redis-py ResponseError, so the
    store treats both clients' errors alike)."""


Waiting = deque[tuple[asyncio.Future[Any], float]]  # each call's future and deadline


class _Protocol(asyncio.Protocol):
    def __init__(self, waiting: Waiting) -> None:
        self.waiting = waiting
        self.reader = hiredis.Reader(replyError=ReplyError)
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.lost = self.loop.create_future()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._pending: list[bytes] = []

    def submit(self, command: bytes, deadline_s: float | None) -> asyncio.Future[Any]:
        """Queue one RESP command; its reply (or error) arrives on the future, a
        TimeoutError past `deadline_s`."""
        loop = self.loop
        future = loop.create_future()
        if deadline_s is None:
            self.waiting.append((future, math.inf))
        else:
            expires = loop.time() + deadline_s
            self.waiting.append((future, expires))
            if self._timer is None or expires < self._timer_at:
                # (With one deadline for all calls, only the first call arms it.)
                self._arm(expires)
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if self._pending:  # (after the ones already held: replies come in order)
                self._pending.append(command)
            elif len(self.waiting) > HOLD_BEHIND:  # enough ahead: one write for the rest
                self._pending.append(command)
                loop.call_soon(self._flush)
            else:
                transport.write(command)
        return future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(pending))
        # (A connection lost meanwhile has failed their futures: nothing to send.)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(when, self._expire)
        self._timer_at = when

    def _expire(self) -> None:
        """Fail the calls past their deadline; re-arm for the next one."""
        self._timer = None
        now = self.loop.time() + _EARLY_S
        soonest = math.inf
        for future, expires in self.waiting:
            if future.done():
                continue
            if expires <= now:
                future.set_exception(TimeoutError("no reply within the deadline"))
            elif expires < soonest:
                soonest = expires
        if soonest != math.inf:
            self._arm(soonest)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but they are ones.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            future = self.waiting.popleft()[0]
            if future.done():  # the caller gave up; its reply is consumed and dropped
                continue
            if isinstance(reply, ReplyError):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self.waiting:
            future = self.waiting.popleft()[0]
            if not future.done():
                future.set_exception(PipeError(f"connection lost: {exc or 'closed'}"))
        if not self.lost.done():
            self.lost.set_result(None)


class RedisPipe:
    """One pipelined connection to one Redis server."""

    def __init__(self, url: str, connect_timeout_s: float = 1.0) -> None:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self._ssl = ssl.create_default_context() if parts.scheme == "rediss" else None
        # unix:///path/to/redis.sock?db=N (redis-py's form): a Redis on this host.
        self._socket_path = unquote(parts.path) if parts.scheme == "unix" else None
        self._host = parts.hostname or "127.0.0.1"
        self._port = 6379 if self._socket_path else (parts.port or 6379)
        if self._socket_path:
            self._db = int(query.get("db", ["0"])[0])
            if "password" in query:
                self._password = query["password"][0]
        else:
            path = parts.path.strip("/")
            self._db = int(path) if path else 0
        self._connect_timeout_s = connect_timeout_s
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None
        self._loading: dict[str, asyncio.Future[Any]] = {}  # sha → its SCRIPT LOAD

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        waiting: Waiting = deque()
        async with asyncio.timeout(self._connect_timeout_s):
            if self._socket_path:
                _, protocol = await loop.create_unix_connection(
                    lambda: _Protocol(waiting), self._socket_path)
            else:
                _, protocol = await loop.create_connection(
                    lambda: _Protocol(waiting), self._host, self._port, ssl=self._ssl)
        hello: list[Sequence[Any]] = []
        if self._password is not None:
            hello.append(["AUTH", self._username, self._password] if self._username
                         else ["AUTH", self._password])
        if self._db:
            hello.append(["SELECT", self._db])
        for command in hello:
            await protocol.submit(pack(command), self._connect_timeout_s)
        return protocol

    async def _ready(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and not protocol.lost.done():
            return protocol
        if self._connecting is None or self._connecting.done():
            # One connection attempt at a time; concurrent callers wait for it.
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
        try:
            self._protocol = await asyncio.shield(self._connecting)
        except (OSError, TimeoutError, ReplyError) as exc:
            where = self._socket_path or f"{self._host}:{self._port}"
            raise PipeError(f"cannot connect to Redis at {where}: {exc}") from exc
        return self._protocol

    def submit(self, command: bytes, deadline_s: float | None = None) -> Awaitable[Any]:
        """Send one RESP-encoded command; await the result for its reply (past
        `deadline_s`, TimeoutError). Connected, this is a plain future: no coroutine."""
        protocol = self._protocol
        if protocol is None or protocol.lost.done():
            return self._submit_connecting(command, deadline_s)
        return protocol.submit(command, deadline_s)

    async def _submit_connecting(self, command: bytes, deadline_s: float | None) -> Any:
        if deadline_s is None:
            protocol = await self._ready()
        else:
            async with asyncio.timeout(deadline_s):
                protocol = await self._ready()
        return await protocol.submit(command, deadline_s)

    async def execute(self, *args: Any, deadline_s: float | None = None) -> Any:
        """Send one command and wait for its reply; past `deadline_s`, TimeoutError."""
        return await self.submit(pack(args), deadline_s)

    async def evalsha(self, script: Any, keys: Sequence[Any], args: Sequence[Any],
                      deadline_s: float | None = None) -> Any:
        """EVALSHA a redis-py `Script`, loading it once if Redis does not know it."""
        return await self.evalsha_packed(
            script, pack(["EVALSHA", script.sha, len(keys), *keys, *args]), deadline_s)

    async def evalsha_packed(self, script: Any, command: bytes,
                             deadline_s: float | None = None) -> Any:
        """`evalsha` of a command already packed (an EVALSHA of `script`'s sha, which is
        the SHA1 of its source: a reload gives the same one, so `command` stays valid)."""
        try:
            return await self.submit(command, deadline_s)
        except ReplyError as exc:
            return await self.after_noscript(exc, script, command, deadline_s)

    async def after_noscript(self, exc: ReplyError, script: Any, command: bytes,
                             deadline_s: float | None = None) -> Any:
        """What follows an EVALSHA of `script` answered with `exc`: for NOSCRIPT (Redis
        restarted or was flushed) the script is loaded and `command` sent again — a
        script Redis did not know did not run, so nothing is done twice; any other
        error reply is raised."""
        if not str(exc).startswith("NOSCRIPT"):
            raise exc
        await self.load_script(script, deadline_s)
        return await self.submit(command, deadline_s)

    async def load_script(self, script: Any, deadline_s: float | None = None) -> None:
        """SCRIPT LOAD a redis-py `Script` (after NOSCRIPT: Redis restarted or flushed).

        Every call in flight when Redis lost its scripts gets NOSCRIPT at once (hundreds,
        on a busy gateway): they share one SCRIPT LOAD rather than each compiling the
        script again, which on a slow Redis took them all past their deadline. Replies
        come in order, so a command sent after the load was written finds the script."""
        loading = self._loading.get(script.sha)
        if loading is None:
            loading = asyncio.ensure_future(
                self.execute("SCRIPT", "LOAD", script.script, deadline_s=deadline_s))
            self._loading[script.sha] = loading
            loading.add_done_callback(lambda done: self._loaded(script.sha, done))
        # Shielded: a caller giving up must not cancel the load the others wait for.
        sha = await asyncio.shield(loading)
        if (sha.decode() if isinstance(sha, bytes) else sha) != script.sha:
            raise PipeError(f"Redis loaded the script as {sha!r}, not {script.sha}")

    def _loaded(self, sha: str, done: asyncio.Future[Any]) -> None:
        del self._loading[sha]  # a later flush needs a load of its own
        if not done.cancelled():
            done.exception()  # retrieved here too: its waiters may all have given up

    async def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
            await self._protocol.lost
