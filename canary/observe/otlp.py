"""Finished spans as plain data, and their OTLP/protobuf encoding (``canary.observe.otel``).

What the request path queues is ``Finished``: a call's facts (``canary.observe.otel``),
or a ``SpanRecord``, one span as plain data (ids, name, kind, times, attribute values);
no SDK object is built on the request path. ``encode`` writes a batch of them as one
``ExportTraceServiceRequest`` in the protobuf wire format
(varints, fixed64 times, length-delimited messages), field by field as
``opentelemetry-proto`` defines them: a generic protobuf runtime would build a message
object per span and per attribute, several times the CPU of the call it describes.
The tests decode this output with ``opentelemetry-proto`` and compare it to the SDK's own
encoding of the same spans.

Most attributes repeat call after call (route, backend, model, status): they come as
``Shared`` blocks, made once per route, backend or answer shape and encoded once. A
call's spans are written from templates (``Encoder.template``: all a span shares with
spans of its shape, kept in a ``Layout``), their ids, times and token counts packed around
them. Most calls are one try that answered: ``Encoder.one_try`` writes both their spans
with one ``struct`` made for the shape (its templates and frames are constants of it),
which costs a third of writing span by span (``Encoder.trace``, for the other shapes); a
``SpanRecord`` (a refused call, a session) is written by ``Encoder.span``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

SERVER, CLIENT = 2, 3  # Span.SpanKind
INPUT, OUTPUT = "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"
ERROR = 2  # Status.StatusCode
# Span.flags: the parent's "is remote" is known (bit 8), and true (bit 9).
HAS_IS_REMOTE, IS_REMOTE = 0x100, 0x200

_CACHE_MAX = 4096
_LOW64 = (1 << 64) - 1
# Span.trace_id, span_id and parent_span_id (fields 1, 2, 4: keys, lengths, ids), big-endian
_ROOT = struct.Struct(">HQQHQ").pack
_CHILD = struct.Struct(">HQQHQHQ").pack
_TIMES = struct.Struct("<BBBQBQ").pack  # kind, start and end: fields 6, 7 (fixed64), 8
_U16 = struct.Struct("<H").pack  # a varint of 2 bytes, its bits laid out by hand
_COUNT_CODES = {1: "B", 2: "H"}  # a count's varint of 1 or 2 bytes, packed inline
# Span.flags (field 16, fixed32), after an unset Status (field 15, empty) or a set one.
_FLAGS = {r: b"\x85\x01" + struct.pack("<I", HAS_IS_REMOTE | (IS_REMOTE if r else 0))
          for r in (False, True)}  # fmt: skip
_UNSET = {r: b"\x7a\x00" + flags for r, flags in _FLAGS.items()}


class Shared:
    """Attributes that many spans carry alike (a route's, a backend's): never changed once
    made, and encoded once, by the first batch that holds one of those spans."""

    __slots__ = ("encoded", "values")

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        self.encoded = b""


class Layout:
    """What the calls of one shape share: their spans' templates (``Encoder.template``:
    the tries', then the call's), whether the call continues a client's span, and, for a
    call of one try, ``Encoder.one_try``'s structs by the lengths of its counts."""

    __slots__ = ("one_try", "packs", "parent", "templates")

    def __init__(self, templates: list[bytes], parent: bool, one_try: bool) -> None:
        self.templates, self.parent, self.one_try = templates, parent, one_try
        self.packs: dict[int, tuple[Any, ...]] = {}


class Finished(Protocol):
    """What the request path queues: a span, or a call's facts the exporter's thread makes
    into spans (``canary.observe.otel``), off the request path."""

    @property
    def size(self) -> int:
        """How many spans it makes."""

    def spans(self) -> Sequence[SpanRecord]:
        """Its spans (for an SDK span processor)."""

    def encode(self, encoder: Encoder, out: list[bytes]) -> None:
        """Its spans as ``ScopeSpans.spans`` fields onto ``out``."""


