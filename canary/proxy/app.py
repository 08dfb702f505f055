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

import asyncio
import functools
import random
from collections.abc import Awaitable, Callable

import httpx
import structlog
from starlette.types import Receive, Scope, Send

from canary.config.model import Backend
from canary.config.store import ConfigStore
from canary.observe.meter import Meter
from canary.proxy.answers import INTERNAL
from canary.proxy.exchange import Exchange
from canary.proxy.headers import upstream_headers
from canary.proxy.retry import RetryBudget
from canary.safety.breaker import Breakers
from canary.safety.limits import Limiter
from canary.safety.windows import Stats
from canary.types import Clock

log = structlog.get_logger("canary.proxy")

_URL_CACHE_SIZE = 4096


@functools.cache
def _timeouts(t: float) -> dict[str, float]:
    """httpx's timeout extension for a backend's ``timeout_s``; shared, never mutated."""
    return {"connect": min(10.0, t), "read": t, "write": t, "pool": t}


class Proxy:
    """The ``/v1/*`` ASGI app: the components every exchange uses, injected by create_app."""

    def __init__(
        self,
        store: ConfigStore,
        stats: Stats,
        breakers: Breakers,
        limiter: Limiter,
        transport: httpx.AsyncBaseTransport,
        meter: Meter,
        *,
        clock: Clock,
        rng: random.Random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        access_log: bool = True,
    ) -> None:
        self.store = store
        self.stats = stats
        self.breakers = breakers
        self.limiter = limiter
        self.transport = transport
        self.meter = meter
        self.clock = clock
        self.rng = rng
        self.sleep = sleep
        self.budget = RetryBudget(clock)
        self.access_log = access_log
        self._urls: dict[str, httpx.URL] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = Exchange(self, scope, receive, send)
        try:
            await exchange.run()
        except Exception:
            await self._fault(exchange)
        finally:
            if self.access_log:
                self._access(exchange)

    async def _fault(self, exchange: Exchange) -> None:
        """A fault of the router itself: still an answer in OpenAI's shape, never text."""
        client = exchange.client
        log.exception("proxy.internal_error", request_id=client.request_id.decode())
        self.meter.internal_error()
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
        scope = exchange.scope
        log.info(
            "proxy.request",
            request_id=exchange.client.request_id.decode(),
            method=scope["method"],
            path=scope["path"],
            ms=round((self.clock() - exchange.started) * 1000, 2),
            **exchange.access_fields(),
        )

    def upstream_request(
        self, scope: Scope, backend: Backend, content: bytes, rid: bytes, rewritten: bool
    ) -> httpx.Request:
        """The client's request as ``backend`` gets it (``canary.proxy.headers``)."""
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        target = backend.base_url + raw_path[3:].decode("latin-1")
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        url = self._urls.get(target)
        if url is None:  # parsing a URL is httpx's dearest step; upstream URLs are few
            if len(self._urls) >= _URL_CACHE_SIZE:
                self._urls.clear()
            url = self._urls[target] = httpx.URL(target)
        # stream= rather than content=: the body is final, so httpx need not encode it or
        # re-build the headers; the transport sets Host and Content-Length from them.
        return httpx.Request(
            scope["method"],
            url,
            headers=upstream_headers(scope["headers"], backend, rid, rewritten),
            stream=httpx.ByteStream(content),
            extensions={"timeout": _timeouts(backend.timeout_s)},
        )
