"""Small shared types: the clock and sleep seams every layer injects (tests pass fake ones),
and the base of what a lifespan opens and closes.

ASGI's ``Scope``/``Receive``/``Send``/``Message`` come from ``starlette.types``."""

from collections.abc import Awaitable, Callable
from typing import Protocol, Self

Clock = Callable[[], float]  # monotonic seconds (or wall seconds where a name says so)
Sleep = Callable[[float], Awaitable[None]]

# The scope key under which an app leaves its ``Answer`` for the drain to read if it must
# cut the call: registered once per call, so no wrapper sits on every chunk sent.
ANSWER = "canary.answer"

# The scope extension under which canary's server offers an accepted WebSocket's direct
# frame writer (``canary.serve.websocket``): a session's frames go out without an ASGI
# message each (``canary.proxy.frames``).
FRAMES = "canary.frames"


class Answer(Protocol):
    """How far an app's answer has gone: enough for the drain to end a cut call properly."""

    started: bool  # the response's headers went out
    sse: bool  # its body is an event stream (a cut ends it with an error event)


class FrameWriter(Protocol):
    """Writes one whole frame to the client at once, in order with what ``send`` wrote; False
    when it cannot (writing paused, closing, gone): then ``send`` must, and will say why."""

    def write_text(self, data: str) -> bool: ...

    def write_binary(self, data: bytes) -> bool: ...


class AsyncResource:
    """``async with resource:`` runs ``start`` on the way in and ``aclose`` on the way out.

    As httpx's transports do, so a lifespan enters every component on one ``AsyncExitStack``
    and closing is automatic, in reverse order. Both steps do nothing unless overridden.
    """

    async def start(self) -> None:
        """Begin what needs the running loop: a background task, a first round trip."""

    async def aclose(self) -> None:
        """Stop what ``start`` began and release what is held."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
