"""The OpenTelemetry side of ``canary.observe.tracing``: imported only when tracing is on.

A call is one SERVER span named per the GenAI semantic conventions (``chat gpt-4.1``; a
path without a GenAI operation: ``POST <route>``; a call refused before routing: its
operation or method, the refusal's code as ``error.type``), continuing the client's
trace when it sent a ``traceparent``. Each call to a backend (its retries included) is a
CLIENT span under it, and the request that leaves carries that span's context in place of the
client's, so the provider's own spans hang under the try that called it.

Attributes (SPEC §12): ``gen_ai.operation.name``, ``gen_ai.request.model`` (the try's:
after ``model_map``), ``gen_ai.response.model`` (what the answer named),
``gen_ai.usage.input_tokens`` / ``output_tokens``, ``server.address`` / ``server.port``
(the backend), ``http.response.status_code``, ``error.type`` (the failure kind, an
outcome, or the status of a refused call), and ``canary.route``, ``canary.backend``,
``canary.fallback`` (the baseline answered after this backend failed; on a try: it is
that second call), ``canary.outcome``.

Cost (bench row 5f: at most +10% CPU per call). Built with the SDK's tracer, batch
processor and OTLP exporter, a call's two spans cost about 300 µs of CPU: span objects,
attribute validation under locks, contexts, and the protobuf runtime building a message
per span and per attribute. So the parts are split by what they do well:

- the request path records plain data (``canary.observe.otlp.SpanRecord``: ids from
  ``random.getrandbits``, ``time.time_ns``, the attribute values the call already has),
  reads and writes W3C ``traceparent`` itself (``canary.observe.trace_context``), and
  queues each finished span: no lock, no SDK object. Span names and the attributes calls
  share (route, backend, model, outcome...) are made once per shape (``_call_shape``...),
  kept in bounded dicts, and handed over as ``Shared`` blocks the exporter encodes once;
- one thread (``canary.observe.otlp_export``) drains the queue in batches, writes them in
  the protobuf wire format and posts them, configured by the same ``OTEL_BSP_*`` and
  ``OTEL_EXPORTER_OTLP_*`` variables as the SDK's;
- the SDK still gives the resource (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
  its detectors), ``tracestate`` validation and any non-W3C propagator, and
  ``tracing_with`` hands the same spans to any SDK span processor (``canary.observe.otel_sdk``).

Split so, a call's spans cost about a tenth of that, request path and export thread
together (a microbenchmark: ~30 µs a call against ~370; bench row 5f: 1.06x, was 1.97x).
The price: what the SDK offers beyond that is not there. No span of canary's is visible
to code running inside it through the OpenTelemetry API (there is none to see it), span
limits do not apply (a span has at most 16 attributes), samplers are the standard ones
(``canary.observe.trace_context``), and credential-provider entry points are not read.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlsplit

from opentelemetry.sdk.resources import Resource

from canary.observe.otlp import CLIENT, SERVER, Encoder, Shared, SpanRecord
from canary.observe.otlp_export import Batcher, OtlpHttp
from canary.observe.trace_context import Propagation, Sampler, propagation, sampler
from canary.observe.tracing import ExchangeView, SessionView, Trace, Tracing, TryView
from canary.safety.equivalence import echoed_model

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor

SHUTDOWN_S = 5.0  # the last export when the server stops; the exporter's own timeout is 10 s

# GenAI operation names (semantic conventions) of the paths that have one.
OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/responses": "chat",
    "/v1/messages": "chat",
    "/v1/completions": "text_completion",
    "/v1/embeddings": "embeddings",
}

_bits = random.getrandbits


class Sink(Protocol):
    """Where finished spans go: the export queue, or an SDK span processor."""

    def put(self, span: SpanRecord) -> None: ...
    def close(self, timeout_s: float) -> None: ...


class OtelTracing(Tracing):
    """Tracing on: spans recorded as plain data into ``sink``, sampled and propagated as
    the standard variables say."""

    __slots__ = (
        "answer_shapes",
        "call_shapes",
        "last_shapes",
        "propagation",
        "sampler",
        "sink",
        "try_shapes",
    )
    enabled = True

    def __init__(self, sink: Sink, propagation: Propagation, sampler: Sampler) -> None:
        self.sink, self.propagation, self.sampler = sink, propagation, sampler
        # Shapes of spans (_call_shape...), by the event loop's thread only.
        self.call_shapes: Shapes = {}
        self.try_shapes: Shapes = {}
        self.last_shapes: Shapes = {}
        self.answer_shapes: Shapes = {}

    def begin(self, exchange: ExchangeView) -> Trace:
        return _Trace(self, exchange)

    def root(
        self, hdrs: dict[bytes, bytes], name: str, attributes: dict[str, Any], start: int
    ) -> tuple[SpanRecord, bool]:
        """A call's SERVER span, under the client's when its headers carry one; sampled?"""
        parent = self.propagation.extract(hdrs) if hdrs else None
        span_id = _bits(64) or 1  # 0 is no span; the SDK draws again, the odds are 2**-64
        if parent is None:
            span = SpanRecord((_bits(128) or 1, span_id, 0), name, SERVER, attributes, start)
        else:
            ids = (parent.trace_id, span_id, parent.span_id)
            span = SpanRecord(ids, name, SERVER, attributes, start)
            span.remote, span.state = True, parent.state
        return span, self.sampler.sampled(span.trace_id, parent)

    def refused(self, exchange: ExchangeView, status: int, code: str) -> None:
        """One span, named by the operation (its model may not even have been read)."""
        scope = exchange.scope
        operation = OPERATIONS.get(scope["path"])
        attributes: dict[str, Any] = {
            "http.request.method": scope["method"],
            "url.path": scope["path"],
            "http.response.status_code": status,
            "error.type": code,
            "canary.outcome": "refused",
        }
        if operation is not None:
            attributes["gen_ai.operation.name"] = operation
        now = time.time_ns()
        span, sampled = self.root(exchange.hdrs, operation or scope["method"], attributes, now)
        if sampled:
            span.error = code
            span.end = time.time_ns()
            self.sink.put(span)

    def session(self, session: SessionView, seconds: float) -> None:
        """One SERVER span for a whole WebSocket session, from its handshake to its close."""
        scope, t = session.scope, session.last
        operation = "realtime" if scope["path"].startswith("/v1/realtime") else "chat"
        name = f"{operation} {session.model}" if session.model else operation
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "url.path": scope["path"],
            "canary.route": session.route.name if session.route is not None else "",
            "canary.fallback": session.first is not None,
            "gen_ai.usage.input_tokens": session.tokens[0],
            "gen_ai.usage.output_tokens": session.tokens[1],
        }
        if session.model:
            attributes["gen_ai.request.model"] = session.model
        if session.ending is not None:
            attributes["canary.close_code"] = session.ending.code
        error = None
        if t is not None:
            attributes["canary.backend"] = t.backend.name
            attributes["canary.outcome"] = t.outcome
            attributes["server.address"] = _server(t.backend.base_url)[0]
            if t.status:
                attributes["http.response.status_code"] = t.status
            if t.outcome != "ok":
                error = attributes["error.type"] = t.kind or t.outcome
        end = time.time_ns()
        span, sampled = self.root(session.hdrs, name, attributes, end - int(seconds * 1e9))
        if sampled:
            span.end, span.error = end, error
            self.sink.put(span)

    async def aclose(self) -> None:
        """Flush and stop the exporter, in a thread: its last POST may be slow."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.to_thread(self.sink.close, SHUTDOWN_S), SHUTDOWN_S + 1)


