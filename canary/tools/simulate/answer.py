"""What the simulated model says, whichever dialect carries it, and how much it bills.

A dialect builder (``chat``, ``messages``, ``responses``, ...) is a pure function of one
``Call`` that returns a ``Reply``: a JSON body or the SSE events of a stream, and the
tokens it bills. The app does the I/O and the counting, so every dialect meets the same
faults. The builder reads what the call ``Ask`` s in its own dialect; ``compose`` turns
that into the same ``Answer`` for all: the fixed reply, a JSON object when JSON is asked
for, or a call of the first tool offered (or the one ``tool_choice`` names; none when it
says none) with its required arguments filled from the tool's schema.

Token counts are deterministic so cost accounting can be checked: prompt tokens are the
whitespace-separated words of what the call sends (a token id counts one; at least 1);
completion tokens are the words of what the answer carries (the reply, the JSON text or
the tool call's arguments, JSON written with a space after ``:`` and ``,``), cut to the
call's limit (which may leave the JSON unfinished, as a real model's would be).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from canary.tools.simulate.asgi import Refused
from canary.tools.simulate.schema import sample

REPLY = "Hello from {name}! This is a simulated reply."
JSON_OBJECT = {"type": "object", "properties": {"reply": {"type": "string"}}}  # json_object


@dataclass(frozen=True, slots=True)
class Call:
    """One ``/v1`` call as a builder sees it: the body, and the simulator's side of it."""

    payload: dict[str, Any]
    model: str
    serial: int  # numbers the ids of this call's objects
    created: int  # unix seconds
    reply: tuple[str, ...]  # the simulator's reply, in words
    prompt_factor: float = 1.0  # a relay inflating its prompt counts bills this many times

    def prompt(self, words: int) -> int:
        """The prompt tokens billed for ``words`` words sent (at least 1)."""
        return max(1, round(words * self.prompt_factor))

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


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the call offers: its name and its parameters' JSON schema."""

    name: str
    schema: object


@dataclass(frozen=True, slots=True)
class Ask:
    """What a call asks of the answer, read from the body by its dialect."""

    limit: int | None = None  # most completion tokens
    tool: Tool | None = None  # the tool to call
    schema: object = None  # answer JSON that fits this schema


@dataclass(frozen=True, slots=True)
class Answer:
    """What the model says: the words of its text, or of its tool call's JSON arguments."""

    words: tuple[str, ...]
    truncated: bool = False  # cut at the call's limit
    tool: str | None = None  # the function called

    @property
    def text(self) -> str:
        return " ".join(self.words)

    @property
    def pieces(self) -> list[str]:
        """The words as a stream sends them: the first bare, each next one after a space."""
        return [word if i == 0 else f" {word}" for i, word in enumerate(self.words)]


def compose(reply: Sequence[str], ask: Ask) -> Answer:
    """The answer to ``ask``: a tool call, else JSON, else the reply; cut to the limit."""
    text = " ".join(reply)
    if ask.tool is not None:
        arguments = sample(ask.tool.schema, text)
        words = _json_words(arguments if isinstance(arguments, dict) else {})
    elif ask.schema is not None:
        words = _json_words(sample(ask.schema, text))
    else:
        words = tuple(reply)
    name = None if ask.tool is None else ask.tool.name
    if ask.limit is not None and ask.limit < len(words):
        return Answer(words[: ask.limit], True, name)
    return Answer(words, False, name)


def pick(tools: Sequence[Tool], name: object = None) -> Tool | None:
    """The tool named ``name``, else the first offered; None when none is."""
    return next((tool for tool in tools if tool.name == name), tools[0] if tools else None)


def json_asked(kind: object, schema: object) -> object:
    """The schema a JSON answer must fit, given the format's type; None: text is fine."""
    if kind == "json_object":
        return JSON_OBJECT
    if kind == "json_schema":
        return schema if isinstance(schema, dict) and schema else JSON_OBJECT
    return None


def dicts(value: object) -> list[dict[str, Any]]:
    """The objects in a list the client sent (anything else in it, or no list, is none)."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def dig(value: object, *keys: str) -> object:
    """``value[k1][k2]...`` where each step is an object that has the key; else None."""
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _json_words(value: object) -> tuple[str, ...]:
    # json, not orjson: only its separators put the spaces between words that count tokens
    return tuple(json.dumps(value, ensure_ascii=False).split())


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


def sse(data: object, event: str | None = None) -> bytes:
    """One server-sent event; named (``event:``) where the dialect names its events."""
    line = b"data: " + orjson.dumps(data) + b"\n\n"
    return line if event is None else b"event: " + event.encode() + b"\n" + line
