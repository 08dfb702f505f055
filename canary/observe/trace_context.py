"""Trace context for ``canary.observe.otel``: the client's parent, the headers each
upstream call carries, and whether a trace is sampled, read from the standard variables.

``OTEL_PROPAGATORS`` at its default (``tracecontext,baggage``, or any mix of the two) is
W3C Trace Context, read and written here directly: one regex (the SDK's own) per call
and a formatted header per try, where the SDK's propagators build a ``Context``, a
``NonRecordingSpan`` and a carrier dict each way. Any other propagator (b3, jaeger,
``none``...) goes through the SDK's global propagator, at its price. As before, the
fields a propagator owns (``baggage`` included) are never forwarded as the client sent
them: the try's own context replaces them.

``OTEL_TRACES_SAMPLER``: ``always_on``, ``always_off``, ``traceidratio`` and their
``parentbased_`` forms, with ``OTEL_TRACES_SAMPLER_ARG``, decided as the SDK does (the
ratio on the trace id's low 64 bits, a remote parent's sampled flag followed); anything
else is the default, ``parentbased_always_on`` (the SDK warns and does the same).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

import structlog

log = structlog.get_logger("canary.observe.trace_context")

# The SDK's (opentelemetry.trace.propagation.tracecontext), on the header as text.
TRACEPARENT = re.compile(
    r"^[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:(-.*)|[ \t]*)$"
)
MAX_TRACEPARENT, MAX_TRACESTATE = 512, 512
# A try's traceparent: trace id, span id, and flags (b"01" sampled, b"00" not).
TRACEPARENT_FORMAT = b"00-%032x-%016x-%s"
W3C = frozenset({"tracecontext", "baggage"})
_LIMIT = 1 << 64


class Parent(NamedTuple):
    """The client's span: its ids, trace flags, and tracestate as its header reads."""

    trace_id: int
    span_id: int
    flags: int
    state: str


def parse_traceparent(traceparent: str, tracestate: str | None) -> Parent | None:
    """W3C ``traceparent`` (and ``tracestate``) as the SDK's propagator reads them."""
    if len(traceparent) > MAX_TRACEPARENT:
        return None
    match = TRACEPARENT.search(traceparent)
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if trace_id == "0" * 32 or span_id == "0" * 16 or version == "ff":
        return None
    if version == "00" and rest:
        return None
    state = ""
    if tracestate is not None and len(tracestate) <= MAX_TRACESTATE:
        from opentelemetry.trace.span import TraceState  # validated as the SDK would

        state = TraceState.from_header([tracestate]).to_header()
    return Parent(int(trace_id, 16), int(span_id, 16), int(flags, 16), state)


class Propagation:
    """W3C Trace Context: ``extract`` the client's parent from its headers, ``inject`` a
    try's context as the headers of its request; ``fields`` the names a try replaces."""

    def __init__(self, fields: frozenset[bytes]) -> None:
        self.fields = fields

    def extract(self, hdrs: Mapping[bytes, bytes]) -> Parent | None:
        traceparent = hdrs.get(b"traceparent")
        if traceparent is None:
            return None
        tracestate = hdrs.get(b"tracestate")
        return parse_traceparent(
            traceparent.decode("latin-1"),
            tracestate.decode("latin-1") if tracestate is not None else None,
        )

    def inject(
        self, trace_id: int, span_id: int, sampled: bool, state: str
    ) -> list[tuple[bytes, bytes]]:
        out = [
            (
                b"traceparent",
                TRACEPARENT_FORMAT % (trace_id, span_id, b"01" if sampled else b"00"),
            )
        ]
        if state:
            out.append((b"tracestate", state.encode("latin-1")))
        return out


class SdkPropagation(Propagation):
    """Any other ``OTEL_PROPAGATORS``: the SDK's global propagator, its contexts built."""

    def extract(self, hdrs: Mapping[bytes, bytes]) -> Parent | None:
        from opentelemetry import propagate, trace

        carrier = {
            k.decode("latin-1"): v.decode("latin-1") for k, v in hdrs.items() if k in self.fields
        }
        if not carrier:
            return None
        parent = trace.get_current_span(propagate.extract(carrier)).get_span_context()
        if not parent.is_valid:
            return None
        state = parent.trace_state.to_header() if parent.trace_state else ""
        return Parent(parent.trace_id, parent.span_id, int(parent.trace_flags), state)

    def inject(
        self, trace_id: int, span_id: int, sampled: bool, state: str
    ) -> list[tuple[bytes, bytes]]:
        from opentelemetry import propagate, trace

        context = trace.SpanContext(
            trace_id,
            span_id,
            is_remote=False,
            trace_flags=trace.TraceFlags(1 if sampled else 0),
            trace_state=trace.TraceState.from_header([state]) if state else None,
        )
        carrier: dict[str, str] = {}
        propagate.inject(
            carrier, context=trace.set_span_in_context(trace.NonRecordingSpan(context))
        )
        return [(k.lower().encode(), v.encode("latin-1")) for k, v in carrier.items()]


def propagation(environ: Mapping[str, str]) -> Propagation:
    """What ``OTEL_PROPAGATORS`` asks for (the SDK's global propagator reads it too)."""
    from opentelemetry import propagate

    fields = frozenset(f.lower().encode() for f in propagate.get_global_textmap().fields)
    names = {
        n.strip().lower()
        for n in environ.get("OTEL_PROPAGATORS", "tracecontext,baggage").split(",")
    }
    if "tracecontext" in names and names <= W3C:
        return Propagation(fields)
    return SdkPropagation(fields)


class Sampler:
    """Which traces are recorded: a remote parent's flag when ``parent_based``, else the
    trace id's low 64 bits under ``bound`` (``2**64``: always, 0: never)."""

    __slots__ = ("bound", "parent_based")

    def __init__(self, bound: int, parent_based: bool) -> None:
        self.bound, self.parent_based = bound, parent_based

    def sampled(self, trace_id: int, parent: Parent | None) -> bool:
        if parent is not None and self.parent_based:
            return bool(parent.flags & 1)
        return (trace_id & (_LIMIT - 1)) < self.bound


def sampler(environ: Mapping[str, str]) -> Sampler:
    """``OTEL_TRACES_SAMPLER`` and its argument, as the SDK reads them."""
    name = environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    root = name.removeprefix("parentbased_")
    if root not in ("always_on", "always_off", "traceidratio"):
        log.warning("traces.unknown_sampler", sampler=name, using="parentbased_always_on")
        return Sampler(_LIMIT, True)
    rate = {"always_on": 1.0, "always_off": 0.0}.get(root)
    if rate is None:
        try:
            rate = float(environ.get("OTEL_TRACES_SAMPLER_ARG", ""))
        except ValueError:
            rate = 1.0
        if not 0.0 <= rate <= 1.0:
            rate = 1.0
    return Sampler(round(rate * _LIMIT), name != root)
