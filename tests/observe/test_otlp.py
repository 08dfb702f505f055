"""The OTLP encoding of canary's spans: what opentelemetry-proto decodes from it is what
it decodes from the SDK's own encoding of the same spans."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource

from canary.observe.otel_sdk import readable
from canary.observe.otlp import CLIENT, SERVER, Encoder, Shared, SpanRecord, varint

_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
_SCALAR = st.one_of(
    _TEXT,
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
)
_ATTRIBUTES = st.dictionaries(_TEXT, _SCALAR, max_size=16)
_STATE = st.sampled_from(["", "congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"])


@st.composite
def _spans(draw: st.DrawFn) -> SpanRecord:
    ids = (
        draw(st.integers(1, 2**128 - 1)),
        draw(st.integers(1, 2**64 - 1)),
        draw(st.one_of(st.just(0), st.integers(1, 2**64 - 1))),
    )
    kind = draw(st.sampled_from([SERVER, CLIENT]))
    start = draw(st.integers(0, 2**64 - 1))
    items = list(draw(_ATTRIBUTES).items())  # some shared (in up to 3 blocks), the rest its own
    cuts = sorted(draw(st.lists(st.integers(0, len(items)), max_size=3)))
    bounds = list(zip([0, *cuts], [*cuts, len(items)], strict=True))
    span = SpanRecord(ids, draw(_TEXT), kind, dict(items[bounds[-1][0] :]), start)
    span.shared = tuple(Shared(dict(items[a:b])) for a, b in bounds[:-1])
    span.end = draw(st.integers(0, 2**64 - 1))
    span.remote = draw(st.booleans()) and span.parent_id != 0
    span.state = draw(_STATE)
    span.error = draw(st.one_of(st.none(), _TEXT))
    return span


_RESOURCE = st.dictionaries(
    _TEXT.filter(bool),  # the SDK's Resource drops an empty key
    st.one_of(_SCALAR, st.lists(_TEXT, max_size=3).map(tuple)),
    min_size=1,
    max_size=6,
)


@settings(max_examples=150, deadline=None)
@given(spans=st.lists(_spans(), min_size=1, max_size=12), attributes=_RESOURCE)
def test_a_batch_decodes_as_the_sdks_encoding_of_the_same_spans(
    spans: list[SpanRecord], attributes: dict[str, Any]
) -> None:
    """Ids, names, kinds, times, attributes of every type (shared and a span's own),
    status, tracestate, the parent's remote flag and the resource: field for field what
    the SDK would send."""
    resource = Resource(attributes)
    encoder = Encoder(resource.attributes)
    for _ in range(2):  # the second time through the caches of encoded pairs and names
        ours = ExportTraceServiceRequest.FromString(encoder.encode(spans))
        sdk = [readable(s, resource) for s in spans]
        assert ours == ExportTraceServiceRequest.FromString(encode_spans(sdk).SerializeToString())


def test_an_undecodable_string_is_replaced_not_a_failed_batch() -> None:
    """A lone surrogate (no UTF-8 has it) in a value or a name still encodes."""
    span = SpanRecord((1, 2, 0), "chat \ud800", SERVER, {"gen_ai.request.model": "x\udfff"}, 5)
    decoded = ExportTraceServiceRequest.FromString(Encoder({}).encode([span]))
    (got,) = decoded.resource_spans[0].scope_spans[0].spans
    assert got.name == "chat ?"
    assert got.attributes[0].value.string_value == "x?"


@given(st.integers(0, 2**64 - 1))
def test_varints_decode_to_their_value(n: int) -> None:
    """The base-128 varint of any uint64 reads back (a negative int64 is its two's
    complement, as protobuf writes it)."""
    raw, value, shift = varint(n), 0, 0
    for i, byte in enumerate(raw):
        value |= (byte & 0x7F) << shift
        shift += 7
        assert (byte & 0x80 == 0) == (i == len(raw) - 1)
    assert value == n
    assert varint(-1) == varint(2**64 - 1)
