"""Process signal handling shared by ``canary serve`` and ``canary simulate``."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


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
