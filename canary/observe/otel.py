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

- the request path records facts, not spans (``_Trace``): ids from
  ``random.getrandbits``, ``time.time_ns``, and per try a tuple of what answered (status,
  outcome, kind, the model the answer named, read once with the model audit). It writes
  W3C ``traceparent`` itself (``canary.observe.trace_context``) and queues the call whole
  when it ends: no lock, no SDK object, no span;
- one thread (``canary.observe.otlp_export``) drains the queue in batches and writes each
  call's spans in the protobuf wire format. Calls alike share all but their ids, times
  and token counts: the rest (name, attributes, status) is a template, encoded once per
  shape from the call's spans (``_Trace.spans``, the shapes made by ``call_shape``...)
  and kept in a bounded dict (``OtelTracing.layouts``). A call of one try that answered
  (most calls) is then one ``struct`` pack of its ids, times and counts
  (``Encoder.one_try``); the other shapes cost two packs a span. It posts the batches,
  configured by the same ``OTEL_BSP_*`` and ``OTEL_EXPORTER_OTLP_*`` variables as the
  SDK's;
- the SDK still gives the resource (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
  its detectors), ``tracestate`` validation and any non-W3C propagator, and
  ``tracing_with`` hands the same spans to any SDK span processor (``canary.observe.otel_sdk``).

Split so, a call's spans cost about a tenth of that, request path and export thread
together. Counted in instructions per plain call through ``canary serve``
(``bench/instructions.py``): about 514k off and 561k on (1.09x), a little more than half
of the difference on the request path (it was 619k when the request path built the
spans, 582k when the thread wrote span by span).
The price: what the SDK offers beyond that is not there. No span of canary's is visible
to code running inside it through the OpenTelemetry API (there is none to see it), span
limits do not apply (a span has at most 16 attributes), samplers are the standard ones
(``canary.observe.trace_context``), and credential-provider entry points are not read.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry.sdk.resources import Resource

from canary.config.model import Backend
from canary.observe.otel_shapes import (
    OPERATIONS,
    Answer,
    Shapes,
    Tokens,
    answered_by,
    call_shape,
    keep,
    mark_answer,
    server,
    try_shape,
)
from canary.observe.otlp import (
    CLIENT,
    SERVER,
    Encoder,
    Finished,
    Fixed,
    Layout,
    SpanRecord,
)
from canary.observe.otlp_export import Batcher, OtlpHttp
from canary.observe.trace_context import (
    TRACEPARENT_FORMAT,
    Parent,
    Propagation,
    Sampler,
    propagation,
    sampler,
)
from canary.observe.tracing import ExchangeView, SessionView, Trace, Tracing, TryView

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor

_bits = random.getrandbits
SHUTDOWN_S = 5.0  # the last export when the server stops; the exporter's own timeout is 10 s


class Sink(Protocol):
    """Where finished spans go: the export queue, or an SDK span processor."""

    def put(self, item: Finished) -> None: ...
    def close(self, timeout_s: float) -> None: ...


class OtelTracing(Tracing):
    """Tracing on: spans recorded as plain data into ``sink``, sampled and propagated as
    the standard variables say."""

    __slots__ = (
        "answer_shapes",
        "call_shapes",
        "every_root",
        "fields",
        "last_shapes",
        "layouts",
        "propagation",
        "sampler",
        "sink",
        "try_shapes",
        "w3c",
    )
    enabled = True

    def __init__(self, sink: Sink, propagation: Propagation, sampler: Sampler) -> None:
        self.sink, self.propagation, self.sampler = sink, propagation, sampler
        self.fields = propagation.fields  # the headers of trace context: a try's own
        # W3C headers written inline, and a trace of no parent sampled without asking.
        self.w3c = type(propagation) is Propagation
        self.every_root = sampler.bound >= 1 << 64
        # Shapes of spans (otel_shapes.call_shape...) and the layouts encoded from them
        # (_Trace.encode): touched by the thread that makes spans only (the exporter's; the
        # caller's for an SDK sink).
        self.call_shapes: Shapes = {}
        self.try_shapes: Shapes = {}
        self.last_shapes: Shapes = {}
        self.answer_shapes: Shapes = {}
        self.layouts: dict[tuple[Any, ...], Layout] = {}

    def begin(self, exchange: ExchangeView) -> Trace:
        return _Trace(self, exchange)

    def context(self, hdrs: Mapping[bytes, bytes]) -> tuple[int, Parent | None, bool]:
        """A call's trace id, the client's span when its headers carry one, and whether
        the trace is sampled."""
        parent = self.propagation.extract(hdrs) if hdrs else None
        trace_id = parent.trace_id if parent is not None else _bits(128) or 1
        return trace_id, parent, self.sampler.sampled(trace_id, parent)

    def root(
        self, hdrs: dict[bytes, bytes], name: str, attributes: dict[str, Any], start: int
    ) -> tuple[SpanRecord, bool]:
        """A call's SERVER span, under the client's when its headers carry one; sampled?"""
        trace_id, parent, sampled = self.context(hdrs)
        span_id = _bits(64) or 1  # 0 is no span; the SDK draws again, the odds are 2**-64
        if parent is None:
            span = SpanRecord((trace_id, span_id, 0), name, SERVER, attributes, start)
        else:
            ids = (trace_id, span_id, parent.span_id)
            span = SpanRecord(ids, name, SERVER, attributes, start)
            span.remote, span.state = True, parent.state
        return span, sampled

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
            attributes["server.address"] = server(t.backend.base_url)[0]
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


