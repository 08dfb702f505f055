"""The data plane: a raw ASGI app that forwards every ``/v1/*`` call to one backend.

One request, top to bottom: read ``store.config`` once (a reload mid-request does not
touch it) -> check the client key -> read the body (bounded) -> first matching route ->
backend by weight or sticky key -> rewrite ``model`` if the backend maps it -> send
upstream through the shared transport -> stream the answer back chunk by chunk.

Why raw ASGI and a bare transport call: this runs on every LLM call of every user, so it
allocates no Starlette request/response objects and skips ``httpx.AsyncClient`` (whose
cookie jar would also carry one user's cookies into another's request). The JSON body is
parsed only when a route, a sticky key or a ``model_map`` needs it.

Bounded waits: the transport's read timeout (``timeout_s``) bounds the wait for the
headers and for each next upstream chunk; a deadline of ``timeout_s`` + 1 s per chunk
bounds a slow client, so it cannot hold an upstream connection longer. A client that
disconnects is noticed at once by a watcher on ``receive`` that cancels the call and
closes the upstream connection.

Rollback: a canary whose circuit is not closed is skipped at routing time (its call goes
to the route's baseline). Fallback: with ``fallback: true``, a canary call that fails
(5xx, 429, timeout, connection error, or a stream broken before its first chunk) before
any byte reached the client is made once more on the baseline, answered with
``x-canary-fallback``; the failure still counts against the canary. Response headers go
out with the first body chunk, which is what makes that window last until then.

A stream that breaks after bytes reached the client is never ended as if complete: an
SSE stream gets an error event in OpenAI's shape (the openai client raises on it), any
other body is cut so the client sees an incomplete response.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import os
import random
import re
from collections.abc import Awaitable, Callable
from typing import Any, cast

import httpx
import orjson
import structlog
from starlette.types import Message, Receive, Scope, Send

from canary.config.model import Backend, Config, Price, Retry, Route, bearer_digest
from canary.config.store import ConfigStore
from canary.errors import RouterError
from canary.observe.logs import redactor
from canary.observe.meter import Meter
from canary.proxy.retry import RETRY_STATUSES, RetryBudget, backoff, delay_s, retryable_error
from canary.proxy.router import match_route, pick
from canary.proxy.usage import UsageScanner, readable_encodings
from canary.safety.breaker import CLOSED, Breakers, Circuit
from canary.safety.limits import Limiter, RateLimited
from canary.safety.windows import Stats, Window
from canary.types import Clock

log = structlog.get_logger("canary.proxy.app")

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Replaced by ours (host, authorization, request id) or recomputed (content-length).
_DROP_REQUEST = HOP_BY_HOP | {
    b"host",
    b"authorization",
    b"content-length",
    b"expect",
    b"x-request-id",
}
_DROP_RESPONSE = HOP_BY_HOP | {b"date"}  # uvicorn adds its own; two would confuse clients
_SLOW_CLIENT_GRACE_S = 1.0
_WAIT_S = 0.001  # a limiter acquire slower than this queued for a slot (not just a Redis hop)
_URL_CACHE_SIZE = 4096
_DONE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
_REQUEST_ID = re.compile(rb"[!-~]{1,128}")
_NO_PRICES: dict[str, Price] = {}
_MODEL_SPAN = 4096
_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,128})"')


class _Flags:
    __slots__ = ("disconnected", "done")

    def __init__(self) -> None:
        self.done = False
        self.disconnected = False


class _Call:
    """One call to one backend: when its open try started (None between tries), and how
    it ended, for the access line and the meter."""

    __slots__ = ("backend", "outcome", "started", "status", "tokens")

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.started: float | None = None
        self.status = 0
        self.outcome = "ok"
        self.tokens: tuple[int, int] | None = None


class _Body:
    """The request body, parsed as JSON at most once and only when asked."""

    __slots__ = ("_json", "_parsed", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._parsed = False
        self._json: dict[str, Any] | None = None

    def json(self) -> dict[str, Any] | None:
        if not self._parsed:
            self._parsed = True
            if self.raw:
                try:
                    value = orjson.loads(self.raw)
                except orjson.JSONDecodeError:
                    raise RouterError(
                        "The request body is not valid JSON, and this route needs to read it.",
                        code="invalid_json",
                        status=400,
                    ) from None
                self._json = value if isinstance(value, dict) else None
        return self._json

    def model(self) -> str | None:
        body = self.json()
        model = body.get("model") if body is not None else None
        return model if isinstance(model, str) else None

    def accounted_model(self) -> str | None:
        """The client's ``model`` for token accounting; never refuses a body it cannot read.

        A body already parsed (a route needed it) is read exactly; otherwise it is not
        parsed for a label: ``"model": "..."`` is looked for in its first and last 4 KiB
        (SDKs write it first, or right after ``messages``)."""
        raw = self.raw
        if self._parsed:
            return self.model() if self._json is not None else None
        if raw[:64].lstrip()[:1] != b"{":
            return None
        small = len(raw) <= 2 * _MODEL_SPAN
        for part in (raw,) if small else (raw[:_MODEL_SPAN], raw[-_MODEL_SPAN:]):
            found = _MODEL.search(part)
            if found is not None:
                return found.group(1).decode("utf-8", "replace")
        return None


@functools.cache
def _timeouts(t: float) -> dict[str, float]:
    """httpx's timeout extension for a backend's ``timeout_s``; shared, never mutated."""
    return {"connect": min(10.0, t), "read": t, "write": t, "pool": t}


def error_response_parts(exc: RouterError, request_id: bytes) -> tuple[Message, Message]:
    headers = [
        (b"content-type", b"application/json"),
        (b"x-canary-request-id", request_id),
        *exc.headers(),
    ]
    return (
        {"type": "http.response.start", "status": exc.status, "headers": headers},
        {"type": "http.response.body", "body": exc.body(), "more_body": False},
    )


def _request_id(given: bytes | None) -> bytes:
    """The client's ``x-request-id`` when it is sane (printable, short), else a new one."""
    if given and _REQUEST_ID.fullmatch(given):
        return given
    return os.urandom(12).hex().encode()