def otlp_tracing(environ: Mapping[str, str]) -> OtelTracing:
    """Spans batched to OTLP over HTTP, everything set by the standard ``OTEL_*`` variables
    (endpoint, headers, timeout, sampler, batch sizes, resource); service name ``canary``."""
    send = OtlpHttp(Encoder(_resource(environ).attributes).encode, environ)
    return OtelTracing(Batcher(send, environ), propagation(environ), sampler(environ))


def tracing_with(processor: SpanProcessor, environ: Mapping[str, str]) -> OtelTracing:
    """Spans handed to an SDK span processor as ``ReadableSpan``, built on the caller's
    thread (tests pass a simple one over an in-memory exporter)."""
    from canary.observe.otel_sdk import SdkSink

    sink = SdkSink(processor, _resource(environ))
    return OtelTracing(sink, propagation(environ), sampler(environ))


def _resource(environ: Mapping[str, str]) -> Resource:
    """The SDK's resource (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, detectors),
    named ``canary`` unless the variables name it."""
    named = environ.get("OTEL_SERVICE_NAME") or "service.name=" in environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    return Resource.create({} if named else {"service.name": "canary"})


class _Trace(Trace):
    """One call's spans."""

    __slots__ = (
        "answered",
        "headers",
        "model",
        "name",
        "operation",
        "route",
        "sampled",
        "span",
        "strip",
        "tracing",
        "tries",
    )
    name: str
    operation: str | None

    def __init__(self, tracing: OtelTracing, exchange: ExchangeView) -> None:
        self.tracing = tracing
        scope, route = exchange.scope, exchange.route
        self.model = exchange.body.accounted_model() if exchange.body is not None else None
        self.route = route.name if route is not None else ""
        key = (self.route, scope["method"], scope["path"], self.model)
        shape: tuple[str, str | None, Shared]
        shape = tracing.call_shapes.get(key) or _call_shape(tracing.call_shapes, key)
        self.name, self.operation, block = shape
        self.span, self.sampled = tracing.root(exchange.hdrs, self.name, {}, time.time_ns())
        self.span.shared = (block,)
        self.tries: dict[TryView, SpanRecord] = {}
        self.headers: list[tuple[bytes, bytes]] = []
        # The client sent trace context of its own: its requests upstream lose it.
        self.strip = not tracing.propagation.fields.isdisjoint(exchange.hdrs)
        self.answered: tuple[TryView | None, SpanRecord | None] = (None, None)

    def try_began(self, t: TryView) -> None:
        call, tracing = self.span, self.tracing
        span_id = _bits(64) or 1
        self.headers = tracing.propagation.inject(call.trace_id, span_id, self.sampled, call.state)
        if not self.sampled:
            return
        backend, model = t.backend, self.model
        upstream = backend.model_map.get(model, model) if model is not None else None
        key = (self.name, self.route, self.operation, upstream, backend.name,
               backend.base_url, t.origin is not None)  # fmt: skip
        shape = tracing.try_shapes.get(key) or _try_shape(tracing.try_shapes, key)
        ids = (call.trace_id, span_id, call.span_id)
        span = SpanRecord(ids, shape[0], CLIENT, {}, time.time_ns())
        span.state, span.shared = call.state, shape[1]
        self.tries[t] = span

    def outgoing(self, headers: list[tuple[bytes, bytes]]) -> None:
        if self.headers:
            if self.strip:
                fields = self.tracing.propagation.fields
                headers[:] = [h for h in headers if h[0] not in fields]
            headers.extend(self.headers)

    def try_ended(self, t: TryView) -> None:
        span = self.tries.pop(t, None)
        if span is not None:
            model = echoed_model(t.head) if t.head is not None else None
            _answer(span, t, model, self.tracing.answer_shapes)
            self.answered = (t, span)  # the call's span tells the answer the client got
            span.end = time.time_ns()
            self.tracing.sink.put(span)

    def ended(self, exchange: ExchangeView) -> None:
        sink, now = self.tracing.sink, time.time_ns()
        for span in self.tries.values():  # a try the accounting never reached (a fault)
            span.end = now
            sink.put(span)
        self.tries.clear()
        if not self.sampled:
            return
        last, span = exchange.last, self.span
        if last is not None:
            backend, lasts = last.backend, self.tracing.last_shapes
            key = (backend.name, backend.base_url, exchange.first is not None)
            span.shared += (lasts.get(key) or _answered_by(lasts, key),)
            t, answer = self.answered
            if t is last and answer is not None:  # as its span says it (accounted, final)
                span.shared += answer.shared[-1:]
                span.attributes, span.error = answer.attributes, answer.error
            else:
                model = echoed_model(last.head) if last.head is not None else None
                _answer(span, last, model, self.tracing.answer_shapes)
        span.end = now
        sink.put(span)


