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

What an answer means for the backend: ``canary.proxy.verdict``. The send chain (the
retry loop and the bounded waits) is ``canary.proxy.send``.

The body (SPEC §3a): JSON is read whole before the route is chosen (``canary.proxy.body``);
any other body is an ``Upload`` streamed to the backend as it arrives
(``canary.proxy.upload``), which cannot be replayed: no retry, and a fallback only while
none of it has left. Every wait for the client's bytes is bounded by
``server.client_timeout_s`` on the call's watch, which exists from the first step.
"""

from __future__ import annotations

import asyncio
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
from canary.proxy.credit import spent_kind
from canary.proxy.dialects import dialect_of
from canary.proxy.headers import admit, header, request_id
from canary.proxy.intake import take_body
from canary.proxy.plane import Plane
from canary.proxy.relay import EarlyFailure, Try, log_failure, relay
from canary.proxy.router import match_route, sticky_key
from canary.proxy.send import SendChain
from canary.proxy.transport import Answer
from canary.proxy.upload import Upload
from canary.proxy.verdict import NO_VERDICT, OUTCOME_KIND, REFUSED_OUTCOME, fault_kind
from canary.proxy.watchdog import Watch

log = structlog.get_logger("canary.proxy")

_T = TypeVar("_T")


class Exchange(SendChain):
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
        hdrs = self.hdrs
        cfg = admit(self.cfg, self.scope, hdrs)
        path: str = self.scope["path"]
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
        lease = await self.p.admit(t, self.cfg.server.queue_timeout_s, self.client.error)
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

    async def _failed(self, t: Try, exc: Exception, can_fall_back: bool) -> None:
        """The call failed in transport: fall back, or answer 502/504 (400 if ours)."""
        assert self.body is not None
        refused = self.body.refusal
        if refused is not None:  # the client's upload was refused mid-way: not the backend's
            t.outcome = REFUSED_OUTCOME.get(refused.status, "bad_request")
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

    def _count(self, name: str, began: float, kind: str | None, verdict: bool = True) -> None:
        """A try ended: counted by the plane (``Plane.count``, shared with sessions)."""
        self.p.count(name, self.p.clock() - began, kind, verdict)

    def _account(self, t: Try) -> None:
        """A call ended: its open try counted, its tokens and its status metered."""
        assert self.route is not None and self.cfg is not None and self.body is not None
        p, name = self.p, t.backend.name
        if t.began is not None:  # the last try is still open (not one counted as it failed)
            kind = t.kind or OUTCOME_KIND.get(t.outcome)
            self._count(name, t.began, kind, verdict=t.outcome not in NO_VERDICT)
            t.began = None
        if t.first_byte is not None and t.outcome == "ok":  # a stream: time to first byte
            p.stats.first_byte(name, t.first_byte - t.sent_at)
        model = self.body.accounted_model() if t.head or t.tokens else None
        if model is not None and t.head is not None and t.outcome == "ok":  # SPEC §9
            audit_answer(p.meter, t.backend, model, t.answered_model(), "live")
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
