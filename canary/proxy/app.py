"""The data plane's ASGI entry: every ``/v1/*`` call becomes one ``Exchange``.

This is the edge. Whatever happens below, the client gets an answer in OpenAI's shape:
a ``RouterError`` is its own answer (``canary.proxy.exchange``); any other exception is
a fault of the router, answered here as a 500 ``internal_error`` with the request id,
logged once with its traceback, counted (``canary_internal_errors_total``), and written
to the access line with the status the client really got. One access line per request.

Why raw ASGI and a bare transport call: this runs on every LLM call of every user, so
it allocates no Starlette request/response objects and skips ``httpx.AsyncClient``
(whose cookie jar would also carry one user's cookies into another's request).
"""

from __future__ import annotations

from typing import Any

import structlog
from starlette.types import Receive, Scope, Send

from canary.observe.logs import line_writer
from canary.observe.tracing import NO_TRACE
from canary.proxy.answers import INTERNAL
from canary.proxy.exchange import Exchange
from canary.proxy.plane import Plane
from canary.proxy.session import Sessions
from canary.types import ANSWER

log = structlog.get_logger("canary.proxy")
OUTSIDE = ("request_id", "method", "path")


class Proxy:
    """The ``/v1/*`` ASGI app over the data plane's parts (``canary.proxy.plane``)."""

    def __init__(self, plane: Plane) -> None:
        self.plane = plane
        # Of the access line's values only these come from the client (method included,
        # however httptools checks it); the rest are numbers, config names and outcomes.
        self._line = line_writer("proxy.request", "canary.proxy", OUTSIDE)
        self.sessions = Sessions(plane)  # WebSocket sessions (canary.proxy.session)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self.sessions(scope, receive, send)
            return
        exchange = Exchange(self.plane, scope, receive, send)
        scope[ANSWER] = exchange.client  # for the drain, should it have to cut this call
        try:
            await exchange.run()
        except Exception:
            await self._fault(exchange)
        finally:
            if exchange.refusal is not None and exchange.trace is NO_TRACE:
                # Answered before a backend was chosen: no trace began (a no-op when off).
                self.plane.tracing.refused(exchange, exchange.refusal.status, exchange.refusal.code)
            if self.plane.access_log:
                self._access(exchange)

    async def _fault(self, exchange: Exchange) -> None:
        """A fault of the router itself: still an answer in OpenAI's shape, never text."""
        client = exchange.client
        log.exception("proxy.internal_error", request_id=client.request_id.decode())
        self.plane.meter.internal_error()
        if not client.started:
            exchange.refusal = INTERNAL
            if exchange.last is not None:
                exchange.last.status, exchange.last.outcome = 500, "internal_error"
            await client.error(INTERNAL)
        elif not client.done:
            # The answer has begun: it can only be cut, so the client sees it incomplete.
            client.done = True

    def _access(self, exchange: Exchange) -> None:
        """The one access-log line per request."""
        ms = round((self.plane.clock() - exchange.started) * 1000, 2)
        self._line(_access_fields(exchange, ms))


def _access_fields(exchange: Exchange, ms: float) -> dict[str, Any]:
    """The access line's fields: a refusal has no route or backend."""
    t = exchange.last
    scope = exchange.scope
    fields: dict[str, Any] = {
        "request_id": exchange.client.request_id.decode(),
        "method": scope["method"],
        "path": scope["path"],
        "ms": ms,
        "route": exchange.route.name if exchange.route is not None else None,
        "backend": t.backend.name if t is not None else None,
        "status": t.status if t is not None else 0,
        "outcome": t.outcome if t is not None else "ok",
    }
    if t is None and exchange.refusal is not None:
        fields["status"], fields["outcome"] = exchange.refusal.status, exchange.refusal.code
    if t is not None and t.tokens is not None:
        fields["tokens_in"], fields["tokens_out"] = t.tokens
    if exchange.first is not None:
        fields["fallback"], fields["fallback_outcome"] = (
            exchange.first.backend.name,
            (exchange.first.outcome if exchange.first.kind != "rejected" else "rejected"),
        )
    return fields
