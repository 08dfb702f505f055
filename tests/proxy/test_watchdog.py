"""The one watchdog: a stream past its deadline is cancelled, and can tell it was."""

from __future__ import annotations

import asyncio

import pytest

from canary.proxy.watchdog import Watch, Watchdog


async def test_a_task_past_its_deadline_is_cancelled_as_the_watchdogs() -> None:
    """A watched task whose deadline has passed is cancelled; cancelled_here takes it back."""
    dog = Watchdog(tick_s=0.01)
    seen: list[bool] = []

    async def stream() -> None:
        watch = dog.watch(asyncio.get_running_loop().time())  # already due
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append(watch.cancelled_here())
        finally:
            dog.release(watch)

    await asyncio.wait_for(stream(), 5)
    assert seen == [True]


async def test_another_cancellation_is_not_taken_for_the_watchdogs() -> None:
    """A task cancelled by someone else (a client that left) before its deadline stays so."""
    dog = Watchdog(tick_s=0.01)
    watches: list[Watch] = []
    watching = asyncio.Event()

    async def stream() -> None:
        watches.append(dog.watch(asyncio.get_running_loop().time() + 3600))
        watching.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(stream())
    await watching.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not watches[0].cancelled_here()