class SpanRecord:
    """One finished span: ``parent_id`` 0 for a root, ``error`` the status's message when
    it failed (``None``: unset); ``start`` and ``end`` in ns since the epoch. Its
    attributes are those of ``shared``, then its own (no key in two places)."""

    __slots__ = (
        "attributes",
        "end",
        "error",
        "kind",
        "name",
        "parent_id",
        "remote",
        "shared",
        "span_id",
        "start",
        "state",
        "trace_id",
    )

    def __init__(
        self,
        ids: tuple[int, int, int],
        name: str,
        kind: int,
        attributes: dict[str, Any],
        start: int,
    ) -> None:
        self.trace_id, self.span_id, self.parent_id = ids
        self.name, self.kind, self.attributes, self.start = name, kind, attributes, start
        self.end = start
        self.remote = False  # the parent came from the client's traceparent
        self.state = ""  # the trace's tracestate, as its header reads
        self.error: str | None = None
        self.shared: tuple[Shared, ...] = ()

    size = 1

    def spans(self) -> tuple[SpanRecord]:
        return (self,)

    def encode(self, encoder: Encoder, out: list[bytes]) -> None:
        encoder.span(self, out)


def varint(n: int) -> bytes:
    """An unsigned varint; a negative int64 as its 64-bit two's complement (10 bytes)."""
    if 0 <= n < 0x80:
        return _SMALL[n]
    if 0 < n < 0x4000:
        return _U16(n & 0x7F | (n << 1) & 0x7F00 | 0x80)
    if 0 < n < 0x200000:  # a long prompt's token count: its 3 bytes laid out by hand
        return (n & 0x7F | (n << 1) & 0x7F00 | (n << 2) & 0x7F0000 | 0x8080).to_bytes(3, "little")
    n &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = [bytes((i,)) for i in range(0x80)]


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (``tag`` < 16: one byte of key)."""
    return _SMALL[(tag << 3) | 2] + varint(len(payload)) + payload


def any_value(value: Any) -> bytes:
    """The fields of an ``AnyValue``: str, bool, int, float, bytes or a sequence of them."""
    if isinstance(value, str):  # a lone surrogate is no UTF-8: replaced, not a failed batch
        return _field(1, value.encode("utf-8", "replace"))
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + varint(value)
    if isinstance(value, float):
        return b"\x21" + struct.pack("<d", value)
    if isinstance(value, bytes):
        return _field(7, value)
    if isinstance(value, Sequence):
        return _field(5, b"".join(_field(1, any_value(v)) for v in value))
    raise TypeError(f"an attribute value of type {type(value).__name__}")


def span_head(
    trace_id: int, span_id: int, parent_id: int, kind: int, start: int, end: int
) -> bytes:
    """A span's ids (fields 1, 2 and 4, big-endian), kind and times (6, 7, 8)."""
    high, low = trace_id >> 64, trace_id & _LOW64
    if parent_id:
        ids = _CHILD(0x0A10, high, low, 0x1208, span_id, 0x2208, parent_id)
    else:
        ids = _ROOT(0x0A10, high, low, 0x1208, span_id)
    return ids + _TIMES(0x30, kind, 0x39, start, 0x41, end)


# One span of a trace written by ``Encoder.trace``: its id, its parent's (0: none), kind,
# start, end, template (``Encoder.template``) and its two counts (or None).
Fixed = tuple[int, int, int, int, int, bytes, tuple[int, int] | None]


def frame(body: bytes) -> bytes:
    """A ``Span`` message as a ``ScopeSpans.spans`` field."""
    return b"\x12" + varint(len(body)) + body


