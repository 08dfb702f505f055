"""OpenAI Chat Completions (``/v1/chat/completions``) and legacy Completions
(``/v1/completions``): the same answer, the text in ``message.content`` or in ``text``.

Chat also calls tools (``tools``, ``tool_choice``: ``finish_reason: "tool_calls"`` and
``message.tool_calls``) and answers JSON (``response_format`` ``json_object`` or
``json_schema``). Streams send a chunk per word (of the text, or of the tool call's
``arguments``), a finish chunk, the usage chunk when ``stream_options.include_usage``
asks for it (``usage: null`` on every chunk before it, as OpenAI does), then
``data: [DONE]``.
"""

from __future__ import annotations

from typing import Any

from canary.tools.simulate.answer import (
    Answer,
    Ask,
    Call,
    Reply,
    Tool,
    compose,
    count_words,
    dicts,
    dig,
    json_asked,
    limit,
    pick,
    sse,
)
from canary.tools.simulate.asgi import Refused

DONE = b"data: [DONE]\n\n"


def completion(call: Call) -> Reply:
    """``POST /v1/chat/completions``."""
    messages = call.payload.get("messages")
    if not isinstance(messages, list):
        raise Refused(400, "'messages' must be a list", "invalid_request")
    answer = compose(call.reply, _ask(call.payload))
    usage = _usage(call.prompt(count_words(messages)), len(answer.words))
    base = _base(call, "chatcmpl-", "chat.completion")
    finish = "length" if answer.truncated else "tool_calls" if answer.tool else "stop"
    if not call.stream:
        return _whole(base, {"message": _message(call, answer)}, finish, usage)
    base["object"] = "chat.completion.chunk"
    return _streamed(call, base, [*_deltas(call, answer), {"delta": {}}], finish, usage)


def legacy(call: Call) -> Reply:
    """``POST /v1/completions``."""
    if "prompt" not in call.payload:
        raise Refused(400, "'prompt' is required", "invalid_request")
    answer = compose(call.reply, Ask(limit(call.payload, "max_completion_tokens", "max_tokens")))
    usage = _usage(call.prompt(count_words(call.payload["prompt"])), len(answer.words))
    base = _base(call, "cmpl-", "text_completion")
    finish = "length" if answer.truncated else "stop"
    if not call.stream:
        return _whole(base, {"text": answer.text}, finish, usage)
    parts = [*({"text": piece} for piece in answer.pieces), {"text": ""}]
    return _streamed(call, base, parts, finish, usage)


def _ask(payload: dict[str, Any]) -> Ask:
    tools = [
        Tool(function["name"], function.get("parameters"))
        for function in (dig(tool, "function") for tool in dicts(payload.get("tools")))
        if isinstance(function, dict) and isinstance(function.get("name"), str)
    ]
    choice = payload.get("tool_choice")
    tool = None if choice == "none" else pick(tools, dig(choice, "function", "name"))
    fmt = payload.get("response_format")
    schema = json_asked(dig(fmt, "type"), dig(fmt, "json_schema", "schema"))
    return Ask(limit(payload, "max_completion_tokens", "max_tokens"), tool, schema)


def _message(call: Call, answer: Answer) -> dict[str, Any]:
    if answer.tool is None:
        return {"role": "assistant", "content": answer.text}
    function = {"name": answer.tool, "arguments": answer.text}
    tool_call = {"id": f"call_{call.serial:08d}", "type": "function", "function": function}
    return {"role": "assistant", "content": None, "tool_calls": [tool_call]}


def _deltas(call: Call, answer: Answer) -> list[dict[str, Any]]:
    """The stream's deltas: the role with the first word (or the tool call), then a word each."""
    said = answer.pieces
    if answer.tool is None:
        opening = {"delta": {"role": "assistant", "content": said[0]}}
        return [opening, *({"delta": {"content": piece}} for piece in said[1:])]
    function = {"name": answer.tool, "arguments": ""}
    opened = {"index": 0, "id": f"call_{call.serial:08d}", "type": "function", "function": function}
    first: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [opened]}
    more = [{"tool_calls": [{"index": 0, "function": {"arguments": piece}}]} for piece in said]
    return [{"delta": delta} for delta in (first, *more)]


def _base(call: Call, prefix: str, kind: str) -> dict[str, Any]:
    return {
        "id": f"{prefix}{call.serial:08d}",
        "object": kind,
        "created": call.created,
        "model": call.model,
    }


def _whole(base: dict[str, Any], part: dict[str, Any], finish: str, usage: dict[str, int]) -> Reply:
    body = {**base, "choices": [_choice(part, finish)], "usage": usage}
    return Reply(body, None, usage["prompt_tokens"], usage["completion_tokens"])


def _streamed(
    call: Call,
    base: dict[str, Any],
    parts: list[dict[str, Any]],
    finish: str,
    usage: dict[str, int],
) -> Reply:
    """A chunk per part, the last one finishing; the usage chunk when asked; [DONE]."""
    chunks = [{**base, "choices": [_choice(part, None)]} for part in parts]
    chunks[-1]["choices"][0]["finish_reason"] = finish
    if dig(call.payload, "stream_options", "include_usage") is True:
        for chunk in chunks:  # as OpenAI does: null on every chunk, then a usage chunk
            chunk["usage"] = None
        chunks.append({**base, "choices": [], "usage": usage})
    events = [*(sse(chunk) for chunk in chunks), DONE]
    return Reply(None, events, usage["prompt_tokens"], usage["completion_tokens"])


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    total = prompt_tokens + completion_tokens
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": total,
    }


def _choice(part: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {"index": 0, **part, "logprobs": None, "finish_reason": finish}
