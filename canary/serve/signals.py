"""Process signal handling shared by ``canary serve`` and ``canary simulate``, and the
router's SIGHUP (its reload)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from types import FrameType
from typing import Any


def _ignore(signum: int, frame: FrameType | None) -> None:
    """Receives the signal uvicorn re-raises after its graceful shutdown: nothing left to do."""


@contextlib.contextmanager
def stop_signals_return() -> Iterator[None]:
    """Make SIGINT/SIGTERM end ``uvicorn.Server.run`` with a plain return.

    uvicorn re-raises the signal that stopped it once it has shut down; with the default
    handlers that kills the process (or raises KeyboardInterrupt) before the caller's
    clean-up runs, which would orphan the simulators ``serve --simulators auto`` started.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stops = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, _ignore) for sig in stops}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.asynccontextmanager
async def on_sighup(action: Callable[[], Coroutine[Any, Any, object]]) -> AsyncIterator[None]:
    """Each SIGHUP runs ``action()`` in a task while the block runs; those still running at
    its end are cancelled. ``canary serve`` only: the loop must be the main thread's."""
    loop = asyncio.get_running_loop()
    running: set[asyncio.Task[Any]] = set()

    def handle() -> None:
        task = loop.create_task(action())
        running.add(task)
        task.add_done_callback(running.discard)

    loop.add_signal_handler(signal.SIGHUP, handle)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
