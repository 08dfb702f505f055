"""One request, top to bottom: one object going down a chain of short steps.

    Exchange.run
    ├── _choose     config, client key, path, body, route, backend by weight or sticky key;
    │               a canary whose circuit is not closed gives its call to the baseline
    └── _forward    the chosen backend; when it fails before any byte reached the client,
        │           the baseline once (``fallback: true``)
        └── _call   one backend: admit (limiter) -> send with retries -> relay -> account
            ├── _send       the retry loop (``canary.proxy.retry``), each failed try counted
            ├── relay       ``canary.proxy.relay``: chunk by chunk to the client
            └── _account    the one place where windows, circuits and the meter move

What an answer means for the backend (SPEC §4):

    status        counts against it          falls back (fallback: true)   retried there
    2xx, 3xx      no                         no                            no
    429, 5xx      yes (429 / 5xx)            yes                           429/502/503/504
    401/402/403   yes (key refused, credit   yes                           no
                  spent, account barred)
    credit spent  yes (``credit_spent``: a   yes                           no
                  code in the error body,
                  ``canary.proxy.credit``)
    other 4xx     only when the baseline     yes, once; the client gets    no
                  then answers 2xx           the baseline's answer
                  (``rejected``)

Transport failures count as ``timeout``/``connect``, a stream without its end mark as
``stream_cut``. A client that left, a slow client and a request the router could not
write give no verdict on the backend.

The body (SPEC §3a): JSON is read whole before the route is chosen (``canary.proxy.body``);
any other body is an ``Upload`` streamed to the backend as it arrives
(``canary.proxy.upload``), which cannot be replayed: no retry, and a fallback only while
none of it has left. Every wait for the client's bytes is bounded by
``server.client_timeout_s`` on the call's watch, which exists from the first step.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable
from typing import TypeVar

import httpx
import structlog
from starlette.types import Receive, Scope, Send

from canary.config.model import Backend, Config, Route
from canary.errors import RouterError
from canary.observe.tracing import NO_TRACE, Trace
from canary.proxy.answers import Client, outcome_of, upstream_failure
from canary.proxy.audit import audit_answer
from canary.proxy.body import Body
from canary.proxy.credit import CREDIT_STATUSES, credit_spent, screen, spent_kind
from canary.proxy.dialects import dialect_of
from canary.proxy.headers import check_client_key, check_path, header, request_id
from canary.proxy.intake import take_body
from canary.proxy.plane import Plane, connect_s
from canary.proxy.relay import EarlyFailure, Try, log_failure, relay
from canary.proxy.retry import (
    RETRY_STATUSES,
    backoff,
    delay_s,
    give_up,
    kept,
    retryable_error,
)
from canary.proxy.router import match_route, sticky_key
from canary.proxy.transport import Answer, Outgoing, headers_wait
from canary.proxy.upload import Upload, stalled
from canary.proxy.watchdog import Watch
from canary.safety.breaker import CLOSED
from canary.safety.limits import Lease, RateLimited

log = structlog.get_logger("canary.proxy")

_T = TypeVar("_T")
_WAIT_S = 0.001  # a limiter acquire slower than this queued for a slot (not just a Redis hop)
_FAULTS = {401: "401", 402: "402", 403: "403", 429: "429"}  # statuses that are the backend's
_OUTCOME_KIND = {
    "upstream_timeout": "timeout",
    "upstream_error": "connect",
    "stream_cut": "stream_cut",
}
# Outcomes that give no verdict on the backend: its circuit neither passes nor fails them.
NO_VERDICT = frozenset(
    {
        "client_disconnected",
        "cancelled",
        "slow_client",
        "client_timeout",
        "bad_request",
        "internal_error",
    }
)
_REFUSED_OUTCOME = {408: "client_timeout", 499: "client_disconnected"}  # else bad_request


def fault_kind(status: int) -> str | None:
    """The failure kind of an upstream answer that is the backend's fault, else None."""
    return "5xx" if status >= 500 else _FAULTS.get(status)


