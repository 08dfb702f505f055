"""The client's side of one exchange: router-made answers in OpenAI's error shape.

``Client`` is what the send chain writes to: it knows whether an answer has begun (after
that, a failure can only end the stream, never replace the answer), and it stamps every
answer with canary's headers (``x-canary-backend``, ``-route``, ``-fallback``,
``-request-id``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from starlette.types import Message, Receive, Send

from canary.config.model import Backend
from canary.errors import RouterError
from canary.proxy.facts import Tap

TIMEOUT = "upstream_timeout"
CONNECT = "upstream_error"


class Client:
    """Where the answer goes, and what has gone there already."""

    __slots__ = (
        "disconnected",
        "done",
        "request_id",
        "route",
        "send",
        "sse",
        "started",
        "tap",
    )

    def __init__(self, send: Send, request_id: bytes) -> None:
        self.send = send
        self.request_id = request_id
        self.route = b""  # the route's name once one matched
        self.started = False  # the response's headers went out
        self.sse = False  # the body is an event stream (the drain's cut needs to know)
        self.done = False  # the response is complete: a disconnect now is no failure
        self.disconnected = False
        self.tap: Tap | None = None  # what went out, when a shadow copy compares with it

    def stamp(self, headers: list[tuple[bytes, bytes]], backend: str, origin: str | None) -> None:
        headers += [
            (b"x-canary-backend", backend.encode()),
            (b"x-canary-route", self.route),
            (b"x-canary-request-id", self.request_id),
        ]
        if origin is not None:
            headers.append((b"x-canary-fallback", origin.encode()))

    async def error(
        self, error: RouterError, backend: str | None = None, origin: str | None = None
    ) -> int:
        """Answer with a router-made error; routed calls carry canary's headers too."""
        headers = [(b"content-type", b"application/json"), *error.headers()]
        if backend is not None:
            self.stamp(headers, backend, origin)
        else:
            headers.append((b"x-canary-request-id", self.request_id))
        start: Message = {"type": "http.response.start", "status": error.status, "headers": headers}
        self.started = True
        await self.send(start)
        await self.send({"type": "http.response.body", "body": error.body(), "more_body": False})
        self.done = True
        return error.status

    async def follow(self, receive: Receive, task: asyncio.Task[Any]) -> None:
        """Cancel ``task`` (the call) as soon as the client goes away, unless the answer
        is complete by then (the request body has been read already)."""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
        if not self.done:
            self.disconnected = True
            task.cancel()

    async def end(self, event: bytes = b"") -> None:
        """End a started body, after ``event`` (a dialect's error event) when given."""
        self.done = True
        if event:
            await self.send({"type": "http.response.body", "body": event, "more_body": True})
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})


def upstream_failure(backend: Backend, exc: httpx.TransportError) -> RouterError:
    """A transport failure as OpenAI's error shape: 504 on a timeout, else 502."""
    if isinstance(exc, httpx.TimeoutException):
        return RouterError(
            f"Upstream {backend.name!r} did not answer within {backend.timeout_s:g} s.",
            code=TIMEOUT,
            status=504,
        )
    return RouterError(
        f"Upstream {backend.name!r} failed: {type(exc).__name__}.", code=CONNECT, status=502
    )


def outcome_of(exc: httpx.TransportError) -> str:
    return TIMEOUT if isinstance(exc, httpx.TimeoutException) else CONNECT


INTERNAL = RouterError(
    "canary failed to handle the request; the request id is in x-canary-request-id.",
    code="internal_error",
    status=500,
)
