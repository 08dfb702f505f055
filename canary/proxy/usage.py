"""Token usage read from a response as it streams past, without holding the response.

OpenAI-compatible providers report usage in a ``"usage": {...}`` object: at the end of
a non-streamed body, and in the last data event of a stream when the client asked for it
(``stream_options.include_usage``; every earlier chunk then carries ``"usage": null``).
The Responses API names the fields ``input_tokens`` / ``output_tokens``.

The proxy feeds a plain answer's chunks as they pass, and a stream's first and last whole
events when it ends (``canary.proxy.sse``), so a plain stream costs nothing per chunk.
Which counters an object holds is the dialect's to say (``openai_counters``,
``anthropic_counters``: Anthropic's cache reads and writes are input tokens too).
``UsageScanner.feed`` looks at each chunk once with a substring search; only when a
usage object starts does it keep up to ``KEEP`` bytes from there on (a chunk boundary
may split the object, or the key itself), and ``result`` reads the counters of that
object, up to its own closing brace, at the end. A key inside a JSON string cannot
match: its quotes are escaped there. Nothing is buffered or parsed as a whole.

A gzip or deflate answer (what the openai SDKs ask for) is inflated for the scanner
only, chunk by chunk, at most ``MAX_INFLATED`` bytes; the client gets the bytes the
provider sent. Other encodings are not read: the proxy asks providers for gzip or
deflate at most (``readable_encodings``).
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Callable

Counters = Callable[[bytes], tuple[int, int] | None]  # a usage object -> (input, output)

_MARK = b'"usage"'
KEEP = 1024  # bytes kept from a usage object's start: it holds a handful of counters
MAX_INFLATED = 8 << 20  # a compressed answer is inflated this far for the scanner, no further
_SPACE = b" \t\r\n:"
_PREFIXES = tuple(_MARK[:n] for n in range(1, len(_MARK)))  # a mark cut by a chunk end
_INPUT = re.compile(rb'"(?:prompt|input)_tokens"\s*:\s*(\d+)')
_OUTPUT = re.compile(rb'"(?:completion|output)_tokens"\s*:\s*(\d+)')
_ANTHROPIC_INPUT = re.compile(
    rb'"(?:input_tokens|cache_creation_input_tokens|cache_read_input_tokens)"\s*:\s*(\d+)'
)
_ANTHROPIC_OUTPUT = re.compile(rb'"output_tokens"\s*:\s*(\d+)')
WBITS = {b"gzip": 16 + zlib.MAX_WBITS, b"x-gzip": 16 + zlib.MAX_WBITS, b"deflate": zlib.MAX_WBITS}


class UsageScanner:
    """Feed every response chunk in order; ``result()`` gives (input, output) or None."""

    __slots__ = ("_edge", "_inflate", "_inflated", "_pending", "_tail")

    def __init__(self) -> None:
        self._tail = b""  # from the newest usage object's start
        self._pending = b""  # a mark at a chunk's end: an object may follow in the next
        self._edge = b""  # the end of the last chunk, when a mark may start in it
        self._inflate: zlib._Decompress | None = None
        self._inflated = 0

    def encoded(self, encoding: bytes) -> bool:
        """The answer is compressed with ``encoding``: inflate it; False if unreadable."""
        wbits = WBITS.get(encoding.strip().lower())
        if wbits is None:
            return False
        self._inflate = zlib.decompressobj(wbits)
        return True

    def feed(self, chunk: bytes) -> None:
        if self._inflate is not None:
            chunk = self._inflated_part(chunk)
        tail = self._tail
        if tail and len(tail) < KEEP:
            self._tail = tail + chunk[: KEEP - len(tail)]  # the object was split
        if self._pending:
            joined = self._pending + chunk[:16]
            self._pending = b""
            if joined[len(_MARK) :].lstrip(_SPACE)[:1] == b"{":
                self._tail = (joined[: len(_MARK)] + chunk)[:KEEP]
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
        if k >= 0 and not chunk[j:k].strip(_SPACE):
            self._tail = chunk[i : i + KEEP]  # the newest usage object wins
        elif len(chunk) - j < 16 and not chunk[j:].strip(_SPACE):
            self._pending = chunk[i:]  # decided by the next chunk

    def _inflated_part(self, chunk: bytes) -> bytes:
        inflate = self._inflate
        assert inflate is not None
        room = MAX_INFLATED - self._inflated
        if room <= 0:
            return b""
        try:
            out = inflate.decompress(chunk, room)
        except zlib.error:
            self._inflated = MAX_INFLATED  # not what it said it was: read no further
            return b""
        self._inflated += len(out)
        return out

    def result(self, counters: Counters | None = None) -> tuple[int, int] | None:
        """(input tokens, output tokens) of the last usage object seen, or None."""
        counters = counters or openai_counters
        tail = self._tail
        start = tail.find(b"{")
        if start < 0 or tail[len(_MARK) : start].strip(_SPACE):
            return None
        # The whole object, cut at its own closing brace (never past it): Anthropic's
        # output_tokens follows a nested cache_creation object.
        return counters(tail[start : _closing(tail, start) + 1])


def _closing(text: bytes, start: int) -> int:
    """Index of the brace closing the object opened at ``start`` (the end if unclosed)."""
    depth, i = 0, start
    while True:
        close = text.find(b"}", i)
        if close < 0:
            return len(text)
        opened = text.find(b"{", i, close)
        if opened >= 0:
            depth += 1
            i = opened + 1
            continue
        depth -= 1
        if depth == 0:
            return close
        i = close + 1


def anthropic_counters(obj: bytes) -> tuple[int, int] | None:
    """Anthropic's usage: input, cache writes and cache reads are all input tokens."""
    found = _ANTHROPIC_INPUT.findall(obj)
    tokens_out = _ANTHROPIC_OUTPUT.search(obj)
    if not found and tokens_out is None:
        return None
    return sum(int(n) for n in found), int(tokens_out.group(1)) if tokens_out else 0


def openai_counters(obj: bytes) -> tuple[int, int] | None:
    """(input, output) from the counters in ``obj``, or None when it holds neither."""
    tokens_in = _INPUT.search(obj)
    tokens_out = _OUTPUT.search(obj)
    if tokens_in is None and tokens_out is None:
        return None
    return (
        int(tokens_in.group(1)) if tokens_in else 0,
        int(tokens_out.group(1)) if tokens_out else 0,
    )


@functools.lru_cache(maxsize=256)
def readable_encodings(accept_encoding: bytes) -> bytes:
    """A client's ``Accept-Encoding`` without the codings canary cannot read (br, zstd):
    the provider then answers in gzip or deflate, or plain, and its usage can be read."""
    kept = [
        part
        for part in accept_encoding.split(b",")
        if part.split(b";")[0].strip().lower() not in (b"br", b"zstd")
    ]
    return b",".join(kept).strip() or b"identity"
