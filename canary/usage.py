"""Token usage read from a response as it streams past, without holding the response.

OpenAI-compatible providers report usage in a ``"usage": {...}`` object: at the end of
a non-streamed body, and in the last data event of a stream when the client asked for it
(``stream_options.include_usage``; every earlier chunk then carries ``"usage": null``).
The Responses API names the fields ``input_tokens`` / ``output_tokens``.

The proxy feeds a plain answer's chunks as they pass, and a stream's last three chunks
when it ends (the usage event is its last), so a stream costs nothing per chunk.
``UsageScanner.feed`` looks at each chunk once with a substring search; only when a
usage object starts does it keep a few hundred bytes from there on (a chunk boundary may
split the object, or the key itself), and ``result`` reads the numbers from that tail at
the end. A key inside a JSON string cannot match: its quotes are escaped there. Nothing
is buffered, decoded or parsed as a whole.
"""

from __future__ import annotations

_MARK = b'"usage"'
_KEEP = 512  # bytes kept from a usage object's start: it holds a handful of counters
_SPACE = b" \t\r\n:"
_PREFIXES = tuple(_MARK[:n] for n in range(1, len(_MARK)))  # a mark cut by a chunk end


class UsageScanner:
    """Feed every response chunk in order; ``result()`` gives (input, output) or None."""

    __slots__ = ("_edge", "_tail")

    def __init__(self) -> None:
        self._tail = b""
        self._edge = b""  # the end of the last chunk, when a mark may start in it

    def feed(self, chunk: bytes) -> None:
        tail = self._tail
        if tail and len(tail) < _KEEP:
            self._tail = tail + chunk[: _KEEP - len(tail)]  # the object was split
        if self._edge:  # rare: SSE chunks end in a blank line, JSON bodies in a brace
            chunk = self._edge + chunk
            self._edge = b""
        if chunk.endswith(_PREFIXES):
            self._edge = chunk[1 - len(_MARK) :]
        i = chunk.rfind(_MARK)
        if i < 0:
            return
        j = i + len(_MARK)
        k = chunk.find(b"{", j, j + 16)  # "usage": {  -- and not "usage": null
        if (k >= 0 and not chunk[j:k].strip(_SPACE)) or (
            len(chunk) - j < 16 and not chunk[j:].strip(_SPACE)
        ):
            self._tail = chunk[i : i + _KEEP]  # the newest usage object wins

    def result(self) -> tuple[int, int] | None:
        """(input tokens, output tokens) of the last usage object seen, or None.

        The first of each field after the object's start is the object's own: nested
        details come after the counters, and their keys differ (``cached_tokens``)."""
        tail = self._tail
        start = tail.find(b"{")
        if start < 0 or tail[len(_MARK) : start].strip(_SPACE):
            return None
        tokens_in = _field(tail, b'"prompt_tokens"')
        if tokens_in is None:
            tokens_in = _field(tail, b'"input_tokens"')
        tokens_out = _field(tail, b'"completion_tokens"')
        if tokens_out is None:
            tokens_out = _field(tail, b'"output_tokens"')
        if tokens_in is None and tokens_out is None:
            return None
        return tokens_in or 0, tokens_out or 0


def _field(obj: bytes, name: bytes) -> int | None:
    """The integer after ``name`` (a quoted key) in ``obj``: a few C-level bytes calls."""
    i = obj.find(name)
    if i < 0:
        return None
    i += len(name)
    value = obj[i : i + 32].lstrip(_SPACE).partition(b",")[0].partition(b"}")[0].strip()
    return int(value) if value.isdigit() else None
