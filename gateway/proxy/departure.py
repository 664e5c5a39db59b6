"""Noticing a client that leaves while the upstream is still working on its request.

A GPU job may take minutes before the first byte of its answer. A client that gives up
meanwhile should not keep the upstream request (and its connection) alive until then:
like a reverse proxy's default, the gateway closes the upstream request, which is the
upstream's cue to stop. Watching costs a task per request, so the watch starts only
once the answer is `WATCH_AFTER_S` late; quick answers pay for one timer.

Only one reader may call ASGI `receive()`: until the request body is all read, its
reader owns it and notices a departure itself; the watch starts after that.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

WATCH_AFTER_S = 1.0


class Receive(Protocol):
    async def __call__(self) -> dict[str, object]: ...


class BodyState(Protocol):
    done: bool


async def client_gone(receive: Receive) -> None:
    """Returns when the client disconnects (other messages are late body parts)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class HeadWait:
    """Cancels the current task if the client leaves before the response head arrives.

    Use: `wait = HeadWait(receive, body)`; await the upstream's head; then `take()` the
    watcher (None if none started) for the body phase, or `close()` on failure. When the
    await raises CancelledError, `left()` says whether this watch caused it (and, if so,
    takes the cancellation back)."""

    def __init__(self, receive: Receive, body: BodyState | None,
                 after_s: float | None = None) -> None:
        if after_s is None:
            after_s = WATCH_AFTER_S
        self._receive = receive
        self._body = body
        self._task = asyncio.current_task()
        self._waiting = True
        self._cancelled_by_us = False
        self.watcher: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            after_s, self._arm, after_s)

    def _arm(self, after_s: float) -> None:
        self._timer = None
        if not self._waiting:
            return
        if self._body is not None and not self._body.done:
            # The upload is still being read (its reader watches): look again later.
            self._timer = asyncio.get_running_loop().call_later(after_s, self._arm, after_s)
            return
        self.watcher = asyncio.get_running_loop().create_task(client_gone(self._receive))
        self.watcher.add_done_callback(self._gone)

    def _gone(self, watcher: asyncio.Task[None]) -> None:
        if watcher.cancelled() or watcher.exception() is not None:
            return
        if self._waiting and self._task is not None:
            self._cancelled_by_us = True
            self._task.cancel()

    def left(self) -> bool:
        """After a CancelledError: True if it was this watch's (now taken back)."""
        self._waiting = False
        if not self._cancelled_by_us or self._task is None:
            return False
        # Another cancellation (a shutdown) may be pending too: it still wins.
        return self._task.uncancel() == 0

    def take(self) -> asyncio.Task[None] | None:
        """The head arrived: stop the watch's cancelling; hand over its watcher."""
        self._waiting = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return self.watcher

    def close(self) -> None:
        """No response will be relayed: stop watching altogether."""
        self.take()
        if self.watcher is not None:
            self.watcher.cancel()
