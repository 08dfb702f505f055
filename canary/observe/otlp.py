"""Finished spans as plain data, and their OTLP/protobuf encoding (``canary.observe.otel``).

A ``SpanRecord`` is what a call leaves behind: ids, name, kind, times and the attribute
values the call already had; no SDK object is built on the request path. ``encode``
writes a batch of them as one ``ExportTraceServiceRequest`` in the protobuf wire format
(varints, fixed64 times, length-delimited messages), field by field as
``opentelemetry-proto`` defines them: a generic protobuf runtime would build a message
object per span and per attribute, several times the CPU of the call it describes.
The tests decode this output with ``opentelemetry-proto`` and compare it to the SDK's own
encoding of the same spans.

Most attributes repeat call after call (route, backend, model, status): the request path
hands them over as ``Shared`` blocks, made once per route, backend or answer shape and
encoded once; a span's own attributes (token counts) go through a bounded cache of
encoded key/value pairs, one dict look-up each.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

SERVER, CLIENT = 2, 3  # Span.SpanKind
ERROR = 2  # Status.StatusCode
# Span.flags: the parent's "is remote" is known (bit 8), and true (bit 9).
HAS_IS_REMOTE, IS_REMOTE = 0x100, 0x200

_CACHE_MAX = 4096
_LOW64 = (1 << 64) - 1
_IDS = struct.Struct(">HQQHQ").pack  # Span.trace_id (fields 1, 2: keys, lengths, ids)
_PARENT = struct.Struct(">HQ").pack  # Span.parent_span_id (field 4)
_TIMES = struct.Struct("<BBBQBQ").pack  # kind, start and end: fields 6, 7 (fixed64), 8
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


def varint(n: int) -> bytes:
    """An unsigned varint; a negative int64 as its 64-bit two's complement (10 bytes)."""
    n &= 0xFFFFFFFFFFFFFFFF
    if n < 0x80:
        return _SMALL[n]
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


class Encoder:
    """Batches of ``SpanRecord`` to ``ExportTraceServiceRequest`` bytes for one resource
    (its attributes given as read at start-up) and the instrumentation scope ``canary``."""

    def __init__(self, resource: Mapping[str, Any], scope: str = "canary") -> None:
        kv = b"".join(_field(1, _field(1, k.encode()) + _field(2, any_value(v)))
                      for k, v in resource.items())  # fmt: skip
        self.resource = _field(1, kv)  # ResourceSpans.resource
        self.scope = _field(1, _field(1, scope.encode()))  # ScopeSpans.scope
        self.pairs: dict[tuple[str, type, Any], bytes] = {}
        self.names: dict[str, bytes] = {}

    def encode(self, spans: Iterable[SpanRecord]) -> bytes:
        scoped = _field(2, self.scope + b"".join([_field(2, self.span(s)) for s in spans]))
        return _field(1, self.resource + scoped)

    def span(self, s: SpanRecord) -> bytes:
        """One ``Span`` message, its fields in the order of their numbers."""
        trace_id = s.trace_id
        parts = [_IDS(0x0A10, trace_id >> 64, trace_id & _LOW64, 0x1208, s.span_id)]
        if s.state:
            parts.append(_field(3, s.state.encode()))
        if s.parent_id:
            parts.append(_PARENT(0x2208, s.parent_id))
        parts += (
            self.names.get(s.name) or self._name(s.name),
            _TIMES(0x30, s.kind, 0x39, s.start, 0x41, s.end),
        )
        for block in s.shared:
            parts.append(block.encoded or self._shared(block))
        pairs = self.pairs
        for k, v in s.attributes.items():
            parts.append(pairs.get((k, v.__class__, v)) or self._pair(k, v))
        if s.error is None:
            parts.append(_UNSET[s.remote])
        else:
            message = _field(2, s.error.encode("utf-8", "replace"))
            parts += (_field(15, message + b"\x18\x02"), _FLAGS[s.remote])
        return b"".join(parts)

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

    def _pair(self, key: str, value: Any) -> bytes:
        pair = _field(9, _field(1, key.encode()) + _field(2, any_value(value)))
        if isinstance(value, (str, bool, int, float)):  # hashable, and compared by value
            if len(self.pairs) >= _CACHE_MAX:
                self.pairs.clear()  # values that never repeat (token counts) must not grow it
            self.pairs[(key, value.__class__, value)] = pair
        return pair
