"""Automatic pipelining of script calls.

redis-py spends ~100 µs of CPU per command (pool checkout, retry wrapper, parsing),
more than the script itself costs Redis. Scripts issued by concurrent requests during
one event-loop tick are therefore sent as one non-transactional pipeline: one write,
one read, while every caller still waits only for its own reply. A lone request is not
delayed (the flush runs on the next loop iteration), and each call is still exactly
one Redis round trip.

Used for Sentinel and the embedded store; a single Redis has the leaner pipe.py, and a
Cluster runs scripts as direct calls (redis-py refuses EVALSHA in cluster pipelines).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError, RedisError

MAX_BATCH = 256  # bounds one write; more waiting calls go in the next batch


class ScriptBatcher:
    def __init__(self, client: Any) -> None:
        self._client = client
        self._pending: list[tuple[Any, Sequence[Any], Sequence[Any], asyncio.Future[Any]]] = []
        self._scheduled = False
        self._running: set[asyncio.Task[None]] = set()

    def call(self, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> asyncio.Future[Any]:
        """Queue one EVALSHA of a registered `Script`; the future gets its reply."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((script, keys, args, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._running.add(task)  # keep a reference until it finishes
            task.add_done_callback(self._running.discard)

    async def _execute(
        self, batch: list[tuple[Any, Sequence[Any], Sequence[Any], asyncio.Future[Any]]]
    ) -> None:
        try:
            results = await self._send(batch)
            missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if missing:
                # Redis restarted or flushed its scripts: load them once, rerun those calls.
                for script in {id(batch[i][0]): batch[i][0] for i in missing}.values():
                    script.sha = await self._client.script_load(script.script)
                again = await self._send([batch[i] for i in missing])
                for i, r in zip(missing, again, strict=True):
                    results[i] = r
        except Exception as exc:  # whatever broke, no caller may be left waiting
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, (RedisError, OSError))
                                         else RedisError(f"script batch failed: {exc!r}"))
            return
        for (*_, future), result in zip(batch, results, strict=True):
            if future.done():  # the caller gave up (deadline); its reply is dropped
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _send(
        self, batch: list[tuple[Any, Sequence[Any], Sequence[Any], asyncio.Future[Any]]]
    ) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for script, keys, args, _ in batch:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))
