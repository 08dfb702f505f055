"""The send chain of one call to one backend: the retry loop and its bounded waits.

    _send          call the backend, retrying what cannot have been billed
    ├── _headers   the request out, its answer's headers back, within the headers' bound
    │   └── _within  any step bounded by the call's watch (no timer of its own)
    ├── _may_retry   attempts and the retry budget left, the circuit still closed
    └── _retry_start a retry is a new request start: a QPS slot after the backoff

A mixin of ``Exchange`` (``canary.proxy.exchange``), which holds the state it reads; kept
apart so that each module reads in one sitting.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx
import structlog
from starlette.types import Scope

from canary.config.model import Backend, Config
from canary.observe.tracing import Trace
from canary.proxy.answers import Client, outcome_of
from canary.proxy.body import Body
from canary.proxy.credit import CREDIT_STATUSES, credit_spent, screen
from canary.proxy.plane import Plane, connect_s
from canary.proxy.relay import Try
from canary.proxy.retry import (
    RETRY_STATUSES,
    backoff,
    delay_s,
    give_up,
    kept,
    retryable_error,
)
from canary.proxy.transport import Answer, Outgoing, headers_wait
from canary.proxy.upload import Upload, stalled
from canary.proxy.verdict import OUTCOME_KIND, fault_kind
from canary.proxy.watchdog import Watch
from canary.safety.breaker import CLOSED
from canary.safety.limits import RateLimited

log = structlog.get_logger("canary.proxy")

_T = TypeVar("_T")


class SendChain:
    """The send chain's steps, over the exchange's state (see the module docstring)."""

    __slots__ = ()

    # Held by the exchange: its plane, config, body, client, watch, scope and trace, and
    # the two of its steps the chain calls back.
    p: Plane
    cfg: Config | None
    body: Body | Upload | None
    client: Client
    watch: Watch | None
    scope: Scope
    trace: Trace
    _count: Callable[[str, float, str | None], None]
    _follow_client: Callable[[], None]

    async def _send(self, t: Try) -> Answer:
        """Call the backend, retrying what cannot have been billed (``canary.proxy.retry``).

        Each failed try is counted before the next; ``t.began`` is the start of the try
        still open, None while waiting between tries."""
        assert self.cfg is not None and self.body is not None
        rules, backend, p = self.cfg.retry, t.backend, self.p
        window = p.stats.window(backend.name)
        attempt = 1
        while True:
            p.budget.note_call(backend.name)
            t.began = p.clock()
            window.start()
            response: Answer | None = None
            failure: httpx.TransportError | None = None
            kind: str | None
            try:
                response = await self._headers(backend)
            except httpx.TransportError as exc:
                if self.body.streamed or not retryable_error(exc, unsafe=rules.unsafe):
                    raise  # an upload is not replayed
                wait, failure = backoff(attempt, rules.backoff_s, p.rng), exc
                after, kind = type(exc).__name__, OUTCOME_KIND[outcome_of(exc)]
            else:
                status = response.status
                asked = None
                if status in RETRY_STATUSES and credit_spent(response) is None:
                    asked = delay_s(attempt, rules.backoff_s, response.headers, p.rng)
                if asked is None:
                    return response
                wait, failure, after, kind = asked, None, str(status), fault_kind(status)
            # A retryable failure: count it now, so a circuit it trips stops the retries.
            self._count(backend.name, t.began, kind)
            t.began = None
            if not self._may_retry(attempt, backend):
                return give_up(response, failure)  # counted already: t.began is None
            if response is not None:
                # Read whole, so its connection is free while we wait; bounded as any read.
                response = await self._within(backend.timeout_s, backend, kept(response))
            log.info(
                "proxy.retry",
                request_id=self.client.request_id.decode(),
                backend=backend.name,
                attempt=attempt,
                after=after,
                wait_s=round(wait, 3),
            )
            await p.sleep(wait)
            if not await self._retry_start(backend):
                return give_up(response, failure)
            p.meter.retry(backend.name)
            attempt += 1

    def _may_retry(self, attempt: int, backend: Backend) -> bool:
        """Another try: attempts and budget left, and the backend's circuit still closed."""
        assert self.cfg is not None and self.body is not None
        rules, p = self.cfg.retry, self.p
        circuit = p.breakers.circuits.get(backend.name)
        return (
            not self.body.streamed  # an upload is not replayed
            and attempt < rules.max_attempts
            and (circuit is None or circuit.state == CLOSED)  # a tripped backend gets no more
            and p.budget.try_spend(backend.name, rules.budget)
        )

    async def _retry_start(self, backend: Backend) -> bool:
        """A retry is a new request start: after the backoff, it needs a QPS slot like any
        other (taken before the wait, the start would leave the log before the call)."""
        if backend.max_qps is None:
            return True
        assert self.cfg is not None
        try:
            await self.p.limiter.acquire(
                backend.name,
                max_concurrency=None,  # the call's concurrency lease is still held
                max_qps=backend.max_qps,
                wait_s=self.cfg.server.queue_timeout_s,
            )
        except RateLimited:
            return False
        return True

    async def _headers(self, backend: Backend) -> Answer:
        """The request sent and its answer's headers, within the backend's bound
        (``transport.headers_wait``)."""
        wait = headers_wait(connect_s(backend.timeout_s), backend.timeout_s)
        answer = await self._within(wait, backend, self.p.upstream.send(self._request(backend)))
        if self.body is not None and self.body.streamed:
            assert self.watch is not None
            self.watch.on_long = self._follow_client  # the upload is over: it may listen now
        if answer.status in CREDIT_STATUSES:  # spent credit? its small body says
            answer = await self._within(backend.timeout_s, backend, screen(answer))
        return answer

    async def _within(self, wait: float, backend: Backend, step: Awaitable[_T]) -> _T:
        """``step`` bounded by the call's watch (no timer of its own): ``ReadTimeout`` when
        it takes more than ``wait`` seconds (up to one watchdog tick more)."""
        watch = self.watch
        assert watch is not None
        watch.deadline = watch.task.get_loop().time() + wait
        try:
            return await step
        except asyncio.CancelledError:
            if watch.cancelled_here():
                body = self.body
                if body is not None and body.waiting:  # an upload's client fell silent
                    body.refusal = stalled(body.timeout_s)
                    raise httpx.ReadError("the client's upload stalled") from None
                raise httpx.ReadTimeout(f"no answer within {backend.timeout_s:g} s") from None
            raise
        finally:
            watch.deadline = math.inf

    def _request(self, backend: Backend) -> Outgoing:
        body = self.body
        assert body is not None
        content, rewritten = body.for_backend(backend)
        out = self.p.upstream_request(
            self.scope, backend, content, self.client.request_id, rewritten
        )
        if body.streamed and body.declared is not None:  # as declared: not sent chunked
            out.headers.append((b"content-length", body.declared))
        self.trace.outgoing(out.headers)  # the try's own traceparent, when tracing is on
        return out
