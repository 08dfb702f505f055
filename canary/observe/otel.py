"""The OpenTelemetry side of ``canary.observe.tracing``: imported only when tracing is on.

A call is one SERVER span named per the GenAI semantic conventions (``chat gpt-4.1``; a
path without a GenAI operation: ``POST <route>``; a call refused before routing: its
operation or method, the refusal's code as ``error.type``), continuing the client's
trace when it sent a ``traceparent``. Each call to a backend (its retries included) is a CLIENT span
under it, and the request that leaves carries that span's context in place of the
client's, so the provider's own spans hang under the try that called it.

Attributes (SPEC §12): ``gen_ai.operation.name``, ``gen_ai.request.model`` (the try's:
after ``model_map``), ``gen_ai.response.model`` (what the answer named),
``gen_ai.usage.input_tokens`` / ``output_tokens``, ``server.address`` / ``server.port``
(the backend), ``http.response.status_code``, ``error.type`` (the failure kind, an
outcome, or the status of a refused call), and ``canary.route``, ``canary.backend``,
``canary.fallback`` (the baseline answered after this backend failed; on a try: it is
that second call), ``canary.outcome``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from canary.observe.tracing import ExchangeView, SessionView, Trace, Tracing, TryView
from canary.safety.equivalence import echoed_model

SHUTDOWN_S = 5.0  # the last export when the server stops; the exporter's own timeout is 10 s

# GenAI operation names (semantic conventions) of the paths that have one.
OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/responses": "chat",
    "/v1/messages": "chat",
    "/v1/completions": "text_completion",
    "/v1/embeddings": "embeddings",
}


class OtelTracing(Tracing):
    """Tracing on: a tracer from ``provider``, and the header names its propagator uses."""

    __slots__ = ("fields", "provider", "tracer")
    enabled = True

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("canary")
        self.fields = frozenset(f.lower().encode() for f in propagate.get_global_textmap().fields)

    def begin(self, exchange: ExchangeView) -> Trace:
        return _Trace(self, exchange)

    def refused(self, exchange: ExchangeView, status: int, code: str) -> None:
        """One span, named by the operation (its model may not even have been read)."""
        scope = exchange.scope
        carrier = _carrier(exchange.hdrs, self.fields)
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
        span = self.tracer.start_span(
            operation or scope["method"],
            context=propagate.extract(carrier) if carrier else None,
            kind=SpanKind.SERVER,
            attributes=attributes,
        )
        span.set_status(Status(StatusCode.ERROR, code))
        span.end()

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
                error = t.kind or t.outcome
        end = time.time_ns()
        carrier = _carrier(session.hdrs, self.fields)
        span = self.tracer.start_span(
            name,
            context=propagate.extract(carrier) if carrier else None,
            kind=SpanKind.SERVER,
            attributes=attributes,
            start_time=end - int(seconds * 1e9),
        )
        if error is not None:
            span.set_attribute("error.type", error)
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=end)

    async def aclose(self) -> None:
        """Flush and stop the exporter, in a thread: its last POST may be slow."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.to_thread(self.provider.shutdown), SHUTDOWN_S)


