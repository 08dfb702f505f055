"""WebSocket sessions on ``/v1/*`` (SPEC §3a): the exchange's sibling, one object per session.

    Session.run
    ├── _choose     config, client key (headers or an ``openai-insecure-api-key.*``
    │               subprotocol), path, route by path, headers and ``?model=``, backend by
    │               weight or sticky header, once (``Plane.choose``, as for any call)
    └── _forward    the chosen backend; a refused handshake or a failed connect falls back
        │           to the baseline (``fallback: true``) before the client is answered
        └── _call   one backend: admit (a concurrency slot, held while the session is open)
            ├── _open       the handshake upstream (``canary.proxy.sockets``); the client's
            │               is accepted only then, with the subprotocol upstream chose
            ├── relay       ``canary.proxy.frames``: frames both ways until one side ends,
            │               ``server.session_max_s`` passes or the drain cuts it
            └── _account    ``Plane.count`` (window, circuit, failure kind) and the meter

A session is one call: one window start, one verdict (a refusal, a failed connect, or
``session_cut`` when the upstream ended it abnormally), one slot of ``max_concurrency``.
Its latency in the window is the handshake's (a session's length says nothing about the
backend); ``canary_request_duration_seconds`` gets its whole length. Usage is metered and
the model audited from server events as they pass (``canary.proxy.events``). A refusal
the client must see is the upstream's own status and body, or the router's in OpenAI's
shape, through ASGI's WebSocket denial response (``websocket.http.response``); a server
without it gets close code 1008 (a router refusal) or 1011 (an upstream failure).

The parts: ``proxy/session.py`` (this), ``proxy/frames.py`` (the relay, close codes),
``proxy/events.py`` (server events), ``proxy/sockets.py`` (the upstream handshake on the
pool), ``proxy/app.py`` (the ASGI dispatch), ``observe/meter.py`` (``sessions``: open,
total, cut, frames, bytes), ``observe/status.py`` and ``observe/metrics.py`` (shown),
``serve/drain.py`` (1001 at the drain timeout), ``tools/simulate/sessions.py`` (the
simulator's Realtime and Responses endpoints).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import structlog
from starlette.types import Receive, Scope, Send

from canary.config.model import Backend, Config, Route
from canary.errors import RouterError
from canary.observe.logs import line_writer
from canary.proxy.answers import outcome_of, upstream_failure
from canary.proxy.audit import audit_answer
from canary.proxy.events import Scan
from canary.proxy.frames import Ending, Tally, relay
from canary.proxy.headers import admit, header, request_id
from canary.proxy.plane import Plane, connect_s
from canary.proxy.router import match_route
from canary.proxy.session_wire import FAILED, Answer, client_key_headers, handshake, model_of
from canary.proxy.sockets import Refused, UpstreamSocket
from canary.proxy.verdict import NO_VERDICT, fault_kind
from canary.types import ANSWER, FRAMES

log = structlog.get_logger("canary.proxy")

_KIND = {"upstream_timeout": "timeout", "upstream_error": "connect"}


class Try:
    """One backend's part of a session: how it went, for the accounting."""

    __slots__ = (
        "backend",
        "began",
        "deferred",
        "fall_back",
        "kind",
        "opened",
        "origin",
        "outcome",
        "since",
        "status",
    )

    def __init__(self, backend: Backend, origin: str | None, since: float) -> None:
        self.backend = backend
        self.origin = origin  # the backend that failed first, when this is a fallback
        self.since = since  # before any wait for a limiter slot
        self.began: float | None = None  # the handshake's start, until counted
        self.opened: float | None = None  # the handshake's end, once upstream accepted
        self.status = 0  # 101, or the refusal the client got
        self.outcome = "ok"
        self.kind: str | None = None  # the failure kind when it counts against the backend
        self.fall_back = False
        self.deferred = False  # a 4xx whose verdict waits for the baseline's handshake


