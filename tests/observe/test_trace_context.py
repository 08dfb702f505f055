"""Trace context read and written by canary itself: the same parent, the same headers and
the same sampling decisions as the SDK's propagator and samplers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from canary.observe.trace_context import (
    Parent,
    Propagation,
    SdkPropagation,
    parse_traceparent,
    propagation,
    sampler,
)

W3C = TraceContextTextMapPropagator()
FIELDS = frozenset({b"traceparent", b"tracestate", b"baggage"})
_HEX = "0123456789abcdef"
_TRACEPARENT = st.one_of(
    st.text(max_size=70),
    st.builds(
        lambda pad, v, t, s, f, rest: f"{pad}{v}-{t}-{s}-{f}{rest}",
        st.sampled_from(["", " ", "\t"]),
        st.sampled_from(["00", "01", "ff", "0g", "cc"]),
        st.one_of(
            st.text(_HEX, min_size=32, max_size=32),
            st.just("0" * 32),
            st.text(_HEX + "ABCX", min_size=31, max_size=33),
        ),
        st.one_of(st.text(_HEX, min_size=16, max_size=16), st.just("0" * 16)),
        st.sampled_from(["00", "01", "03", "ff", "zz", "1"]),
        st.sampled_from(["", " ", "-", "-x", "-00\n", "\n", "\t "]),
    ),
)
_TRACESTATE = st.one_of(
    st.none(),
    st.text(max_size=40),
    st.sampled_from(["congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", "a=b" * 200]),
)


def _sdk_parent(traceparent: str, tracestate: str | None) -> Parent | None:
    carrier = {"traceparent": traceparent}
    if tracestate is not None:
        carrier["tracestate"] = tracestate
    context = trace.get_current_span(W3C.extract(carrier)).get_span_context()
    if not context.is_valid:
        return None
    state = context.trace_state.to_header() if context.trace_state else ""
    return Parent(context.trace_id, context.span_id, int(context.trace_flags), state)


@settings(max_examples=300, deadline=None)
@given(traceparent=_TRACEPARENT, tracestate=_TRACESTATE)
def test_a_clients_headers_give_the_parent_the_sdks_propagator_reads(
    traceparent: str, tracestate: str | None
) -> None:
    """Valid or not, with or without a tracestate: the same parent as the SDK, or none."""
    assert parse_traceparent(traceparent, tracestate) == _sdk_parent(traceparent, tracestate)
    hdrs = {b"traceparent": traceparent.encode("utf-8", "replace")}
    assert Propagation(FIELDS).extract({}) is None
    fast, sdk = Propagation(FIELDS).extract(hdrs), SdkPropagation(FIELDS).extract(hdrs)
    assert fast == sdk


@given(
    trace_id=st.integers(1, 2**128 - 1),
    span_id=st.integers(1, 2**64 - 1),
    sampled=st.booleans(),
    state=st.sampled_from(["", "congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"]),
)
def test_a_tries_headers_are_the_ones_the_sdks_propagator_writes(
    trace_id: int, span_id: int, sampled: bool, state: str
) -> None:
    """traceparent (and tracestate when the trace has one), byte for byte."""
    fast = Propagation(FIELDS).inject(trace_id, span_id, sampled, state)
    assert fast == SdkPropagation(FIELDS).inject(trace_id, span_id, sampled, state)
    assert parse_traceparent(fast[0][1].decode(), state) == Parent(
        trace_id, span_id, int(sampled), state
    )


@pytest.mark.parametrize(
    ("propagators", "fast"),
    [
        (None, True),
        ("tracecontext", True),
        ("baggage, tracecontext", True),
        ("b3", False),
        ("none", False),
        ("baggage", False),
    ],
)
def test_w3c_propagators_are_read_directly_any_other_through_the_sdk(
    propagators: str | None, fast: bool
) -> None:
    """The default (tracecontext, baggage) needs no SDK context; anything else does."""
    environ = {} if propagators is None else {"OTEL_PROPAGATORS": propagators}
    assert (type(propagation(environ)) is Propagation) is fast


SAMPLERS = [
    ({}, "parentbased_always_on"),
    ({"OTEL_TRACES_SAMPLER": "always_on"}, "always_on"),
    ({"OTEL_TRACES_SAMPLER": "always_off"}, "always_off"),
    ({"OTEL_TRACES_SAMPLER": "parentbased_always_off"}, "parentbased_always_off"),
    ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}, "0.25"),
    ({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.5"}, "pb"),
    ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "x"}, "bad arg"),
    ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, "out of range"),
    ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, "unknown"),
]


@pytest.mark.parametrize(("environ", "label"), SAMPLERS, ids=[s[1] for s in SAMPLERS])
def test_sampling_decides_as_the_sdks_sampler_from_the_same_variables(
    environ: dict[str, str], label: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Roots by trace id, children of a remote parent by its flag (parent-based), for the
    samplers the variables can name; an unknown one is the default."""
    for name in ("OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    sdk, ours = TracerProvider().sampler, sampler(environ)
    ids = [1, 2**63, 2**64 - 1, 2**64, 2**126 + 12345, 0x0AF7651916CD43DD8448EB211C80319C]
    ids += [(2**64 // 8) * k + 7 for k in range(8)]
    for trace_id in ids:
        for flags in (None, 0, 1):
            parent, context = None, None
            if flags is not None:
                parent = Parent(trace_id, 99, flags, "")
                remote = trace.SpanContext(trace_id, 99, True, trace.TraceFlags(flags))
                context = trace.set_span_in_context(trace.NonRecordingSpan(remote))
            decision = sdk.should_sample(context, trace_id, "chat").decision.is_sampled()  # type: ignore[no-untyped-call]
            assert ours.sampled(trace_id, parent) is decision, (trace_id, flags)
