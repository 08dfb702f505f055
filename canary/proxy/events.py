"""What a session's server events say: usage to meter, the model to audit (SPEC §3a, §9).

Only a text frame whose ``type`` (searched within its first ``HEAD`` characters, where
both APIs put it) is one of these is parsed as JSON; deltas, audio and everything else
pass unread:

    type                  API        read
    session.created       Realtime   session.model            (audit)
    session.updated       Realtime   session.model            (audit)
    response.created      Responses  response.model           (audit)
    response.done         Realtime   response.usage.input_tokens / output_tokens (meter)
    response.completed    Responses  response.model (audit), response.usage (meter)

The model asked for is the session's ``?model=``; without one (the Responses API's
WebSocket mode), the ``model`` of the client's first ``response.create`` event. One
verdict per session: the first model an event names is audited, later ones are not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

HEAD = 96
_SERVER = frozenset(
    {
        "session.created",
        "session.updated",
        "response.created",
        "response.done",
        "response.completed",
    }
)

# The relay's filter on every frame, two C-level ``startswith``: compact JSON with its type
# first (how the providers send events) is read only when it is one of ``_SERVER``; any
# other shape is left to ``Scan.server``'s own search.
COMPACT = '{"type":"'
WANTED = tuple(COMPACT + kind + '"' for kind in sorted(_SERVER))


def event_type(text: str) -> str | None:
    """The ``type`` of a JSON event when it is named near the start, else None."""
    at = text.find('"type"', 0, HEAD)
    if at < 0:
        return None
    opening = text.find('"', at + 6, at + 16)
    if opening < 0:
        return None
    closing = text.find('"', opening + 1, opening + 48)
    return text[opening + 1 : closing] if closing > 0 else None


def _object(value: object, key: str) -> dict[str, Any] | None:
    inner = value.get(key) if isinstance(value, dict) else None
    return inner if isinstance(inner, dict) else None


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def usage_of(usage: dict[str, Any] | None) -> tuple[int, int] | None:
    """(input, output) tokens of a usage object, when both are counts."""
    if usage is None:
        return None
    tin, tout = _count(usage.get("input_tokens")), _count(usage.get("output_tokens"))
    return None if tin is None or tout is None else (tin, tout)


class Scan:
    """Reads the events that matter; ``on_usage`` and ``on_model`` are called as they come."""

    __slots__ = ("asked", "asking", "on_model", "on_usage", "seen_model")

    def __init__(
        self,
        asked: str | None,
        on_usage: Callable[[tuple[int, int]], None],
        on_model: Callable[[str | None, str], None],
    ) -> None:
        self.asked = asked  # the model asked for, once known
        self.asking = asked is None  # still looking for it in the client's events
        self.on_usage = on_usage
        self.on_model = on_model  # (asked, named): the audit, once per session
        self.seen_model = False

    def client(self, text: str) -> None:
        """A client event: the first ``response.create`` says which model is asked for."""
        if event_type(text) != "response.create":
            return
        self.asking = False
        event = _parse(text)
        model = event.get("model") if event is not None else None
        if isinstance(model, str) and model:
            self.asked = model

    def server(self, text: str) -> None:
        """A server event: meter its usage, audit the first model it names. The relay
        calls it only for a frame ``worth_reading`` (``canary.proxy.frames``)."""
        kind = event_type(text)
        if kind is None or kind not in _SERVER:
            return
        event = _parse(text)
        if event is None:
            return
        inner = _object(event, "session" if kind.startswith("session.") else "response")
        if not self.seen_model and kind != "response.done":
            model = inner.get("model") if inner is not None else None
            if isinstance(model, str) and model:
                self.seen_model = True
                self.on_model(self.asked, model)
        if kind in ("response.done", "response.completed"):
            tokens = usage_of(_object(inner, "usage"))
            if tokens is not None:
                self.on_usage(tokens)


def _parse(text: str) -> dict[str, Any] | None:
    try:
        event = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None