class Session:
    """One client WebSocket and everything the router does for it."""

    def __init__(self, plane: Plane, scope: Scope, receive: Receive, send: Send) -> None:
        self.p = plane
        self.scope = scope
        self.receive = receive
        self.started = plane.clock()
        self.hdrs: dict[bytes, bytes] = dict(scope["headers"])
        self.answer = Answer(send, request_id(self.hdrs.get(b"x-request-id")), scope)
        self.cfg: Config | None = plane.store.config  # a reload mid-session does not touch it
        self.model = model_of(scope["query_string"])
        self.route: Route | None = None
        self.first: Try | None = None
        self.last: Try | None = None
        self.refusal: RouterError | None = None
        self.ending: Ending | None = None
        self.tally: Tally | None = None
        self.tokens = [0, 0]

    async def run(self) -> None:
        if (await self.receive())["type"] != "websocket.connect":
            return  # the client left before its handshake was read
        try:
            backend = self._choose()
        except RouterError as exc:
            self.refusal = exc
            await self.answer.deny(exc)
            self.p.meter.call("", "", exc.status, self.p.clock() - self.started)
            return
        await self._forward(backend)

    def _choose(self) -> Backend:
        hdrs = self.hdrs
        keys = client_key_headers(hdrs, self.scope.get("subprotocols", ()))
        cfg = admit(self.cfg, self.scope, keys)
        path: str = self.scope["path"]
        route = match_route(cfg.routes, path, lambda name: header(hdrs, name), lambda: self.model)
        if route is None:
            raise RouterError(f"No route matches {path}.", code="no_route", status=404)
        if self.p.sockets is None:
            raise RouterError(
                "WebSocket sessions need canary's own upstream pool.",
                code="sessions_unavailable",
                status=501,
            )
        self.route = route
        self.answer.route = route.name.encode()
        sticky = route.sticky
        by_header = sticky is not None and sticky.source == "header"
        key = header(hdrs, sticky.name) if sticky is not None and by_header else None
        return cfg.backends[self.p.choose(route, key or None)]

    async def _forward(self, backend: Backend) -> None:
        """The chosen backend; when its handshake fails, the baseline's once."""
        assert self.cfg is not None and self.route is not None
        route = self.route
        baseline = self.cfg.backends[route.baseline] if route.fallback else None
        t = await self._call(backend, None, baseline not in (None, backend))
        if t.fall_back and baseline is not None:
            self.p.meter.fallback(route.name, backend.name)
            self.first = t
            try:
                await self._call(baseline, backend.name, False)
            finally:
                if t.deferred:  # a canary's other 4xx is its error when the baseline served
                    last = self.last
                    served = last is not None and last is not t and last.status == 101
                    t.kind, t.deferred = ("rejected" if served else None), False
                    self._account(t)

    async def _call(self, backend: Backend, origin: str | None, can_fall_back: bool) -> Try:
        """One backend: a slot, the handshake, the frames; accounted when it ends."""
        assert self.cfg is not None
        t = self.last = Try(backend, origin, self.p.clock())
        lease = await self.p.admit(t, self.cfg.server.queue_timeout_s, self.answer.deny)
        if lease is None:
            self._account(t)
            return t
        try:
            upstream = await self._open(t, can_fall_back)
            if upstream is not None:
                await self._session(t, upstream)
        except asyncio.CancelledError:
            t.outcome = "cancelled"
            raise
        except Exception:
            t.outcome = "internal_error"  # answered at the edge (canary.proxy.app)
            raise
        finally:
            await lease.release()
            if not t.deferred:
                self._account(t)
        return t

    async def _open(self, t: Try, can_fall_back: bool) -> UpstreamSocket | None:
        """The upstream handshake; None when it failed (fallen back, or the client told)."""
        p, backend = self.p, t.backend
        assert p.sockets is not None
        wait = connect_s(backend.timeout_s) + backend.timeout_s
        try:
            request = handshake(self.scope, backend, self.answer, wait)
        except RouterError as bad:  # a header that is not UTF-8: nothing reached the upstream
            t.outcome = "bad_request"
            t.status = await self.answer.deny(bad, backend.name, t.origin)
            return None
        p.stats.window(backend.name).start()
        t.began = p.clock()
        try:
            upstream = await p.sockets.connect(request)
        except Refused as refused:
            t.status, t.kind = refused.status, fault_kind(refused.status)
            t.outcome = f"upstream_{refused.status}"
            if can_fall_back and (t.kind is not None or 400 <= t.status < 500):
                t.fall_back, t.deferred = True, t.kind is None
                return None
            await self.answer.relay_refusal(refused, backend.name, t.origin)
            return None
        except httpx.TransportError as exc:
            t.outcome = outcome_of(exc)
            t.kind = _KIND[t.outcome]
            if can_fall_back:
                t.fall_back = True
                return None
            failure = upstream_failure(backend, exc)
            t.status = await self.answer.deny(failure, backend.name, t.origin, FAILED)
            return None
        t.opened = p.clock()
        p.meter.session_opened(backend.name)
        return upstream

    async def _session(self, t: Try, upstream: UpstreamSocket) -> None:
        """Accept the client with upstream's subprotocol, then relay until either ends."""
        assert self.cfg is not None
        try:
            t.status = 101
            if not await self.answer.accept(upstream.protocol, t.backend.name, t.origin):
                t.outcome = "client_disconnected"
                return
            scan = Scan(self.model, self._usage, self._audit)
            max_s = self.cfg.server.session_max_s
            writer = (self.scope.get("extensions") or {}).get(FRAMES)
            self.ending, self.tally = await relay(
                self.receive, self.answer.send, upstream, scan, max_s, writer
            )
            if self.ending.cut:
                t.kind, t.outcome = "session_cut", "session_cut"
        except asyncio.CancelledError:
            self.ending = Ending("drain", 1001)
            raise
        finally:
            if not upstream.closed:
                await upstream.close(code=1001)

    def _usage(self, tokens: tuple[int, int]) -> None:
        """A ``response.done`` / ``response.completed`` event's usage, metered at once."""
        assert self.cfg is not None and self.route is not None and self.last is not None
        name = self.last.backend.name
        self.tokens[0] += tokens[0]
        self.tokens[1] += tokens[1]
        model = self.model or self.answer.named
        price = self.cfg.pricing.get(name, {}).get(model or "")
        prices = None if price is None else (price.input, price.output)
        self.p.meter.usage(self.route.name, name, model, tokens, prices)

    def _audit(self, asked: str | None, named: str) -> None:
        """The first model a server event names, against the one asked for (SPEC §9)."""
        assert self.last is not None
        self.answer.named = named
        if asked is not None:
            audit_answer(self.p.meter, self.last.backend, asked, named, "live")

    def _account(self, t: Try) -> None:
        """A backend's part ended: its verdict counted once, the session metered."""
        assert self.route is not None
        p, name = self.p, t.backend.name
        if t.began is not None:
            seconds = (t.opened if t.opened is not None else p.clock()) - t.began
            p.count(name, seconds, t.kind, verdict=t.outcome not in NO_VERDICT)
            t.began = None
        if t.opened is not None:
            n = self.tally or Tally()
            counts = (n.frames_in, n.frames_out, n.bytes_in, n.bytes_out)
            p.meter.session_closed(name, t.kind == "session_cut", counts)
        if not t.status and t.outcome in NO_VERDICT:
            t.status = 499
        p.meter.call(self.route.name, name, t.status, p.clock() - t.since)


