"""The two seams every layer injects: a clock and a sleep (tests pass fake ones).

ASGI's ``Scope``/``Receive``/``Send``/``Message`` come from ``starlette.types``."""

from collections.abc import Awaitable, Callable

Clock = Callable[[], float]  # monotonic seconds (or wall seconds where a name says so)
Sleep = Callable[[float], Awaitable[None]]
