"""One timer per process bounds every call's waits, instead of a timer per call or chunk.

A call is ``watch``ed from the moment it is forwarded to its end. Its ``deadline`` (loop
seconds, ``inf`` while nothing is awaited from the upstream) is set with a plain store:
to the headers' bound before a request goes out, and past the last chunk relayed while
a body streams. Every ``TICK_S`` the one timer looks at the calls watched and cancels the
task of each whose deadline has passed, marking it ``expired`` so the call can tell that
cancellation from any other (``cancelled_here``). A deadline is therefore enforced at
most ``TICK_S`` late; nothing is scheduled while none is watched.

The same tick starts what a short call never needs: a watch given ``on_long`` has it
called once the call has been seen by two ticks, i.e. after at least ``TICK_S``. The
proxy listens for a client's disconnect that way (``canary.proxy.exchange``), so a call
answered in under half a second costs no listener task at all.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger("canary.proxy")

TICK_S = 0.5
_CANCEL_MSG = "canary: a call's deadline passed"


class Watch:
    """One call under watch: the task to cancel, when, and what to start if it runs long."""

    __slots__ = ("deadline", "expired", "on_long", "seen", "task")

    def __init__(
        self, task: asyncio.Task[Any], deadline: float, on_long: Callable[[], None] | None
    ) -> None:
        self.task = task
        self.deadline = deadline
        self.expired = False
        self.on_long = on_long
        self.seen = False  # by one tick already

    def cancelled_here(self) -> bool:
        """After a CancelledError: True when it was this watch's, now taken back (the
        watch then serves on, for a retry or a fallback of the same call)."""
        if not self.expired:
            return False
        self.expired = False
        self.deadline = math.inf
        return self.task.uncancel() == 0


class Watchdog:
    """The calls watched and the one timer that checks them (see the module docstring)."""

    def __init__(self, tick_s: float = TICK_S) -> None:
        self.tick_s = tick_s
        self._watched: set[Watch] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def watch(self, deadline: float = math.inf, on_long: Callable[[], None] | None = None) -> Watch:
        """Watch the current task until ``release``."""
        task = asyncio.current_task()
        assert task is not None
        watch = Watch(task, deadline, on_long)
        self._watched.add(watch)
        loop = task.get_loop()
        if self._timer is None or self._loop is not loop:  # a new loop: tests run several
            self._loop = loop
            self._timer = loop.call_later(self.tick_s, self._tick)
        return watch

    def release(self, watch: Watch) -> None:
        self._watched.discard(watch)
        watch.on_long = None  # it refers back to the call: no cycle left for the collector

    def _tick(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        long: list[Callable[[], None]] = []
        for watch in self._watched:
            if watch.deadline <= now and not watch.expired:
                watch.expired = True
                watch.task.cancel(_CANCEL_MSG)
            if watch.on_long is not None:
                if watch.seen:
                    long.append(watch.on_long)
                    watch.on_long = None
                else:
                    watch.seen = True
        self._timer = loop.call_later(self.tick_s, self._tick) if self._watched else None
        for start in long:  # outside the loop over the set: a start may watch another
            try:
                start()
            except Exception:  # one call's listener must not stop every deadline
                log.exception("watchdog.on_long_failed")