def access_fields(session: Session, ms: float) -> dict[str, Any]:
    """The session's one access line: who served it, how long, what went each way."""
    t, ending, tally = session.last, session.ending, session.tally
    fields: dict[str, Any] = {
        "request_id": session.answer.request_id.decode(),
        "path": session.scope["path"],
        "ms": ms,
        "route": session.route.name if session.route is not None else None,
        "backend": t.backend.name if t is not None else None,
        "status": t.status if t is not None else 0,
        "outcome": t.outcome if t is not None else "ok",
    }
    if t is None and session.refusal is not None:
        fields["status"], fields["outcome"] = session.refusal.status, session.refusal.code
    if ending is not None:
        fields["closed_by"], fields["close_code"] = ending.by, ending.code
    if tally is not None:
        fields["frames_in"], fields["frames_out"] = tally.frames_in, tally.frames_out
        fields["bytes_in"], fields["bytes_out"] = tally.bytes_in, tally.bytes_out
    if session.tokens != [0, 0]:
        fields["tokens_in"], fields["tokens_out"] = session.tokens
    if session.first is not None:
        fields["fallback"], fields["fallback_outcome"] = (
            session.first.backend.name,
            session.first.outcome if session.first.kind != "rejected" else "rejected",
        )
    return fields


class Sessions:
    """The ``/v1/*`` WebSocket entry: one ``Session`` per connection, one access line each."""

    def __init__(self, plane: Plane) -> None:
        self.plane = plane
        self._line = line_writer("proxy.session", "canary.proxy")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        session = Session(self.plane, scope, receive, send)
        scope[ANSWER] = session.answer  # for the drain, should it have to cut it
        try:
            await session.run()
        except Exception:
            log.exception("proxy.internal_error", request_id=session.answer.request_id.decode())
            self.plane.meter.internal_error()
            await session.answer.fail()
        finally:
            seconds = self.plane.clock() - session.started
            self.plane.tracing.session(session, seconds)
            if self.plane.access_log:
                self._line(access_fields(session, round(seconds * 1000, 2)))
