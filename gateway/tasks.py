"""Stopping the gateway's background tasks (alerts, reporter, clock, journal replay)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("gateway")

# How often a stop repeats its cancel while the task is still running (see stop_task).
RECANCEL_EVERY_S = 0.5


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` and wait until it has stopped (a task that had failed is logged).

    One cancel is not always enough: on Python 3.11, `asyncio.wait_for` (used inside
    redis-py and fakeredis) drops a cancellation that arrives in the same loop turn as
    its result, and the task carries on into its next round. So the cancel is repeated
    until the task is done; its next await is a fresh cancellation point.
    """
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=RECANCEL_EVERY_S)
    if not task.cancelled() and task.exception() is not None:
        # A task that died of a bug must not stop the rest of the shutdown.
        log.error("background task %s had failed", task.get_name(), exc_info=task.exception())
