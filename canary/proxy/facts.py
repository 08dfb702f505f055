"""What an answer said, read whole for a shadow pair (never on a call that is not paired).

One reader for every dialect, plain or streamed: OpenAI chat and completions
(``choices``), the Responses API (``output``; a stream's ``response.completed`` holds the
whole response) and Anthropic messages (``content``; a stream's ``message_start``,
``content_block_*`` and ``message_delta``). Anything it cannot read stays None: a pair
compares only what both sides state.
"""

from __future__ import annotations

import contextlib
from typing import Any

import orjson

from canary.safety.equivalence import Facts

TAP_BYTES = 1 << 20  # of an answer kept for its comparison; a longer one is compared cut


class Tap:
    """The client's answer as it went out: first-byte time, and its bytes up to a bound."""

    __slots__ = ("chunks", "first_at", "size")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.first_at: float | None = None
        self.size = 0

    def feed(self, chunk: bytes, now: float) -> None:
        if self.first_at is None:
            self.first_at = now
        if self.size < TAP_BYTES:
            self.chunks.append(chunk)
            self.size += len(chunk)


class _Seen:
    """What has been read so far of one answer."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.tools: list[str] = []
        self.finish: str | None = None
        self.model: str | None = None
        self.prompt: int | None = None
        self.completion: int | None = None

    def usage(self, usage: object) -> None:
        if not isinstance(usage, dict):
            return
        for key in ("prompt_tokens", "input_tokens"):
            if isinstance(usage.get(key), int):
                self.prompt = usage[key]
        for key in ("completion_tokens", "output_tokens"):
            if isinstance(usage.get(key), int):
                self.completion = usage[key]

    def whole(self, obj: dict[str, Any]) -> None:
        """A whole answer object, in any dialect."""
        if isinstance(obj.get("model"), str):
            self.model = obj["model"]
        self.usage(obj.get("usage"))
        for choice in _dicts(obj.get("choices"))[:1]:
            self._choice(choice)
        for item in _dicts(obj.get("output")):  # the Responses API
            if item.get("type") == "function_call":
                self.tools.append(str(item.get("name")))
            for part in _dicts(item.get("content")):
                self.text.append(str(part.get("text") or ""))
        if obj.get("object") == "response" or obj.get("type") == "message":
            self.finish = str(obj.get("stop_reason") or obj.get("status") or "") or None
        for block in _dicts(obj.get("content")) if obj.get("type") == "message" else []:
            if block.get("type") == "tool_use":
                self.tools.append(str(block.get("name")))
            elif isinstance(block.get("text"), str):
                self.text.append(block["text"])

    def _choice(self, choice: dict[str, Any]) -> None:
        if choice.get("finish_reason"):
            self.finish = str(choice["finish_reason"])
        part = choice.get("message") or choice.get("delta") or {}
        if not isinstance(part, dict):
            part = {}
        content = part.get("content") if part else choice.get("text")
        if isinstance(content, str):
            self.text.append(content)
        for call in _dicts(part.get("tool_calls")):
            name = (call.get("function") or {}).get("name")
            if name:
                self.tools.append(str(name))

    def event(self, data: dict[str, Any]) -> None:
        """One streamed event, in any dialect."""
        kind = data.get("type")
        if kind in ("response.completed", "response.incomplete", "response.failed"):
            self.text.clear()
            self.whole(data.get("response") or {})
        elif kind == "response.created":
            model = (data.get("response") or {}).get("model")
            self.model = model if isinstance(model, str) else self.model
        elif kind == "message_start":
            self.whole({**(data.get("message") or {}), "content": []})
        elif kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use":
                self.tools.append(str(block.get("name")))
        elif kind == "content_block_delta":
            text = (data.get("delta") or {}).get("text")
            self.text.append(text if isinstance(text, str) else "")
        elif kind == "message_delta":
            self.finish = (data.get("delta") or {}).get("stop_reason") or self.finish
            usage = data.get("usage") or {}
            if isinstance(usage.get("output_tokens"), int):
                self.completion = usage["output_tokens"]
        elif "choices" in data or "usage" in data:
            self.whole(data)


def answer_facts(
    raw: bytes,
    *,
    status: int,
    ok: bool,
    latency_s: float,
    ttfb_s: float | None,
    tokens: tuple[int, int] | None,
) -> Facts:
    """The facts of one answer's bytes (a JSON body or an SSE stream)."""
    seen = _Seen()
    if ok:  # on a malformed answer, what was read so far stands
        with contextlib.suppress(orjson.JSONDecodeError, TypeError, AttributeError, ValueError):
            _read(raw, seen)
    prompt, completion = tokens if tokens is not None else (seen.prompt, seen.completion)
    return Facts(
        status=status,
        ok=ok,
        latency_s=latency_s,
        ttfb_s=ttfb_s,
        prompt_tokens=prompt,
        completion_tokens=completion,
        finish_reason=seen.finish,
        model=seen.model,
        text="".join(seen.text) if ok else None,
        tools=tuple(seen.tools),
    )


def _read(raw: bytes, seen: _Seen) -> None:
    head = raw[:64].lstrip()
    if head[:1] == b"{":
        obj = orjson.loads(raw)
        if isinstance(obj, dict):
            seen.whole(obj)
        return
    for line in raw.splitlines():
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if not payload or payload == b"[DONE]":
            continue
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        if isinstance(data, dict):
            seen.event(data)


def _dicts(value: object) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []
