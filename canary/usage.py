"""Token usage read from a response as it streams past, without holding the response.

OpenAI-compatible providers report usage in a ``"usage": {...}`` object: at the end of
a non-streamed body, and in the last data event of a stream when the client asked for it
(``stream_options.include_usage``; every earlier chunk then carries ``"usage": null``).
The Responses API names the fields ``input_tokens`` / ``output_tokens``.

``UsageScanner.feed`` looks at each chunk once with a substring search; only when a
usage object starts does it keep a few hundred bytes from there on (a chunk boundary may
split the object), and ``result`` reads the numbers from that tail at the end. A key
inside a JSON string cannot match: its quotes are escaped there. Nothing is buffered,
decoded or parsed as a whole.
"""

from __future__ import annotations

import re

_MARK = b'"usage"'
_KEEP = 512  # bytes kept from a usage object's start: it holds a handful of counters
_FIELD = re.compile(rb'"(prompt_tokens|completion_tokens|input_tokens|output_tokens)"\s*:\s*(\d+)')
_SPACE = b" \t\r\n:"
_BRACES = re.compile(rb"[{}]")


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
        edge = chunk[-len(_MARK) + 1 :]
        self._edge = edge if b'"' in edge else b""
        i = chunk.rfind(_MARK)
        if i < 0:
            return
        j = i + len(_MARK)
        rest = chunk[j : j + 16].lstrip(_SPACE)
        if rest[:1] == b"{" or (not rest and len(chunk) - j < 16):
            self._tail = chunk[i : i + _KEEP]  # the newest usage object wins

    def result(self) -> tuple[int, int] | None:
        """(input tokens, output tokens) of the last usage object seen, or None."""
        tail = self._tail[len(_MARK) :].lstrip(_SPACE)
        if tail[:1] != b"{":
            return None
        depth = 0
        for brace in _BRACES.finditer(tail):  # cut at the object's own closing brace
            depth += 1 if brace.group() == b"{" else -1
            if depth == 0:
                tail = tail[: brace.end()]
                break
        fields: dict[bytes, int] = {}
        for name, value in _FIELD.findall(tail):
            fields.setdefault(name, int(value))
        if not fields:
            return None
        tokens_in = fields.get(b"prompt_tokens", fields.get(b"input_tokens", 0))
        tokens_out = fields.get(b"completion_tokens", fields.get(b"output_tokens", 0))
        return tokens_in, tokens_out