def otlp_tracing(environ: Mapping[str, str]) -> OtelTracing:
    """Spans batched to OTLP over HTTP, everything set by the standard ``OTEL_*`` variables
    (endpoint, headers, timeout, sampler, batch sizes, resource); service name ``canary``."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return tracing_with(BatchSpanProcessor(OTLPSpanExporter()), environ)


def tracing_with(processor: SpanProcessor, environ: Mapping[str, str]) -> OtelTracing:
    """Tracing through ``processor`` (tests pass a simple one over an in-memory exporter)."""
    named = environ.get("OTEL_SERVICE_NAME") or "service.name=" in environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    resource = Resource.create({} if named else {"service.name": "canary"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(processor)
    return OtelTracing(provider)


class _Trace(Trace):
    """One call's spans."""

    __slots__ = (
        "context",
        "headers",
        "model",
        "name",
        "operation",
        "route",
        "span",
        "tracing",
        "tries",
    )

    def __init__(self, tracing: OtelTracing, exchange: ExchangeView) -> None:
        self.tracing = tracing
        scope, route = exchange.scope, exchange.route
        carrier = _carrier(exchange.hdrs, tracing.fields)
        parent = propagate.extract(carrier) if carrier else None
        self.operation = OPERATIONS.get(scope["path"])
        self.model = exchange.body.accounted_model() if exchange.body is not None else None
        route_name = self.route = route.name if route is not None else ""
        attributes: dict[str, Any] = {
            "canary.route": route_name,
            "http.request.method": scope["method"],
            "url.path": scope["path"],
        }
        if self.operation is not None:
            attributes["gen_ai.operation.name"] = self.operation
            self.name = f"{self.operation} {self.model}" if self.model else self.operation
        else:
            self.name = f"{scope['method']} {route_name}"
        if self.model is not None:
            attributes["gen_ai.request.model"] = self.model
        self.span = tracing.tracer.start_span(
            self.name, context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
        self.context = trace.set_span_in_context(self.span, parent)
        self.tries: dict[TryView, Span] = {}
        self.headers: list[tuple[bytes, bytes]] = []

    def try_began(self, t: TryView) -> None:
        backend = t.backend
        host, port = _server(backend.base_url)
        attributes: dict[str, Any] = {
            "canary.route": self.route,
            "canary.backend": backend.name,
            "canary.fallback": t.origin is not None,
            "server.address": host,
        }
        if port is not None:
            attributes["server.port"] = port
        name = self.name
        if self.operation is not None:
            attributes["gen_ai.operation.name"] = self.operation
        if self.model is not None:
            upstream = backend.model_map.get(self.model, self.model)
            attributes["gen_ai.request.model"] = upstream
            name = f"{self.operation} {upstream}" if self.operation else name
        span = self.tracing.tracer.start_span(
            name, context=self.context, kind=SpanKind.CLIENT, attributes=attributes
        )
        self.tries[t] = span
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        self.headers = [(k.lower().encode(), v.encode("latin-1")) for k, v in carrier.items()]

    def outgoing(self, headers: list[tuple[bytes, bytes]]) -> None:
        if self.headers:
            fields = self.tracing.fields
            headers[:] = [h for h in headers if h[0] not in fields]
            headers.extend(self.headers)

    def try_ended(self, t: TryView) -> None:
        span = self.tries.pop(t, None)
        if span is not None:
            _answer(span, t)
            span.end()

    def ended(self, exchange: ExchangeView) -> None:
        for span in self.tries.values():  # a try the accounting never reached (a fault)
            span.end()
        self.tries.clear()
        last, span = exchange.last, self.span
        if last is not None:
            more = {
                "canary.backend": last.backend.name,
                "canary.fallback": exchange.first is not None,
                "server.address": _server(last.backend.base_url)[0],
            }
            _answer(span, last, more)
        span.end()


def _answer(span: Span, t: TryView, more: dict[str, Any] | None = None) -> None:
    """What a try's answer said, on its span (or on the call's, for the one the client got);
    set at once: each ``set_attribute`` takes the span's lock."""
    attributes: dict[str, Any] = more or {}
    attributes["canary.outcome"] = t.outcome
    if t.status:
        attributes["http.response.status_code"] = t.status
    if t.head is not None and (model := echoed_model(t.head)) is not None:
        attributes["gen_ai.response.model"] = model
    if t.tokens is not None:
        attributes["gen_ai.usage.input_tokens"] = t.tokens[0]
        attributes["gen_ai.usage.output_tokens"] = t.tokens[1]
    error = _error_type(t)
    if error is not None:
        attributes["error.type"] = error
        span.set_status(Status(StatusCode.ERROR, error))
    span.set_attributes(attributes)


def _carrier(hdrs: dict[bytes, bytes], fields: frozenset[bytes]) -> dict[str, str]:
    """The client's trace context headers (``traceparent``, ``tracestate``...), as text."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in hdrs.items() if k in fields}


def _error_type(t: TryView) -> str | None:
    if t.outcome != "ok":
        return t.kind or t.outcome
    return str(t.status) if t.status >= 400 else None


@functools.lru_cache(maxsize=64)
def _server(base_url: str) -> tuple[str, int | None]:
    parts = urlsplit(base_url)
    return parts.hostname or "", parts.port
