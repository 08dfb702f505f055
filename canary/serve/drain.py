"""Graceful drain on SIGTERM: say "not ready", keep accepting a moment, finish what runs.

    SIGTERM -> /readyz answers 503 "draining" at once, so load balancers stop sending
            -> for the grace (--drain-grace-s) the socket still accepts: calls already on
               their way are served, not refused
            -> the socket closes (new connections are refused); calls and streams in
               flight run to their end
            -> at the drain timeout (server.drain_timeout_s or --drain-timeout-s, counted
               from SIGTERM, grace included) what still runs is cut cleanly: a call not
               answered yet gets a 503 in OpenAI's shape, an SSE stream an error event,
               an open WebSocket session close code 1001 (both ways)
            -> the lifespan shuts down and the process exits 0

``Traffic`` sits in front of the app and knows every call in flight; ``DrainingServer``
is uvicorn's server with this shutdown instead of its own, which stops accepting at the
signal and cancels what outlives ``timeout_graceful_shutdown`` without answering it.
Ctrl-C twice skips the rest of the drain: what is in flight is cut at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

import structlog
import uvicorn
from starlette.types import Receive, Scope, Send

from canary.errors import RouterError
from canary.types import ANSWER, Answer

log = structlog.get_logger("canary.serve.server")

App = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_GRACE_S = 5.0
DEFAULT_TIMEOUT_S = 30.0
CUT_WAIT_S = 2.0  # time the cut calls get to write their last bytes
_CUT = "drain timeout"


class _Call:
    """One call in flight, registered once: enough to end it properly if it has to be cut.

    No wrapper sits on its ``send``: how far its answer went is read, only when it is cut,
    from the ``Answer`` the app left in its scope (the proxy's ``Client``)."""

    __slots__ = ("_scope", "_send")

    def __init__(self, scope: Scope, send: Send) -> None:
        self._scope = scope
        self._send = send

    async def end(self) -> None:
        """Close a cut call so a client can tell: never as if it had completed."""
        error = RouterError(
            "canary is shutting down and this call outlasted its drain timeout; retry it.",
            code="shutting_down",
            status=503,
        )
        answer: Answer | None = self._scope.get(ANSWER)
        if self._scope["type"] == "websocket":
            await self._end_session(answer, error)
            return
        # An app that left no Answer (the control plane's short JSON) is taken as not
        # started; if it had, the server refuses the second start and the body stays cut.
        with contextlib.suppress(RuntimeError):  # the server's word: it had completed
            if answer is None or not answer.started:
                headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
                start = {"type": "http.response.start", "status": 503, "headers": headers}
                await self._send(start)
                await self._send({"type": "http.response.body", "body": error.body()})
            elif answer.sse:  # the openai client raises on an error event, as on the proxy's
                chunk = b"data: " + error.body() + b"\n\n"
                await self._send({"type": "http.response.body", "body": chunk, "more_body": True})
                await self._send({"type": "http.response.body", "body": b""})
        # Any other body under way stays incomplete: uvicorn closes the connection, so the
        # client sees a broken response rather than a short "complete" one.

    async def _end_session(self, answer: Answer | None, error: RouterError) -> None:
        """A WebSocket session: closed with 1001 (the session closed its upstream itself,
        ``canary.proxy.frames``), or denied with the 503 before its handshake was answered."""
        with contextlib.suppress(RuntimeError, OSError):  # closed already, or gone
            if answer is None or not answer.started:
                headers = [(b"content-type", b"application/json")]
                start = {"type": "websocket.http.response.start", "status": 503}
                await self._send({**start, "headers": headers})
                await self._send({"type": "websocket.http.response.body", "body": error.body()})
            else:
                await self._send({"type": "websocket.close", "code": 1001, "reason": _CUT})


class Traffic:
    """Every HTTP call in flight, counted; ``draining`` turns ``/readyz`` to 503."""

    def __init__(self) -> None:
        self.draining = False
        self.finished = 0  # calls that ended (cut ones included), since start
        self.cut = 0  # calls ended by a drain timeout
        self._calls: dict[asyncio.Task[Any], _Call] = {}
        self._cutting: set[asyncio.Task[Any]] = set()

    @property
    def in_flight(self) -> int:
        return len(self._calls)

    async def run(self, app: App, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        call = self._calls[task] = _Call(scope, send)
        try:
            await app(scope, receive, send)
        except asyncio.CancelledError:
            if task not in self._cutting:
                raise
            task.uncancel()
            self.cut += 1
            await call.end()
        finally:
            del self._calls[task]
            self._cutting.discard(task)
            self.finished += 1

    def cut_all(self) -> int:
        """Cancel every call in flight; each ends itself cleanly (``_Call.end``)."""
        for task in self._calls:
            self._cutting.add(task)
            task.cancel(_CUT)
        return len(self._calls)


def _is_session(connection: object) -> bool:
    """A WebSocket connection (uvicorn would close it with 1012 at once, not at the timeout):
    one of uvicorn's WebSocket protocols, or canary's (``canary.serve.websocket``)."""
    return any("websockets" in kind.__module__ for kind in type(connection).__mro__)


def default_grace_s(host: str) -> float:
    """No grace on a loopback address: no load balancer can be sending to it."""
    return 0.0 if host in ("127.0.0.1", "localhost", "::1") else DEFAULT_GRACE_S


class DrainingServer(uvicorn.Server):
    """uvicorn's server with the drain above; ``timeout_s`` is read when the drain begins.

    ``supervised`` (a worker under ``--workers N``) ignores SIGINT: a Ctrl-C reaches the
    whole process group, and the parent turns it into one SIGTERM per worker.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        traffic: Traffic,
        *,
        grace_s: float,
        timeout_s: Callable[[], float],
        supervised: bool = False,
    ) -> None:
        super().__init__(config)
        self.traffic = traffic
        self.grace_s = grace_s
        self._timeout_s = timeout_s
        self._supervised = supervised
        self._since: float | None = None
        self._timeout = 0.0
        self._grace_end = self._deadline = math.inf
        self._announced = False
        self._at_start = (0, 0, 0)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: only flags here (logging could re-enter a write in progress).
        if self._since is None:
            if not (self._supervised and sig == signal.SIGINT):
                self._begin(self.grace_s)
        elif sig == signal.SIGINT and not self._supervised:
            self._grace_end = self._deadline = time.monotonic()

    def _begin(self, grace_s: float) -> None:
        self._since = now = time.monotonic()
        self.traffic.draining = True
        self._timeout = max(0.0, self._timeout_s())
        self._deadline = now + self._timeout
        self._grace_end = now + min(grace_s, self._timeout)
        t = self.traffic
        self._at_start = (t.in_flight, t.finished, t.cut)

    def _announce(self) -> None:
        if not self._announced:
            self._announced = True
            log.info(
                "server.draining",
                in_flight=self._at_start[0],
                grace_s=round(max(0.0, self._grace_end - (self._since or 0.0)), 3),
                timeout_s=self._timeout,
            )

    async def on_tick(self, counter: int) -> bool:
        if self._since is not None:
            self._announce()
            if time.monotonic() >= self._grace_end:
                self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._since is None:  # stopping for another reason than a signal: no grace
            self._begin(0.0)
        self._announce()
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            if not _is_session(connection):  # open sessions run on until the drain timeout
                connection.shutdown()  # idle ones close now, busy ones after their response
        try:
            async with asyncio.timeout(max(0.0, self._deadline - time.monotonic())):
                await self._settled(drain=True)
        except TimeoutError:
            self.traffic.cut_all()
            try:
                async with asyncio.timeout(CUT_WAIT_S):
                    await self._settled()
            except TimeoutError:  # not one of ours, or stuck writing to a dead client
                for task in self.server_state.tasks:
                    task.cancel()
        in_flight, finished, cut = self._at_start
        t = self.traffic
        cut = t.cut - cut
        (log.warning if cut else log.info)(
            "server.drained",
            in_flight=in_flight,
            finished=t.finished - finished - cut,
            cut=cut,
            elapsed_s=round(time.monotonic() - (self._since or 0.0), 3),
        )
        if not self.force_exit:
            await self.lifespan.shutdown()

    async def _settled(self, *, drain: bool = False) -> None:
        # uvicorn has no event for "the last connection closed"; it polls the same sets.
        # While draining, a second Ctrl-C moves the deadline to now: the wait ends at once.
        while self.server_state.connections or self.server_state.tasks:
            if drain and time.monotonic() >= self._deadline:
                raise TimeoutError
            await asyncio.sleep(0.05)
        for server in self.servers:
            await server.wait_closed()