class Proxy:
    """The ``/v1/*`` ASGI app. Dependencies are injected by ``create_app``."""

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
        started = self.clock()
        hdrs: dict[bytes, bytes] = dict(scope["headers"])
        request_id = _request_id(hdrs.get(b"x-request-id"))
        cfg = self.store.config
        try:
            if cfg is None:
                raise RouterError(
                    "No valid configuration is loaded; GET /status shows why.",
                    code="no_config",
                    status=503,
                )
            if cfg.auth.api_key_digests:
                _check_client_key(cfg, hdrs.get(b"authorization"))
            path: str = scope["path"]
            _check_path(path, scope.get("raw_path"))
            body = await _read_body(receive, hdrs, cfg.server.max_body_bytes)
            route = match_route(
                cfg.routes,
                path,
                lambda name: _header(hdrs, name),
                body.model,
            )
            if route is None:
                raise RouterError(f"No route matches {path}.", code="no_route", status=404)
            key = _sticky_key(route, hdrs, body)
            name = pick(route.weights, key, self.rng)
            if name != route.baseline:
                circuit = self.breakers.circuits.get(name)
                if circuit is not None and not circuit.admit():
                    name = route.baseline  # rolled back: the baseline takes this call
            backend = cfg.backends[name]
        except RouterError as exc:
            start, end = error_response_parts(exc, request_id)
            await send(start)
            await send(end)
            elapsed = self.clock() - started
            self.meter.call("", "", exc.status, elapsed)
            if self.access_log:
                _access(scope, request_id, None, None, exc.status, exc.code, elapsed)
            return
        await self._forward(scope, receive, send, cfg, route, backend, body, request_id, started)

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        cfg: Config,
        route: Route,
        backend: Backend,
        body: _Body,
        request_id: bytes,
        started: float,
    ) -> None:
        """Call the chosen backend; on an early canary failure, call the baseline once.

        One access line per client request, written when it ends, however it ends."""
        flags = _Flags()
        task = asyncio.current_task()
        assert task is not None
        watcher = asyncio.get_running_loop().create_task(_watch_disconnect(receive, flags, task))
        baseline = cfg.backends[route.baseline] if route.fallback else None
        if baseline is backend:
            baseline = None
        call = first = _Call(backend.name)
        try:
            content = _map_model(backend, body)
            failed = await self._attempt(
                scope, send, route, backend, content, body, request_id, flags, None,
                baseline is not None, cfg, call,
            )  # fmt: skip
            if failed and baseline is not None:
                self.meter.fallback(route.name, backend.name)
                call = _Call(baseline.name)
                content = _map_model(baseline, body)
                await self._attempt(
                    scope, send, route, baseline, content, body, request_id, flags,
                    backend.name, False, cfg, call,
                )  # fmt: skip
        except asyncio.CancelledError:
            if not flags.disconnected:
                raise
            task.uncancel()  # the client left: not a backend failure, nothing to answer
        finally:
            watcher.cancel()
            if self.access_log:
                fell_back = first if call is not first else None
                _access(
                    scope, request_id, route.name, call.backend, call.status, call.outcome,
                    self.clock() - started, call.tokens, fell_back,
                )  # fmt: skip

    def _request(
        self, scope: Scope, backend: Backend, content: bytes, request_id: bytes
    ) -> httpx.Request:
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        target = backend.base_url + raw_path[3:].decode("latin-1")
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        url = self._urls.get(target)
        if url is None:  # parsing a URL is httpx's dearest step; upstream URLs are few
            if len(self._urls) >= _URL_CACHE_SIZE:
                self._urls.clear()
            url = self._urls[target] = httpx.URL(target)
        drop = _DROP_REQUEST
        for k, v in scope["headers"]:
            if k == b"connection":  # headers the client named hop-by-hop go no further
                drop = _without(_DROP_REQUEST, v)
        # Ask for codings whose usage canary can read (gzip, deflate), never br or zstd.
        headers = [
            (k, readable_encodings(v) if k == b"accept-encoding" else v)
            for k, v in scope["headers"]
            if k not in drop
        ]
        headers.append((b"x-request-id", request_id))
        if backend.api_key:
            headers.append((b"authorization", b"Bearer " + backend.api_key.encode()))
        # stream= rather than content=: the body is final, so httpx need not encode it or
        # re-build the headers; the transport sets Host and Content-Length from them.
        return httpx.Request(
            scope["method"],
            url,
            headers=headers,
            stream=httpx.ByteStream(content),
            extensions={"timeout": _timeouts(backend.timeout_s)},
        )

    async def _attempt(
        self,
        scope: Scope,
        send: Send,
        route: Route,
        backend: Backend,
        content: bytes,
        body: _Body,
        request_id: bytes,
        flags: _Flags,
        fell_back_from: str | None,
        can_fall_back: bool,
        cfg: Config,
        call: _Call,
    ) -> bool:
        """One call to one backend (with its retries), counted in its window and circuit.

        Returns True when it failed before any byte reached the client and
        ``can_fall_back``: then nothing was sent, and the caller may try the baseline.
        """
        window = self.stats.window(backend.name)
        circuit = self.breakers.circuits.get(backend.name)
        meter = self.meter
        started = self.clock()
        queue_s = cfg.server.queue_timeout_s
        try:
            lease = await self.limiter.acquire(
                backend.name,
                max_concurrency=backend.max_concurrency,
                max_qps=backend.max_qps,
                wait_s=queue_s,
            )
        except RateLimited as limited:  # canary's own limit: the backend did nothing wrong
            call.status = await _send_error(
                send, limited, request_id, backend, route, fell_back_from
            )
            call.outcome = "rate_limited"
            meter.rejected(backend.name)
            meter.call(route.name, backend.name, call.status, self.clock() - started)
            return False
        waited = self.clock() - started
        if waited > _WAIT_S:
            meter.waited(backend.name, waited)
        status = 0
        outcome = "ok"
        # Usage is read from answers to POSTs (completions, embeddings, responses).
        scanner = UsageScanner() if scope["method"] == "POST" else None
        response: httpx.Response | None = None
        try:
            try:
                response = await self._send(
                    scope, backend, content, request_id, cfg, window, circuit, call
                )
                status = response.status_code
                if can_fall_back and (status >= 500 or status == 429):
                    outcome = f"upstream_{status}"  # answered by the baseline instead
                    return True
                outcome = await self._relay(
                    send,
                    response,
                    backend,
                    route,
                    request_id,
                    flags,
                    fell_back_from,
                    scope["path"],
                    scanner if status < 300 else None,
                )
            except _EarlyFailure as early:
                outcome = early.outcome
                status = 0  # the headers said 200, but no answer came: not a success
                _log_failure(request_id, backend, early.cause)
                if can_fall_back:
                    return True
                status = await _send_upstream_failure(
                    send, backend, route, early.cause, request_id, fell_back_from
                )
            except httpx.LocalProtocolError:
                # The request cannot be written (a header that is not UTF-8): the client's
                # fault, not the backend's. Nothing reached the upstream.
                outcome = "bad_request"
                refusal = RouterError(
                    "A request header could not be forwarded (not UTF-8).",
                    code="invalid_header",
                    status=400,
                )
                status = await _send_error(
                    send, refusal, request_id, backend, route, fell_back_from
                )
            except httpx.TransportError as exc:
                outcome = _outcome_of(exc)
                _log_failure(request_id, backend, exc)
                if can_fall_back:
                    return True
                status = await _send_upstream_failure(
                    send, backend, route, exc, request_id, fell_back_from
                )
            return False
        except asyncio.CancelledError:
            outcome = "client_disconnected" if flags.disconnected else "cancelled"
            raise
        except Exception as exc:  # a bug or an unforeseen library error: still answer
            outcome = "internal_error"
            log.error(
                "proxy.internal_error", request_id=request_id.decode(), error=type(exc).__name__
            )
            if not flags.done and status == 0:
                refusal = RouterError(
                    "canary failed to forward the request.", code="internal_error", status=502
                )
                status = await _send_error(
                    send, refusal, request_id, backend, route, fell_back_from
                )
            return False
        finally:
            if response is not None:
                await response.aclose()
            await lease.release()
            now = self.clock()
            if call.started is not None:  # the last try is still open (not one that failed)
                error = outcome in _ERROR_OUTCOMES or status >= 500 or status == 429
                window.finish(now - call.started, error=error)
                if circuit is not None:
                    if outcome in _NO_VERDICT:
                        circuit.abandon()
                    else:
                        circuit.record(error=error)
                if error:
                    meter.failure(backend.name, _failure_kind(outcome, status))
            if outcome == "ok" and scanner is not None and status < 300:
                call.tokens = scanner.result()
                if call.tokens is None:
                    meter.no_usage(backend.name)
                else:
                    model = body.accounted_model()
                    price = cfg.pricing.get(backend.name, _NO_PRICES).get(model or "")
                    meter.usage(
                        route.name,
                        backend.name,
                        model,
                        call.tokens,
                        None if price is None else (price.input, price.output),
                    )
            if not status and outcome in _NO_VERDICT:
                status = 499  # nginx's "client closed request": no answer was given
            call.status, call.outcome = status, outcome
            meter.call(route.name, backend.name, status, now - started)

    async def _send(
        self,
        scope: Scope,
        backend: Backend,
        content: bytes,
        request_id: bytes,
        cfg: Config,
        window: Window,
        circuit: Circuit | None,
        call: _Call,
    ) -> httpx.Response:
        """Call the backend, retrying what cannot have been billed (see ``canary.proxy.retry``).

        Each failed try is counted against the backend before the next; ``call.started``
        is the start of the try still open, None while waiting between tries.
        """
        rules = cfg.retry
        attempt = 1
        while True:
            self.budget.note_call(backend.name)
            call.started = self.clock()
            window.start()
            response: httpx.Response | None = None
            failure: httpx.TransportError | None = None
            try:
                response = await self.transport.handle_async_request(
                    self._request(scope, backend, content, request_id)
                )
            except httpx.TransportError as exc:
                if not retryable_error(exc, unsafe=rules.unsafe):
                    raise
                wait, after, failure = (
                    backoff(attempt, rules.backoff_s, self.rng),
                    type(exc).__name__,
                    exc,
                )
                kind = _failure_kind(_outcome_of(exc), 0)
            else:
                if response.status_code not in RETRY_STATUSES:
                    return response
                asked = delay_s(attempt, rules.backoff_s, response.headers, self.rng)
                if asked is None:
                    return response
                wait, after = asked, str(response.status_code)
                kind = _failure_kind("", response.status_code)
            # A retryable failure: count it now, so a circuit it trips stops the retries.
            window.finish(self.clock() - call.started, error=True)
            self.meter.failure(backend.name, kind)
            call.started = None
            if circuit is not None:
                circuit.record(error=True)
            if not self._may_retry(attempt, rules, backend, circuit) or not await self._retry_start(
                backend, cfg
            ):
                if failure is not None:
                    raise failure
                assert response is not None
                return response  # counted already: call.started is None
            if response is not None:
                await response.aclose()
            self.meter.retry(backend.name)
            log.info(
                "proxy.retry",
                request_id=request_id.decode(),
                backend=backend.name,
                attempt=attempt,
                after=after,
                wait_s=round(wait, 3),
            )
            await self.sleep(wait)
            attempt += 1

    async def _retry_start(self, backend: Backend, cfg: Config) -> bool:
        """A retry is a new request start: it needs a QPS slot like any other."""
        if backend.max_qps is None:
            return True
        try:
            await self.limiter.acquire(
                backend.name,
                max_concurrency=None,  # the call's concurrency lease is still held
                max_qps=backend.max_qps,
                wait_s=cfg.server.queue_timeout_s,
            )
        except RateLimited:
            return False
        return True

    def _may_retry(
        self, attempt: int, rules: Retry, backend: Backend, circuit: Circuit | None
    ) -> bool:
        return (
            attempt < rules.max_attempts
            and (circuit is None or circuit.state == CLOSED)  # a tripped backend gets no more
            and self.budget.try_spend(backend.name, rules.budget)
        )

    async def _relay(
        self,
        send: Send,
        response: httpx.Response,
        backend: Backend,
        route: Route,
        request_id: bytes,
        flags: _Flags,
        fell_back_from: str | None,
        path: str,
        scanner: UsageScanner | None,
    ) -> str:
        """Stream the upstream answer to the client; return how it ended.

        The response headers go out with the first body chunk, so a stream that fails
        before its first chunk raises ``_EarlyFailure`` with nothing sent (fallback still
        possible).
        """
        status = response.status_code
        raw = [(k.lower(), v) for k, v in response.headers.raw]
        drop = _DROP_RESPONSE
        content_type = encoding = b""
        for k, v in raw:
            if k == b"connection":
                drop = _without(_DROP_RESPONSE, v)
            elif k == b"content-type":
                content_type = v
            elif k == b"content-encoding":
                encoding = v
        sse = content_type.startswith(b"text/event-stream")
        if sse or status < 200 or status in (204, 304):
            # An SSE body may get an error event appended; a bodiless status has no length.
            drop = drop | {b"content-length"}
        out_headers = [(k, v) for k, v in raw if k not in drop]
        out_headers += [
            (b"x-canary-backend", backend.name.encode()),
            (b"x-canary-route", route.name.encode()),
            (b"x-canary-request-id", request_id),
        ]
        if fell_back_from is not None:
            out_headers.append((b"x-canary-fallback", fell_back_from.encode()))
        start = {"type": "http.response.start", "status": status, "headers": out_headers}
        # Chat and legacy completions end their streams with [DONE]; other event streams
        # (the Responses API, say) end otherwise, and a compressed one cannot be read here.
        expect_done = sse and status < 400 and path in _DONE_PATHS and not encoding
        if scanner is not None and encoding and not scanner.encoded(encoding):
            scanner = None  # an encoding it cannot read: the call counts as unmetered
        # A plain stream's usage rides in its last event: keep its last chunks (comments,
        # such as keep-alives, aside) and read them at the end; anything else as it passes.
        last_chunks = sse and not encoding
        loop = asyncio.get_running_loop()
        budget = backend.timeout_s + _SLOW_CLIENT_GRACE_S
        before = prev = last = b""  # an SSE stream's last chunks: [DONE] and the usage event
        started = False
        try:
            async with asyncio.timeout(loop.time() + budget) as deadline:
                async for chunk in cast(httpx.AsyncByteStream, response.stream):
                    deadline.reschedule(loop.time() + budget)
                    if not started:
                        await send(start)
                        started = True
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    if last_chunks:
                        if chunk and chunk[:1] != b":":
                            before, prev, last = prev, last, chunk
                    elif scanner is not None:
                        scanner.feed(chunk)
                if not started:
                    await send(start)
                    started = True
                if last_chunks and scanner is not None:
                    for part in (before, prev, last):
                        scanner.feed(part)
                if expect_done and b"[DONE]" not in (prev[-16:] + last)[-32:]:
                    await _end_with_error(send, backend, "the stream ended before [DONE]", flags)
                    return "stream_cut"
                flags.done = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return "ok"
        except httpx.TransportError as exc:
            if not started:  # the headers came, the body broke: a cut (or a timeout)
                timeout = isinstance(exc, httpx.TimeoutException)
                raise _EarlyFailure("upstream_timeout" if timeout else "stream_cut", exc) from exc
            _log_failure(request_id, backend, exc, event="proxy.stream_broken")
            if sse and not encoding:
                await _end_with_error(
                    send, backend, f"the upstream stream broke ({type(exc).__name__})", flags
                )
            # Otherwise return without ending the body: the server closes the connection,
            # so the client sees an incomplete response rather than a short "complete" one.
            return _outcome_of(exc) if _outcome_of(exc) == "upstream_timeout" else "stream_cut"
        except TimeoutError:
            log.warning("proxy.slow_client", request_id=request_id.decode(), backend=backend.name)
            return "slow_client"