def _answer(span: SpanRecord, t: TryView, model: str | None, answers: Shapes) -> None:
    """What a try's answer said (``model``: the one it named), on its span (or on the
    call's, for the one the client got): its token counts its own, the rest shared."""
    error = None
    if t.outcome != "ok":
        error = t.kind or t.outcome
    elif t.status >= 400:
        error = str(t.status)
    key = (t.outcome, t.status, model, error)
    span.shared += (answers.get(key) or _answer_shape(answers, key),)
    span.error = error
    if t.tokens is not None:
        attributes = span.attributes
        attributes["gen_ai.usage.input_tokens"] = t.tokens[0]
        attributes["gen_ai.usage.output_tokens"] = t.tokens[1]


# Calls alike share their names and the attributes they do not answer with: made once, by
# what they depend on. A client's paths and models are its own: so many, and it starts over.
SHAPES = 1024
Shapes = dict[tuple[Any, ...], Any]
_T = TypeVar("_T")


def _call_shape(shapes: Shapes, key: tuple[Any, ...]) -> tuple[str, str | None, Shared]:
    """A call's span name, its GenAI operation and its attributes, by (route, method,
    path, model): ``chat gpt-4.1``, or ``POST <route>`` for a path without an operation."""
    route, method, path, model = key
    operation = OPERATIONS.get(path)
    values: dict[str, Any] = {
        "canary.route": route,
        "http.request.method": method,
        "url.path": path,
    }
    if operation is not None:
        values["gen_ai.operation.name"] = operation
        name = f"{operation} {model}" if model else operation
    else:
        name = f"{method} {route}"
    if model is not None:
        values["gen_ai.request.model"] = model
    return _keep(shapes, key, (name, operation, Shared(values)))


