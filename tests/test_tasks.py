"""Background tasks stop, even when a library swallows the first cancellation."""

from __future__ import annotations

import asyncio

from gateway.tasks import stop_task


async def test_a_task_that_swallows_a_cancel_still_stops() -> None:
    rounds = 0

    async def stubborn() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if rounds > 1:
                    raise
                # What Python 3.11's wait_for does when its result and the cancel
                # arrive together: the cancellation is dropped and the loop goes on.

    task = asyncio.get_running_loop().create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(stop_task(task), 5)
    assert task.done() and task.cancelled()
    assert rounds == 2


async def test_stopping_a_finished_or_missing_task() -> None:
    async def done() -> None:
        return None

    task = asyncio.get_running_loop().create_task(done())
    await task
    await stop_task(task)
    await stop_task(None)


async def test_a_task_that_failed_does_not_raise_on_stop() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    task = asyncio.get_running_loop().create_task(fails())
    await asyncio.sleep(0)
    try:
        await stop_task(task)
    except RuntimeError:
        raise AssertionError("stop_task raised the task's own error") from None