class Encoder:
    """Batches of ``SpanRecord`` to ``ExportTraceServiceRequest`` bytes for one resource
    (its attributes given as read at start-up) and the instrumentation scope ``canary``.

    A span's fields are written in an order of their own: ids (one big-endian pack, the
    parent's with them), kind and times (one little-endian pack), then what spans of one
    shape share (name, shared attributes, status: ``template``), its state and its own
    attributes. Protobuf reads fields in any order; what a decoder makes of it is the
    SDK's message, field for field (the tests)."""

    def __init__(self, resource: Mapping[str, Any], scope: str = "canary") -> None:
        kv = b"".join(_field(1, _field(1, k.encode()) + _field(2, any_value(v)))
                      for k, v in resource.items())  # fmt: skip
        self.resource = _field(1, kv)  # ResourceSpans.resource
        self.scope = _field(1, _field(1, scope.encode()))  # ScopeSpans.scope
        self.pairs: dict[tuple[str, type, Any], bytes] = {}
        self.names: dict[str, bytes] = {}
        self.ints: dict[str, list[bytes]] = {}  # an int attribute's key: its pair's heads

    def encode(self, items: Iterable[Finished]) -> bytes:
        """One export request of ``items``' spans."""
        out = [self.scope]
        for item in items:
            item.encode(self, out)
        size = sum(map(len, out))
        scoped = b"\x12" + varint(size)  # ResourceSpans.scope_spans, its spans in ``out``
        head = b"\x0a" + varint(len(self.resource) + len(scoped) + size)
        return b"".join([head, self.resource, scoped, *out])

    def span(self, s: SpanRecord, out: list[bytes]) -> None:
        """One ``Span`` message (``ScopeSpans.spans``) onto ``out``."""
        body = span_head(s.trace_id, s.span_id, s.parent_id, s.kind, s.start, s.end)
        body += self.template(s)
        if s.state:
            body += self.state(s.state)
        pairs = self.pairs
        for k, v in s.attributes.items():
            if v.__class__ is int:  # a count: no two alike, so written, not looked up
                body += self.count(k, v)
            else:
                body += pairs.get((k, v.__class__, v)) or self._pair(k, v)
        out.append(frame(body))

    def trace(self, out: list[bytes], trace_id: int, state: str, spans: Iterable[Fixed]) -> None:
        """The spans of one trace onto ``out``, each from its template, with its counts as
        the GenAI usage attributes (the shapes ``one_try`` does not write)."""
        high, low = trace_id >> 64, trace_id & _LOW64
        tail = self.state(state) if state else b""
        last, pairs = None, b""
        for span_id, parent_id, kind, start, end, template, counts in spans:
            if parent_id:
                ids = _CHILD(0x0A10, high, low, 0x1208, span_id, 0x2208, parent_id)
            else:
                ids = _ROOT(0x0A10, high, low, 0x1208, span_id)
            if counts is not None and counts is not last:  # the call's: the answering try's
                last, pairs = counts, self.count(INPUT, counts[0]) + self.count(OUTPUT, counts[1])
            times = _TIMES(0x30, kind, 0x39, start, 0x41, end)
            out.append(
                frame(b"".join((ids, times, template, tail, pairs if counts is not None else b"")))
            )

    def one_try(
        self,
        out: list[bytes],
        layout: Layout,
        ids: tuple[int, int, int, int],
        times: tuple[int, int, int, int],
        counts: tuple[int, int] | None,
    ) -> None:
        """A call of one try that answered, both its spans in one pack (``Layout.packs``):
        its trace id, the try's span id, the call's and its parent's (0: none), the try's
        start and end then the call's, and the counts both spans carry."""
        trace_id, try_id, call_id, parent_id = ids
        a: int | bytes
        b: int | bytes
        if counts is None:
            key, a, b = 0, b"", b""
        else:  # the struct by the counts' varint lengths: 1 and 2 bytes packed inline
            x, y = counts
            if 0 < x < 0x80:
                key, a = 1, x
            elif 0 < x < 0x4000:
                key, a = 2, x & 0x7F | (x << 1) & 0x7F00 | 0x80
            else:
                a = varint(x)
                key = 16 + len(a)
            if 0 < y < 0x80:
                key, b = key << 5 | 1, y
            elif 0 < y < 0x4000:
                key, b = key << 5 | 2, y & 0x7F | (y << 1) & 0x7F00 | 0x80
            else:
                b = varint(y)
                key = key << 5 | 16 + len(b)
        pack, try_head, try_rest, second, call_head, parent, call_rest = layout.packs.get(
            key
        ) or self._one_try_pack(layout, key)
        trace, call = trace_id.to_bytes(16), call_id.to_bytes(8)
        out.append(
            pack(try_head, trace, 0x0812, try_id.to_bytes(8), 0x0822, call,
                 0x39, times[0], 0x41, times[1], try_rest, a, second, b,
                 call_head, trace, 0x0812, call, parent,
                 parent_id.to_bytes(8) if parent else b"",
                 0x39, times[2], 0x41, times[3], call_rest, a, second, b)
        )  # fmt: skip

    def _one_try_pack(self, layout: Layout, key: int) -> tuple[Any, ...]:
        """``one_try``'s struct for counts of ``key``'s varint lengths, and what it packs
        alike from call to call. A span: its frame, ids and times, then its kind and
        template, then its counts."""
        if key:
            codes = [_COUNT_CODES.get(k) or f"{k - 16}s" for k in divmod(key, 32)]
            sizes = [struct.calcsize(code) for code in codes]
            first = (self.ints.get(INPUT) or self._int(INPUT))[sizes[0]]
            second = (self.ints.get(OUTPUT) or self._int(OUTPUT))[sizes[1]]
        else:
            codes, sizes, first, second = ["0s", "0s"], [0, 0], b"", b""
        try_template, call_template = layout.templates
        try_rest = bytes((0x30, CLIENT)) + try_template + first
        call_rest = bytes((0x30, SERVER)) + call_template + first
        # The call's parent span id (the client's), when it has one: its key, then 8 bytes.
        parent, parent_id = (b"\x22\x08", "2s8s") if layout.parent else (b"", "0s0s")
        counts = sizes[0] + len(second) + sizes[1]
        common = 2 + 16 + 2 + 8 + 1 + 8 + 1 + 8  # trace and span ids, start, end: keys too
        try_size = common + 2 + 8 + len(try_rest) + counts  # its parent: the call's span
        call_size = common + struct.calcsize(parent_id) + len(call_rest) + counts
        try_head = b"\x12" + varint(try_size) + b"\x0a\x10"
        call_head = b"\x12" + varint(call_size) + b"\x0a\x10"
        a, b = codes
        span = "16sH8s{}BQBQ{}s{}{}s{}"  # trace id, span id, parent, times, rest, counts
        fmt = "<" + f"{len(try_head)}s" + span.format("H8s", len(try_rest), a, len(second), b)
        fmt += f"{len(call_head)}s" + span.format(parent_id, len(call_rest), a, len(second), b)
        packed = (struct.Struct(fmt).pack, try_head, try_rest, second, call_head, parent, call_rest)
        layout.packs[key] = packed  # at most 12 x 12 varint lengths: no bound needed
        return packed

    def template(self, s: SpanRecord) -> bytes:
        """What spans of the same shape share: ``s``'s fields but its ids, times, state and
        own attributes (name, shared attributes, status). A span is ``span_head``, this,
        ``state`` and its own pairs, framed (``frame``)."""
        parts = [self.names.get(s.name) or self._name(s.name)]
        for block in s.shared:
            parts.append(block.encoded or self._shared(block))
        if s.error is None:
            parts.append(_UNSET[s.remote])
        else:
            message = _field(2, s.error.encode("utf-8", "replace"))
            parts += (_field(15, message + b"\x18\x02"), _FLAGS[s.remote])
        return b"".join(parts)

    @staticmethod
    def state(state: str) -> bytes:
        """A span's ``trace_state`` field."""
        return _field(3, state.encode("utf-8", "replace"))

    def count(self, key: str, value: int) -> bytes:
        """An int attribute's pair: a count, seldom the same twice, so written each time."""
        encoded = varint(value)
        return (self.ints.get(key) or self._int(key))[len(encoded)] + encoded

    def _name(self, name: str) -> bytes:
        if len(self.names) >= _CACHE_MAX:
            self.names.clear()
        encoded = self.names[name] = _field(5, name.encode("utf-8", "replace"))
        return encoded

    @staticmethod
    def _shared(block: Shared) -> bytes:
        block.encoded = b"".join(
            [
                _field(9, _field(1, k.encode()) + _field(2, any_value(v)))
                for k, v in block.values.items()
            ]
        )
        return block.encoded

    def _int(self, key: str) -> list[bytes]:
        """An int attribute's pair up to its value, by the length of the value's varint."""
        if len(self.ints) >= _CACHE_MAX:
            self.ints.clear()
        name = _field(1, key.encode("utf-8", "replace"))
        heads = [b""] + [_SMALL[9 << 3 | 2] + varint(len(name) + 3 + n) + name + b"\x12"
                         + _SMALL[n + 1] + b"\x18" for n in range(1, 11)]  # fmt: skip
        self.ints[key] = heads
        return heads

    def _pair(self, key: str, value: Any) -> bytes:
        pair = _field(9, _field(1, key.encode()) + _field(2, any_value(value)))
        if isinstance(value, (str, bool, float)):  # hashable, and compared by value
            if len(self.pairs) >= _CACHE_MAX:
                self.pairs.clear()
            self.pairs[(key, value.__class__, value)] = pair
        return pair