# A try's span as the request path leaves it: span id, start, end, backend, whether it is
# a fallback, its answer (None: never accounted, a fault ended the call) and token counts.
TrySpan = tuple[int, int, int, Backend, bool, Answer | None, Tokens]


class _Trace(Trace):
    """One call's trace, recorded as facts (ids, times, the tries, what answered) and
    queued whole when the call ends. The exporter's thread writes its spans (``encode``):
    what calls alike share is encoded once per shape (``OtelTracing.layouts``, made from
    ``spans`` on a miss), so a span costs its ids, times and token counts."""

    __slots__ = (
        "answered",
        "call",
        "current",
        "current_id",
        "current_start",
        "done",
        "end",
        "headers",
        "last",
        "parent",
        "sampled",
        "size",
        "span_id",
        "start",
        "strip",
        "trace_id",
        "tracing",
    )

    def __init__(self, tracing: OtelTracing, exchange: ExchangeView) -> None:
        self.tracing, hdrs = tracing, exchange.hdrs
        self.parent: Parent | None
        if tracing.fields.isdisjoint(hdrs):  # no trace context from the client (most calls)
            self.trace_id, self.parent, self.strip = _bits(128) or 1, None, False
            self.sampled = tracing.every_root or tracing.sampler.sampled(self.trace_id, None)
        else:  # the client's requests upstream lose its own
            self.trace_id, self.parent, self.sampled = tracing.context(hdrs)
            self.strip = True
        self.span_id = _bits(64) or 1
        self.start = time.time_ns()
        self.headers: list[tuple[bytes, bytes]] = []
        # The try begun and not ended yet (tries follow one another), its span id and start.
        self.current: TryView | None = None
        self.done: list[TrySpan] = []
        self.answered: TryView | None = None  # the last try accounted, its span done[-1]

    def try_began(self, t: TryView) -> None:
        span_id, parent, tracing = _bits(64) or 1, self.parent, self.tracing
        state = parent.state if parent is not None else ""
        if tracing.w3c and not state:
            flags = b"01" if self.sampled else b"00"
            value = TRACEPARENT_FORMAT % (self.trace_id, span_id, flags)
            self.headers = [(b"traceparent", value)]
        else:
            self.headers = tracing.propagation.inject(self.trace_id, span_id, self.sampled, state)
        if self.sampled:
            now = time.time_ns()
            if self.current is not None:
                self._unended(now)
            self.current, self.current_id, self.current_start = t, span_id, now

    def outgoing(self, headers: list[tuple[bytes, bytes]]) -> None:
        if self.headers:
            if self.strip:
                fields = self.tracing.propagation.fields
                headers[:] = [h for h in headers if h[0] not in fields]
            headers.extend(self.headers)

    def try_ended(self, t: TryView) -> None:
        if t is self.current:
            self.current = None
            answer = (t.status, t.outcome, t.kind, t.answered_model())
            self.done.append((self.current_id, self.current_start, time.time_ns(), t.backend,
                              t.origin is not None, answer, t.tokens))  # fmt: skip
            self.answered = t  # the call's span tells the answer the client got

    def ended(self, exchange: ExchangeView) -> None:
        self.end = now = time.time_ns()
        if self.current is not None:
            self._unended(now)
        if not self.sampled:
            return
        scope, route, body = exchange.scope, exchange.route, exchange.body
        model = body.accounted_model() if body is not None else None
        self.call = (route.name if route is not None else "", scope["method"], scope["path"],
                     model)  # fmt: skip
        last = exchange.last
        self.last: tuple[Backend, bool, Answer, Tokens] | None = None
        if last is not None:
            answer, tokens = None, last.tokens
            if last is self.answered:  # as its span says it (final)
                _, _, _, _, _, answer, tokens = self.done[-1]
            if answer is None:
                answer = (last.status, last.outcome, last.kind, last.answered_model())
            self.last = (last.backend, exchange.first is not None, answer, tokens)
        self.answered = None  # the Try goes with the exchange
        self.size = len(self.done) + 1  # its spans: the tries', the call's
        self.tracing.sink.put(self)

    def _unended(self, now: int) -> None:
        """The try begun last never ended (a fault ended its call): a span with no answer."""
        t, self.current = self.current, None
        if t is not None:
            self.done.append((self.current_id, self.current_start, now, t.backend,
                              t.origin is not None, None, None))  # fmt: skip

    def encode(self, encoder: Encoder, out: list[bytes]) -> None:
        """Its spans onto ``out``, from its shape's ``Layout`` (made on a miss). A layout is
        keyed by all its templates depend on: the call, and each try's backend (with the
        model after its ``model_map``), fallback and answer, and the last one's."""
        call, done, last, parent = self.call, self.done, self.last, self.parent
        state = parent.state if parent is not None else ""
        if len(done) == 1 and last is not None and not state:
            t = done[0]
            backend = t[3]
            if last[0] is backend and last[2] is t[5] and last[3] is t[6]:  # most calls:
                # one try, whose answer and counts are the call's: written in one pack
                model = call[3]
                upstream = backend.model_map.get(model) if backend.model_map and model else None
                key = (call, parent is not None, backend.name, backend.base_url, upstream,
                       last[1], t[4], t[5])  # fmt: skip
                layout = self.tracing.layouts.get(key) or self._layout(encoder, key, True)
                parent_id = parent.span_id if parent is not None else 0
                ids = (self.trace_id, t[0], self.span_id, parent_id)
                encoder.one_try(out, layout, ids, (t[1], t[2], self.start, self.end), t[6])
                return
        model = call[3]
        shape: list[Any] = [len(done), call, parent is not None]  # never a key of the above
        if last is not None:
            shape += (last[0].name, last[0].base_url, last[1], last[2])
        for t in done:
            backend = t[3]
            upstream = backend.model_map.get(model) if backend.model_map and model else None
            shape += (backend.name, backend.base_url, upstream, t[4], t[5])
        frozen = tuple(shape)
        found = (self.tracing.layouts.get(frozen) or self._layout(encoder, frozen, False)).templates
        span_id, tokens = self.span_id, last[3] if last is not None else None
        if parent is None:
            span: Fixed = (span_id, 0, SERVER, self.start, self.end, found[-1], tokens)
        else:
            span = (span_id, parent.span_id, SERVER, self.start, self.end, found[-1], tokens)
        tries = zip(done, found, strict=False)
        spans = (*((t[0], span_id, CLIENT, t[1], t[2], f, t[6]) for t, f in tries), span)
        encoder.trace(out, self.trace_id, state, spans)

    def _layout(self, encoder: Encoder, key: tuple[Any, ...], one_try: bool) -> Layout:
        """The layout of its shape, made from its spans when first seen."""
        templates = [encoder.template(span) for span in self.spans()]
        return keep(self.tracing.layouts, key, Layout(templates, self.parent is not None, one_try))

    def spans(self) -> list[SpanRecord]:
        """Its spans, made on the exporter's thread (the shapes are its own)."""
        tracing, trace_id, span_id = self.tracing, self.trace_id, self.span_id
        key = self.call
        name, operation, block = tracing.call_shapes.get(key) or call_shape(
            tracing.call_shapes, key
        )
        route, model, parent = key[0], key[3], self.parent
        state = parent.state if parent is not None else ""
        out = []
        for try_id, start, end, backend, fallback, answer, tokens in self.done:
            upstream = backend.model_map.get(model, model) if model is not None else None
            shape_key = (name, route, operation, upstream, backend.name, backend.base_url,
                         fallback)  # fmt: skip
            shape = tracing.try_shapes.get(shape_key) or try_shape(tracing.try_shapes, shape_key)
            span = SpanRecord((trace_id, try_id, span_id), shape[0], CLIENT, {}, start)
            span.end, span.state, span.shared = end, state, shape[1]
            if answer is not None:
                mark_answer(span, answer, tokens, tracing.answer_shapes)
            out.append(span)
        ids = (trace_id, span_id, parent.span_id if parent is not None else 0)
        span = SpanRecord(ids, name, SERVER, {}, self.start)
        span.end, span.state, span.remote, span.shared = (
            self.end,
            state,
            parent is not None,
            (block,),
        )
        if self.last is not None:
            backend, fallback, answer, tokens = self.last
            lasts, last_key = tracing.last_shapes, (backend.name, backend.base_url, fallback)
            span.shared += (lasts.get(last_key) or answered_by(lasts, last_key),)
            mark_answer(span, answer, tokens, tracing.answer_shapes)
        out.append(span)
        return out