class _EarlyFailure(Exception):
    """The upstream failed before any byte reached the client."""

    def __init__(self, outcome: str, cause: httpx.TransportError) -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.cause = cause


# Outcomes that count against the backend; and those that give no verdict on it.
_ERROR_OUTCOMES = frozenset({"upstream_timeout", "upstream_error", "stream_cut"})
_NO_VERDICT = frozenset(
    {"client_disconnected", "cancelled", "slow_client", "bad_request", "internal_error"}
)


def _failure_kind(outcome: str, status: int) -> str:
    """The ``kind`` label of an upstream failure: from the outcome when the transport
    failed (``status`` is then the router's own 502/504), else from the status."""
    if outcome == "stream_cut":
        return "stream_cut"
    if outcome == "upstream_timeout":
        return "timeout"
    if outcome == "upstream_error":
        return "connect"
    return "429" if status == 429 else "5xx"


def _outcome_of(exc: httpx.TransportError) -> str:
    return "upstream_timeout" if isinstance(exc, httpx.TimeoutException) else "upstream_error"


def _log_failure(
    request_id: bytes,
    backend: Backend,
    exc: httpx.TransportError,
    event: str = "proxy.upstream_failed",
) -> None:
    log.warning(
        event,
        request_id=request_id.decode(),
        backend=backend.name,
        error=type(exc).__name__,
        detail=redactor.scrub(str(exc)),
    )


