"""One timer per process bounds every stream's waits, instead of a timer per stream or chunk.

A stream being relayed is ``watch``ed: its ``deadline`` (loop seconds) is moved forward
by the relay with a plain store as chunks go through. Every ``TICK_S`` the one timer
looks at the streams watched and cancels the task of each whose deadline has passed,
marking it ``expired`` so the relay can tell that cancellation from any other. A deadline
is therefore enforced at most ``TICK_S`` late; nothing is scheduled while none is watched.
"""

from __future__ import annotations

import asyncio
from typing import Any

TICK_S = 0.5
_CANCEL_MSG = "canary: a stream's deadline passed"


class Watch:
    """One stream under watch: the task to cancel and when."""

    __slots__ = ("deadline", "expired", "task")

    def __init__(self, task: asyncio.Task[Any], deadline: float) -> None:
        self.task = task
        self.deadline = deadline
        self.expired = False

    def cancelled_here(self) -> bool:
        """After a CancelledError: True when it was this watch's, now taken back."""
        return self.expired and self.task.uncancel() == 0


class Watchdog:
    """The streams watched and the one timer that checks them (see the module docstring)."""

    def __init__(self, tick_s: float = TICK_S) -> None:
        self.tick_s = tick_s
        self._watched: set[Watch] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def watch(self, deadline: float) -> Watch:
        task = asyncio.current_task()
        assert task is not None
        watch = Watch(task, deadline)
        self._watched.add(watch)
        loop = task.get_loop()
        if self._timer is None or self._loop is not loop:  # a new loop: tests run several
            self._loop = loop
            self._timer = loop.call_later(self.tick_s, self._tick)
        return watch

    def release(self, watch: Watch) -> None:
        self._watched.discard(watch)

    def _tick(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        for watch in self._watched:
            if watch.deadline <= now and not watch.expired:
                watch.expired = True
                watch.task.cancel(_CANCEL_MSG)
        self._timer = loop.call_later(self.tick_s, self._tick) if self._watched else None
