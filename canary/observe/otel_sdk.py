"""Spans of ``canary.observe.otel`` handed to an OpenTelemetry SDK span processor.

The exporter canary runs is its own (``canary.observe.otlp_export``); this sink lets any
SDK processor and exporter take the same spans instead, as ``ReadableSpan`` objects built
when each span ends, on the caller's thread, at the SDK's price. Tests use it with an
in-memory exporter to read spans as the SDK would have made them.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from canary.observe.otlp import SERVER, Finished, SpanRecord

SCOPE = InstrumentationScope("canary")
SAMPLED = TraceFlags(TraceFlags.SAMPLED)


class SdkSink:
    """Each finished span to ``processor.on_end``, under ``resource``."""

    def __init__(self, processor: SpanProcessor, resource: Resource) -> None:
        self.processor, self.resource = processor, resource

    def put(self, item: Finished) -> None:
        for span in item.spans():
            self.processor.on_end(readable(span, self.resource))

    def close(self, timeout_s: float) -> None:
        self.processor.shutdown()


def readable(span: SpanRecord, resource: Resource) -> ReadableSpan:
    """``span`` as the SDK would have recorded it."""
    state = TraceState.from_header([span.state]) if span.state else TraceState()
    context = SpanContext(span.trace_id, span.span_id, False, SAMPLED, state)
    parent = None
    if span.parent_id:
        parent = SpanContext(span.trace_id, span.parent_id, span.remote, SAMPLED, state)
    status = (
        Status(StatusCode.UNSET) if span.error is None else Status(StatusCode.ERROR, span.error)
    )
    attributes: dict[str, Any] = {}
    for block in span.shared:
        attributes.update(block.values)
    attributes.update(span.attributes)
    return ReadableSpan(
        name=span.name,
        context=context,
        parent=parent,
        resource=resource,
        attributes=attributes,
        kind=SpanKind.SERVER if span.kind == SERVER else SpanKind.CLIENT,
        status=status,
        start_time=span.start,
        end_time=span.end,
        instrumentation_scope=SCOPE,
    )