def _access(
    scope: Scope,
    request_id: bytes,
    route: str | None,
    backend: str | None,
    status: int,
    outcome: str,
    elapsed_s: float,
    tokens: tuple[int, int] | None = None,
    fell_back: _Call | None = None,
) -> None:
    """The one access-log line per request; a refusal has no route or backend.

    ``tokens_in``/``tokens_out`` when the provider reported usage; after a fallback,
    ``fallback`` names the backend that failed first and ``fallback_outcome`` how."""
    extra: dict[str, Any] = {}
    if tokens is not None:
        extra["tokens_in"], extra["tokens_out"] = tokens
    if fell_back is not None:
        extra["fallback"], extra["fallback_outcome"] = fell_back.backend, fell_back.outcome
    log.info(
        "proxy.request",
        request_id=request_id.decode(),
        method=scope["method"],
        path=scope["path"],
        route=route,
        backend=backend,
        status=status,
        outcome=outcome,
        ms=round(elapsed_s * 1000, 2),
        **extra,
    )


async def _end_with_error(send: Send, backend: Backend, why: str, flags: _Flags) -> None:
    event = {
        "error": {
            "message": f"Upstream {backend.name!r} failed mid-stream: {why}.",
            "type": "upstream_error",
            "code": "stream_cut",
        }
    }
    flags.done = True
    await send(
        {
            "type": "http.response.body",
            "body": b"data: " + orjson.dumps(event) + b"\n\n",
            "more_body": True,
        }
    )
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _send_upstream_failure(
    send: Send,
    backend: Backend,
    route: Route,
    exc: httpx.TransportError,
    request_id: bytes,
    fell_back_from: str | None,
) -> int:
    """Answer a transport failure as OpenAI's error shape: 504 on a timeout, else 502."""
    if isinstance(exc, httpx.TimeoutException):
        error = RouterError(
            f"Upstream {backend.name!r} did not answer within {backend.timeout_s:g} s.",
            code="upstream_timeout",
            status=504,
        )
    else:
        error = RouterError(
            f"Upstream {backend.name!r} failed: {type(exc).__name__}.",
            code="upstream_error",
            status=502,
        )
    return await _send_error(send, error, request_id, backend, route, fell_back_from)


