"""What the simulated model says, whichever dialect carries it, and how much it bills.

A dialect builder (``chat``, ``embeddings``, ...) is a pure function of one ``Call``
that returns a ``Reply``: a JSON body or the SSE events of a stream, and the tokens it
bills. The app does the I/O and the counting, so every dialect meets the same faults.

Token counts are deterministic so cost accounting can be checked: prompt tokens are the
whitespace-separated words of what the call sends (a token id counts one; at least 1);
completion tokens are the words of the reply, truncated to the call's limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from canary.tools.simulate.asgi import Refused

REPLY = "Hello from {name}! This is a simulated reply."


@dataclass(frozen=True, slots=True)
class Call:
    """One ``/v1`` call as a builder sees it: the body, and the simulator's side of it."""

    payload: dict[str, Any]
    model: str
    serial: int  # numbers the ids of this call's objects
    created: int  # unix seconds
    reply: tuple[str, ...]  # the simulator's reply, in words

    @property
    def stream(self) -> bool:
        return self.payload.get("stream") is True


@dataclass(frozen=True, slots=True)
class Reply:
    """A builder's answer: ``body`` (sent as JSON) or ``events`` (an SSE stream)."""

    body: object = None
    events: Sequence[bytes] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


def limit(payload: dict[str, Any], *keys: str) -> int | None:
    """The first of ``keys`` the call sets, as a positive integer; None when none is set."""
    key = next((k for k in keys if payload.get(k) is not None), None)
    if key is None:
        return None
    value = payload[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise Refused(400, f"'{key}' must be a positive integer", "invalid_request")
    return value


def count_words(value: object) -> int:
    """Words in strings, one per token id; messages and content parts count their text."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, int) and not isinstance(value, bool):
        return 1
    if isinstance(value, list):
        return sum(count_words(item) for item in value)
    if isinstance(value, dict):
        return count_words(value.get("content")) + count_words(value.get("text"))
    return 0


def pieces(words: Sequence[str]) -> list[str]:
    """The words as a stream sends them: the first bare, each next one after a space."""
    return [word if i == 0 else f" {word}" for i, word in enumerate(words)]


def sse(data: object, event: str | None = None) -> bytes:
    """One server-sent event; named (``event:``) where the dialect names its events."""
    line = b"data: " + orjson.dumps(data) + b"\n\n"
    return line if event is None else b"event: " + event.encode() + b"\n" + line
