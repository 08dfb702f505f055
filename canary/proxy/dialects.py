"""What differs between the API dialects clients speak, behind one small interface.

    dialect    paths                                  a complete stream ends in
    chat       /v1/chat/completions, /v1/completions  data: [DONE]
    responses  /v1/responses                          response.completed (.incomplete, .failed)
    anthropic  /v1/messages, /v1/messages/...         event: message_stop
               (/v1/messages/... unbilled: count_tokens)
    openai     any other /v1 path (embeddings...)     (not checked)

A stream cut mid-way ends in the dialect's own error event, so its SDK raises: OpenAI's
``data: {"error": {...}}``; the Responses API's ``event: error`` (with an ``error``
object too); Anthropic's ``event: error`` with ``{"type": "error", "error": {...}}``.

Usage: OpenAI's dialects put a ``"usage"`` object at the end of a plain body and in the
last events of a stream (``prompt_tokens``/``completion_tokens``, or ``input_tokens``/
``output_tokens`` in the Responses API). Anthropic's puts ``input_tokens`` (plus cache
reads and writes, which are input too) in ``message_start``, the stream's first event,
and the final ``output_tokens`` in ``message_delta``, one of its last. The relay keeps a
stream's first event and its last few (``canary.proxy.sse``) and asks the dialect.

Billing: Anthropic's other paths under ``/v1/messages/`` (``count_tokens``, batches) are
free or billed elsewhere and answer without a usage object, so their answers are not
metered (an unread usage would be reported as ``unmetered``).

The model: every dialect names it in a top-level ``"model"`` field of the request body
and of the answer, so it needs no entry here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson

from canary.proxy.usage import Counters, UsageScanner, anthropic_counters, openai_counters

Tokens = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one API family marks a complete stream, says an error mid-stream, and counts."""

    name: str
    end_marks: tuple[bytes, ...]  # looked for at the head of a stream's last event; () = unchecked
    counters: Counters  # a usage object's bytes -> (input, output)
    error_event: Callable[[str], bytes]  # a message -> one whole SSE event
    billed: bool = True  # a POST's answer carries usage (count_tokens' does not)
    usage_at_start: bool = False  # input tokens come in the stream's first event

    def complete(self, last_event: bytes | None) -> bool:
        """Whether a stream whose last whole event is ``last_event`` ended as it should."""
        if not self.end_marks:
            return True
        if last_event is None:
            return False
        head = last_event[:160]
        return any(mark in head for mark in self.end_marks)

    def stream_usage(self, first: bytes | None, last: Sequence[bytes]) -> Tokens | None:
        """(input, output) from a stream's first event and its last events, if reported."""
        tail = _scan(last, self.counters)
        if not self.usage_at_start:
            return tail
        head = _scan((first,) if first is not None else (), self.counters)
        if head is None or tail is None:
            return tail or head
        # message_delta's counts are cumulative; input may be absent there (older API).
        return max(head[0], tail[0]), tail[1]


def _scan(events: Sequence[bytes], counters: Counters) -> Tokens | None:
    scanner = UsageScanner()
    for event in events:
        scanner.feed(event)
    return scanner.result(counters)


def _openai_error(message: str) -> bytes:
    error = {"message": message, "type": "upstream_error", "code": "stream_cut"}
    return b"data: " + orjson.dumps({"error": error}) + b"\n\n"


def _responses_error(message: str) -> bytes:
    # The Responses API's own error event, with an "error" object beside it so that
    # clients that read either shape (the openai SDKs raise on "error") see a failure.
    error = {"message": message, "type": "upstream_error", "code": "stream_cut"}
    event = {"type": "error", "code": "stream_cut", "message": message, "param": None}
    return b"event: error\ndata: " + orjson.dumps({**event, "error": error}) + b"\n\n"


def _anthropic_error(message: str) -> bytes:
    event = {"type": "error", "error": {"type": "api_error", "message": message}}
    return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"


CHAT = Dialect("chat", (b"[DONE]",), openai_counters, _openai_error)
RESPONSES = Dialect(
    "responses",
    (b"response.completed", b"response.incomplete", b"response.failed"),
    openai_counters,
    _responses_error,
)
ANTHROPIC = Dialect(
    "anthropic", (b"message_stop",), anthropic_counters, _anthropic_error, usage_at_start=True
)
ANTHROPIC_UNBILLED = dataclasses.replace(ANTHROPIC, billed=False)
OPENAI = Dialect("openai", (), openai_counters, _openai_error)

_BY_PATH = {
    "/v1/chat/completions": CHAT,
    "/v1/completions": CHAT,
    "/v1/responses": RESPONSES,
    "/v1/messages": ANTHROPIC,
}


def dialect_of(path: str) -> Dialect:
    """The dialect a request path speaks (one dict lookup on the hot path)."""
    found = _BY_PATH.get(path)
    if found is not None:
        return found
    return ANTHROPIC_UNBILLED if path.startswith("/v1/messages/") else OPENAI
