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


async def test_a_watch_taken_back_serves_the_same_call_again() -> None:
    """After a timeout taken back, the watch is idle (no deadline) until given another."""
    dog = Watchdog(tick_s=0.01)
    seen: list[bool] = []

    async def call() -> None:
        watch = dog.watch()
        try:
            for _ in range(2):  # a try that timed out, then a fallback's that times out too
                watch.deadline = asyncio.get_running_loop().time()
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    seen.append(watch.cancelled_here())
                assert (watch.deadline, watch.expired) == (float("inf"), False)
        finally:
            dog.release(watch)

    await asyncio.wait_for(call(), 5)
    assert seen == [True, True]


async def test_on_long_starts_once_after_a_full_tick_and_never_for_a_short_call() -> None:
    """``on_long`` runs once a watch has been seen by two ticks; a short call never sees it.

    The ticks are driven by hand (the timer is set an hour out)."""
    dog = Watchdog(tick_s=3600)
    started: list[str] = []
    short = dog.watch(on_long=lambda: started.append("short"))
    dog.release(short)  # ended before any tick
    long = dog.watch(on_long=lambda: started.append("long"))
    dog._tick()  # the first sighting: it may have begun just now
    assert started == []
    dog._tick()
    dog._tick()
    assert started == ["long"]  # once
    dog.release(long)


async def test_an_on_long_that_raises_stops_no_deadline() -> None:
    """A listener that fails to start is logged; the watchdog still cancels on deadlines."""
    dog = Watchdog(tick_s=3600)  # ticks driven by hand
    watches: list[Watch] = []
    seen: list[bool] = []

    def broken() -> None:
        raise RuntimeError("no listener")

    async def call() -> None:
        watch = dog.watch(on_long=broken)
        watches.append(watch)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append(watch.cancelled_here())
        finally:
            dog.release(watch)

    task = asyncio.create_task(call())
    await asyncio.sleep(0)  # it runs up to its wait
    dog._tick()
    dog._tick()  # on_long raised inside this tick
    watches[0].deadline = asyncio.get_running_loop().time()
    dog._tick()
    await asyncio.wait_for(task, 5)
    assert seen == [True]