async def _send_error(
    send: Send,
    error: RouterError,
    request_id: bytes,
    backend: Backend,
    route: Route,
    fell_back_from: str | None,
) -> int:
    """A router-made error for a routed call, with canary's routing headers."""
    start, end = error_response_parts(error, request_id)
    start["headers"] += [
        (b"x-canary-backend", backend.name.encode()),
        (b"x-canary-route", route.name.encode()),
    ]
    if fell_back_from is not None:
        start["headers"].append((b"x-canary-fallback", fell_back_from.encode()))
    await send(start)
    await send(end)
    return error.status


async def _watch_disconnect(receive: Receive, flags: _Flags, task: asyncio.Task[Any]) -> None:
    """Cancel the call as soon as the client goes away (the body has been read already)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
    if not flags.done:
        flags.disconnected = True
        task.cancel()


def _check_client_key(cfg: Config, authorization: bytes | None) -> None:
    given = bearer_digest(authorization)
    ok = False
    for known in cfg.auth.api_key_digests:  # compare with every key: no early exit
        ok |= hmac.compare_digest(given, known)
    if not ok:
        raise RouterError(
            "Missing or invalid API key: send 'Authorization: Bearer <key>' with a client key.",
            code="invalid_api_key",
            status=401,
        )


async def _read_body(receive: Receive, hdrs: dict[bytes, bytes], limit: int) -> _Body:
    declared = hdrs.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    message = await receive()
    chunk: bytes = message.get("body", b"")
    if not message.get("more_body"):
        if len(chunk) > limit:
            raise _too_large(limit)
        return _Body(chunk)
    parts = [chunk]
    size = len(chunk)
    while message.get("more_body"):
        message = await receive()
        if message["type"] == "http.disconnect":  # nobody is left to answer
            raise RouterError("The client disconnected.", code="client_disconnected", status=400)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        parts.append(chunk)
    return _Body(b"".join(parts))


def _check_path(path: str, raw_path: bytes | None) -> None:
    """Forward only plain ``/v1/...`` paths: no dot segments, raw or percent-encoded.

    ``base_url + path`` would otherwise let ``/v1/../admin`` (or ``%2e%2e``) reach any
    path on the provider's host with the backend's key attached.
    """
    raw = raw_path if raw_path is not None else path.encode()
    if not raw.startswith(b"/v1/") or (
        ("/." in path or b"%2e" in raw.lower()) and any(p in (".", "..") for p in path.split("/"))
    ):
        raise RouterError(
            "The request path must be /v1/... without '.' or '..' segments.",
            code="invalid_path",
            status=400,
        )


@functools.lru_cache(maxsize=256)
def _without(base: frozenset[bytes], connection: bytes) -> frozenset[bytes]:
    """``base`` plus the header names a ``Connection`` header lists as hop-by-hop.

    Cached: nearly every client sends the same few values ("keep-alive")."""
    return base | frozenset(t.strip().lower() for t in connection.split(b",") if t.strip())


def _too_large(limit: int) -> RouterError:
    return RouterError(
        f"The request body is larger than the limit of {limit} bytes.",
        code="request_too_large",
        status=413,
    )


def _header(hdrs: dict[bytes, bytes], name: str) -> str | None:
    value = hdrs.get(name.encode())
    return value.decode("latin-1") if value is not None else None


def _sticky_key(route: Route, hdrs: dict[bytes, bytes], body: _Body) -> str | None:
    sticky = route.sticky
    if sticky is None:
        return None
    if sticky.source == "header":
        return _header(hdrs, sticky.name) or None
    parsed = body.json()
    value = parsed.get(sticky.name) if parsed is not None else None
    return str(value) if value not in (None, "") else None


def _map_model(backend: Backend, body: _Body) -> bytes:
    if not backend.model_map:
        return body.raw
    parsed = body.json()
    if parsed is None:
        return body.raw
    model = parsed.get("model")
    mapped = backend.model_map.get(model) if isinstance(model, str) else None
    if mapped is None:
        return body.raw
    return orjson.dumps({**parsed, "model": mapped})