class Exchange:
    """One client request and everything the router does for it."""

    __slots__ = (
        "body",
        "cfg",
        "client",
        "dialect",
        "first",
        "follower",
        "hdrs",
        "last",
        "p",
        "receive",
        "refusal",
        "route",
        "scope",
        "started",
        "trace",
        "watch",
    )

    def __init__(self, plane: Plane, scope: Scope, receive: Receive, send: Send) -> None:
        self.p = plane
        self.scope = scope
        self.receive = receive
        self.started = plane.clock()
        self.hdrs: dict[bytes, bytes] = dict(scope["headers"])
        self.client = Client(send, request_id(self.hdrs.get(b"x-request-id")))
        self.cfg: Config | None = plane.store.config  # a reload mid-request does not touch it
        self.dialect = dialect_of(scope["path"])
        self.route: Route | None = None
        self.body: Body | Upload | None = None
        self.first: Try | None = None  # the try that failed before a fallback
        self.last: Try | None = None  # the try whose answer the client got
        self.refusal: RouterError | None = None
        self.watch: Watch | None = None  # the call's deadlines (canary.proxy.watchdog)
        self.follower: asyncio.Task[None] | None = None  # listens for a disconnect
        self.trace: Trace = NO_TRACE  # its spans, when tracing is on (canary.observe.tracing)

    async def run(self) -> None:
        dog = self.p.watchdog
        watch = self.watch = dog.watch()
        try:
            try:
                backend = await self._choose()
            except RouterError as exc:
                self.refusal = exc
                await self.client.error(exc)
                self.p.meter.call("", "", exc.status, self.p.clock() - self.started)
                return
            await self._forward(backend)
        finally:
            dog.release(watch)

    async def _choose(self) -> Backend:
        cfg, hdrs = self.cfg, self.hdrs
        if cfg is None:
            raise RouterError(
                "No valid configuration is loaded; GET /status shows why.",
                code="no_config",
                status=503,
            )
        if cfg.auth.api_key_digests:
            check_client_key(cfg, hdrs)
        path: str = self.scope["path"]
        check_path(path, self.scope.get("raw_path"))
        assert self.watch is not None
        body = self.body = await take_body(self.receive, hdrs, cfg.server, self.watch)
        if not body.streamed:  # the body is in: listen for a disconnect if the call runs long
            self.watch.on_long = self._follow_client
        route = match_route(cfg.routes, path, lambda name: header(hdrs, name), body.model)
        if route is None:
            raise RouterError(f"No route matches {path}.", code="no_route", status=404)
        self.route = route
        self.client.route = route.name.encode()
        if any(cfg.backends[n].model_map for n in route.weights):
            body.json()  # refused the same way whichever backend the draw picks
        return cfg.backends[self.p.choose(route, sticky_key(route, hdrs, body))]

    async def _forward(self, backend: Backend) -> None:
        """The chosen backend; on an early failure, the baseline once."""
        assert self.cfg is not None and self.route is not None and self.body is not None
        route = self.route
        baseline = self.cfg.backends[route.baseline] if route.fallback else None
        watch = self.watch
        assert watch is not None
        copy = None
        if route.shadow is not None and not self.body.streamed:
            copy = self.p.shadows.start(self, backend)
        trace = self.trace = self.p.tracing.begin(self)
        try:
            t = await self._call(backend, None, baseline not in (None, backend))
            if t.fall_back and baseline is not None:
                self.p.meter.fallback(route.name, backend.name)
                self.first = t
                try:
                    await self._call(baseline, backend.name, False)
                finally:
                    if t.deferred:
                        self._settle(t, self.last or t)
        except asyncio.CancelledError:
            if not self.client.disconnected:
                raise
            watch.task.uncancel()  # the client left: not a backend failure, nothing to answer
        finally:
            trace.ended(self)
            if self.follower is not None:
                self.follower.cancel()
            if copy is not None:
                copy.primary_ended(self.last)

    def _follow_client(self) -> None:
        """The call runs long: listen for the client leaving (the body is read already).

        Started by the watchdog after at least one tick, so a short call costs no task."""
        assert self.watch is not None
        task = self.watch.task
        self.follower = task.get_loop().create_task(self.client.follow(self.receive, task))

    def _settle(self, canary: Try, baseline: Try) -> None:
        """A canary's 4xx is its error only when the baseline did what it would not."""
        served = baseline is not canary and 200 <= baseline.status < 300
        canary.kind = "rejected" if served and baseline.outcome == "ok" else None
        canary.deferred = False
        self._account(canary)

    async def _call(self, backend: Backend, origin: str | None, can_fall_back: bool) -> Try:
        """One call to one backend, its retries included; accounted when it ends."""
        assert self.body is not None and self.cfg is not None
        billed = self.dialect.billed and self.scope["method"] == "POST"
        t = self.last = Try(backend, origin, billed)
        self.trace.try_began(t)
        t.since = self.p.clock()
        lease = await self._admit(t)
        if lease is None:
            self._account(t)
            return t
        t.sent_at = asyncio.get_running_loop().time()
        response: Answer | None = None
        try:
            response = await self._send(t)
            t.status = response.status
            t.kind = spent_kind(response, self.p.meter, backend.name) or fault_kind(t.status)
            can_fall_back = can_fall_back and not self.body.sent  # an upload is not replayed
            if can_fall_back and (t.kind is not None or 400 <= t.status < 500):
                t.fall_back = True
                t.deferred = t.kind is None  # judged once the baseline has answered
                t.outcome = f"upstream_{t.status}"
                return t
            assert self.watch is not None
            hold = self.cfg.server.hold_answer_bytes
            await relay(self.client, response, t, self.dialect, self.watch, hold)
        except (EarlyFailure, httpx.TransportError) as exc:
            await self._failed(t, exc, can_fall_back)
        except asyncio.CancelledError:
            t.outcome = "client_disconnected" if self.client.disconnected else "cancelled"
            raise
        except Exception:
            t.outcome = "internal_error"  # answered at the edge (canary.proxy.app)
            raise
        finally:
            if response is not None:
                await response.aclose()
            await lease.release()
            if not t.deferred:
                self._account(t)
        return t

    async def _admit(self, t: Try) -> Lease | None:
        """A slot under the backend's limits, or a 429 answer (not the backend's fault)."""
        backend, p = t.backend, self.p
        assert self.cfg is not None
        try:
            lease = await p.limiter.acquire(
                backend.name,
                max_concurrency=backend.max_concurrency,
                max_qps=backend.max_qps,
                wait_s=self.cfg.server.queue_timeout_s,
            )
        except RateLimited as limited:
            t.status = await self.client.error(limited, backend.name, t.origin)
            t.outcome = "rate_limited"
            p.meter.rejected(backend.name)
            return None
        waited = p.clock() - t.since
        if waited > _WAIT_S:
            p.meter.waited(backend.name, waited)
        return lease

    async def _failed(self, t: Try, exc: Exception, can_fall_back: bool) -> None:
        """The call failed in transport: fall back, or answer 502/504 (400 if ours)."""
        assert self.body is not None
        refused = self.body.refusal
        if refused is not None:  # the client's upload was refused mid-way: not the backend's
            t.outcome = _REFUSED_OUTCOME.get(refused.status, "bad_request")
            t.status = refused.status
            if refused.status != 499:
                t.status = await self.client.error(refused, t.backend.name, t.origin)
            return
        can_fall_back = can_fall_back and not self.body.sent  # an upload is not replayed
        if isinstance(exc, httpx.LocalProtocolError):
            # The request cannot be written (a header that is not UTF-8): the client's
            # fault, not the backend's. Nothing reached the upstream.
            t.outcome = "bad_request"
            refusal = RouterError(
                "A request header could not be forwarded (not UTF-8).",
                code="invalid_header",
                status=400,
            )
            t.status = await self.client.error(refusal, t.backend.name, t.origin)
            return
        cause = exc.cause if isinstance(exc, EarlyFailure) else exc
        assert isinstance(cause, httpx.TransportError)
        t.outcome = exc.outcome if isinstance(exc, EarlyFailure) else outcome_of(cause)
        t.status = 0  # the headers may have said 200, but no answer came: not a success
        log_failure(self.client.request_id, t.backend, cause)
        if can_fall_back:
            t.fall_back = True
            return
        failure = upstream_failure(t.backend, cause)
        t.status = await self.client.error(failure, t.backend.name, t.origin)

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
                after, kind = type(exc).__name__, _OUTCOME_KIND[outcome_of(exc)]
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

    def _count(self, name: str, began: float, kind: str | None, verdict: bool = True) -> None:
        """A try ended: counted by the plane (``Plane.count``, shared with sessions)."""
        self.p.count(name, self.p.clock() - began, kind, verdict)

    def _account(self, t: Try) -> None:
        """A call ended: its open try counted, its tokens and its status metered."""
        assert self.route is not None and self.cfg is not None and self.body is not None
        p, name = self.p, t.backend.name
        if t.began is not None:  # the last try is still open (not one counted as it failed)
            kind = t.kind or _OUTCOME_KIND.get(t.outcome)
            self._count(name, t.began, kind, verdict=t.outcome not in NO_VERDICT)
            t.began = None
        if t.first_byte is not None and t.outcome == "ok":  # a stream: time to first byte
            p.stats.first_byte(name, t.first_byte - t.sent_at)
        model = self.body.accounted_model() if t.head or t.tokens else None
        if t.head is not None and t.outcome == "ok":  # the model audit (SPEC §9)
            audit_answer(p.meter, t.backend, model, t.head, "live")
        if t.tokens is not None:
            price = self.cfg.pricing.get(name, {}).get(model or "")
            p.meter.usage(
                self.route.name,
                name,
                model,
                t.tokens,
                None if price is None else (price.input, price.output),
            )
        elif t.metered and t.outcome == "ok" and 200 <= t.status < 300:
            p.meter.no_usage(name)
        if not t.status and t.outcome in NO_VERDICT:
            t.status = 499  # nginx's "client closed request": no answer was given
        p.meter.call(self.route.name, name, t.status, p.clock() - t.since)
        self.trace.try_ended(t)
