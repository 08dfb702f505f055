"""Whole SSE events out of reads cut anywhere, at one search per read.

An event ends in a blank line. ``Frames.feed`` looks for the last event boundary in each
read (one ``rfind``): what comes before it completes whole events, what follows is the
start of the next one and waits for it. At most one partial event is carried between
reads (bounded by ``MAX_EVENT``); nothing else is kept but the stream's first event
(Anthropic's usage starts there) and its last few reads of whole events (the end mark
and OpenAI's usage are there). Only when the stream ends are those split into events,
comments (``: keep-alive``) dropped, and the dialect asked whether the last event is its
end mark. Whether a read boundary falls inside an event, or just before a ``:`` in its
JSON, does not change the verdict.
"""

from __future__ import annotations

MAX_EVENT = 4 << 20  # a partial event carried longer than this is not read (usage lost)
FIRST_MAX = 16 << 10  # the first event is kept up to this size (message_start is small)
_KEEP = 3  # reads of whole events kept from the end


class Frames:
    """Feed every read of an SSE body in order; then ``last_events`` and ``first``."""

    __slots__ = ("_kept", "_parts", "_sep", "_size", "first", "overflow")

    def __init__(self) -> None:
        self.first: bytes | None = None  # the stream's first whole event(s)
        self.overflow = False  # an event outgrew MAX_EVENT: its content was not kept
        self._kept: list[bytes] = []  # the last reads of whole events, comments aside
        self._parts: list[bytes] = []  # the partial event after the last boundary
        self._size = 0
        self._sep = b""

    def feed(self, chunk: bytes) -> None:
        sep = self._sep or self._line_end(chunk)
        if not sep:  # no line has ended yet: nothing to frame
            self._carry(chunk)
            return
        cut = chunk.rfind(sep)
        if cut < 0:
            self._carry(chunk)
            return
        end = cut + len(sep)
        if self._parts:
            self._parts.append(chunk[:end])
            whole = b"".join(self._parts)
            self._parts.clear()
            self._size = 0
        else:
            whole = chunk if end == len(chunk) else chunk[:end]
        if end < len(chunk):
            self._carry(chunk[end:])
        if whole[:1] == b":" and self._only_comments(whole):
            return
        if self.first is None:
            self.first = whole[:FIRST_MAX]
        kept = self._kept
        kept.append(whole)
        if len(kept) > _KEEP:
            del kept[0]

    def _line_end(self, chunk: bytes) -> bytes:
        """The event separator, from the stream's first line end (CRLF or LF)."""
        seen = b"".join(self._parts) + chunk
        i = seen.find(b"\n")
        if i < 0:
            return b""
        self._sep = b"\r\n\r\n" if seen[i - 1 : i] == b"\r" else b"\n\n"
        return self._sep

    def _carry(self, part: bytes) -> None:
        if self._size + len(part) > MAX_EVENT:
            self.overflow = True
            self._parts.clear()
            self._size = 0
            return
        self._parts.append(part)
        self._size += len(part)

    def _only_comments(self, whole: bytes) -> bool:
        return all(e[:1] == b":" for e in whole.split(self._sep) if e.strip())

    def last_events(self, n: int = 3) -> list[bytes]:
        """The stream's last ``n`` events, comments aside, oldest first; an unterminated
        tail counts as an event (a provider may close without the final blank line).

        Read backwards from the end with ``rfind``: a read holding many events (a
        buffered upstream) is not split whole."""
        sep = self._sep or b"\n\n"
        found: list[bytes] = []
        rest = b"".join(self._parts).strip()
        if rest and rest[:1] != b":":
            found.append(rest)
        for whole in reversed(self._kept):
            end = len(whole)
            while end > 0 and len(found) < n:
                start = whole.rfind(sep, 0, end - 1)
                start = 0 if start < 0 else start + len(sep)
                event = whole[start:end].strip()
                if event and event[:1] != b":":
                    found.append(event)
                end = start
            if len(found) >= n:
                break
        found.reverse()
        return found

    def first_event(self) -> bytes | None:
        """The stream's first event, comments aside (read forwards with ``find``)."""
        first, sep = self.first, self._sep or b"\n\n"
        start = 0
        while first is not None and start < len(first):
            end = first.find(sep, start)
            end = len(first) if end < 0 else end
            event = first[start:end].strip()
            if event and event[:1] != b":":
                return event
            start = end + len(sep)
        return None
