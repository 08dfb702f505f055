"""Anthropic Messages (``/v1/messages``, ``/v1/messages/count_tokens``) in Anthropic's
wire shape, as the official ``anthropic`` SDK parses it.

A message answers a ``text`` block (``stop_reason: "end_turn"``), or a ``tool_use``
block when ``tools`` are offered (``"tool_use"``; ``tool_choice`` ``{"type": "none"}``
declines, ``{"type": "tool", "name": ...}`` names one), or JSON text when
``output_config.format`` asks for it; ``"max_tokens"`` when cut. ``max_tokens`` is
required, as Anthropic requires it. A stream is named events: ``message_start`` (its
usage holds ``input_tokens`` and ``output_tokens: 1``), ``content_block_start``,
``ping``, a ``content_block_delta`` per word (``text_delta``, or ``input_json_delta``
for a tool's input), ``content_block_stop``, ``message_delta`` (``stop_reason`` and
``usage.output_tokens`` only, as Anthropic documents), ``message_stop``.
Errors are ``{"type": "error", "error": {"type", "message"}}``.
"""

from __future__ import annotations

from typing import Any

import orjson

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

# HTTP status -> Anthropic's error type; other 4xx are invalid_request_error, 5xx api_error
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def create(call: Call) -> Reply:
    """``POST /v1/messages``."""
    prompt = call.prompt(_prompt_tokens(call.payload))
    answer = compose(call.reply, _ask(call.payload))
    stop = "max_tokens" if answer.truncated else "tool_use" if answer.tool else "end_turn"
    output = len(answer.words)
    message = {
        "id": f"msg_{call.serial:08d}",
        "type": "message",
        "role": "assistant",
        "model": call.model,
        "content": [_block(call, answer)],
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": _usage(prompt, output),
    }
    if not call.stream:
        return Reply(message, None, prompt, output)
    return Reply(None, _events(answer, message), prompt, output)


def count_tokens(call: Call) -> Reply:
    """``POST /v1/messages/count_tokens``: what ``create`` would bill as input. Free."""
    return Reply({"input_tokens": call.prompt(_prompt_tokens(call.payload))})


def error(refusal: Refused) -> dict[str, Any]:
    """A refusal in Anthropic's error shape."""
    status = refusal.status
    default = "api_error" if status >= 500 else "invalid_request_error"
    return {
        "type": "error",
        "error": {"type": ERROR_TYPES.get(status, default), "message": str(refusal)},
    }


def _prompt_tokens(payload: dict[str, Any]) -> int:
    """Words of ``system`` and ``messages`` (their text blocks), at least 1."""
    if not isinstance(payload.get("messages"), list):
        raise Refused(400, "messages: Input should be a valid list", "invalid_request")
    return max(1, count_words(payload.get("system")) + count_words(payload["messages"]))


def _ask(payload: dict[str, Any]) -> Ask:
    most = limit(payload, "max_tokens")
    if most is None:
        raise Refused(400, "max_tokens: Field required", "invalid_request")
    tools = [
        Tool(tool["name"], tool.get("input_schema"))
        for tool in dicts(payload.get("tools"))
        if isinstance(tool.get("name"), str) and "input_schema" in tool  # not server tools
    ]
    choice = payload.get("tool_choice")
    tool = None if dig(choice, "type") == "none" else pick(tools, dig(choice, "name"))
    fmt = dig(payload, "output_config", "format")
    return Ask(most, tool, json_asked(dig(fmt, "type"), dig(fmt, "schema")))


def _block(call: Call, answer: Answer) -> dict[str, Any]:
    """The whole content block: the text, or the tool call with its parsed input."""
    if answer.tool is None:
        return {"type": "text", "text": answer.text}
    try:
        arguments = orjson.loads(answer.text)
    except orjson.JSONDecodeError:  # cut at max_tokens: what was said does not parse
        arguments = {}
    return {
        "type": "tool_use",
        "id": f"toolu_{call.serial:08d}",
        "name": answer.tool,
        "input": arguments,
    }


def _events(answer: Answer, message: dict[str, Any]) -> list[bytes]:
    """The stream of ``message``, a delta per word of ``answer``."""
    prompt = message["usage"]["input_tokens"]
    started = {**message, "content": [], "stop_reason": None, "usage": _usage(prompt, 1)}
    block = message["content"][0]
    opened, kind, key = (
        ({**block, "text": ""}, "text_delta", "text")
        if answer.tool is None
        else ({**block, "input": {}}, "input_json_delta", "partial_json")
    )
    stopped = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": started},
        {"type": "content_block_start", "index": 0, "content_block": opened},
        {"type": "ping"},
        *(
            {"type": "content_block_delta", "index": 0, "delta": {"type": kind, key: piece}}
            for piece in answer.pieces
        ),
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": stopped, "usage": {"output_tokens": len(answer.words)}},
        {"type": "message_stop"},
    ]
    return [sse(event, event["type"]) for event in events]


def _usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