def _try_shape(shapes: Shapes, key: tuple[Any, ...]) -> tuple[str, tuple[Shared]]:
    """A try's span name and attributes: the model after the backend's ``model_map``."""
    call_name, route, operation, upstream, backend, base_url, fallback = key
    host, port = _server(base_url)
    values: dict[str, Any] = {
        "canary.route": route,
        "canary.backend": backend,
        "canary.fallback": fallback,
        "server.address": host,
    }
    if port is not None:
        values["server.port"] = port
    name = call_name
    if operation is not None:
        values["gen_ai.operation.name"] = operation
    if upstream is not None:
        values["gen_ai.request.model"] = upstream
        name = f"{operation} {upstream}" if operation else name
    return _keep(shapes, key, (name, (Shared(values),)))


def _answered_by(shapes: Shapes, key: tuple[Any, ...]) -> Shared:
    """The call's attributes of the backend that answered it (the last one called)."""
    backend, base_url, fallback = key
    values = {"canary.backend": backend, "canary.fallback": fallback,
              "server.address": _server(base_url)[0]}  # fmt: skip
    return _keep(shapes, key, Shared(values))


def _answer_shape(answers: Shapes, key: tuple[Any, ...]) -> Shared:
    """An answer's attributes but its token counts: outcome, status, model, error."""
    outcome, status, model, error = key
    values: dict[str, Any] = {"canary.outcome": outcome}
    if status:
        values["http.response.status_code"] = status
    if model is not None:
        values["gen_ai.response.model"] = model
    if error is not None:
        values["error.type"] = error
    return _keep(answers, key, Shared(values))


def _keep(shapes: Shapes, key: tuple[Any, ...], shape: _T) -> _T:
    if len(shapes) >= SHAPES:
        shapes.clear()
    shapes[key] = shape
    return shape


@functools.lru_cache(maxsize=64)
def _server(base_url: str) -> tuple[str, int | None]:
    parts = urlsplit(base_url)
    return parts.hostname or "", parts.port
