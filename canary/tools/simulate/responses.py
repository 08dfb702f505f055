"""OpenAI Responses (``/v1/responses``) in OpenAI's wire shape, as the official ``openai``
SDK parses it (``client.responses.create``, and ``client.responses.stream``'s checks).

The response holds one output item: a ``message`` with an ``output_text`` part, or a
``function_call`` when ``tools`` are offered (``tool_choice: "none"`` declines,
``{"type": "function", "name": ...}`` names one); JSON text when ``text.format`` asks
for ``json_object`` or ``json_schema``. Cut at ``max_output_tokens`` it is
``"incomplete"`` (``incomplete_details.reason: "max_output_tokens"``), as OpenAI does. A
stream is typed events, each ``data`` carrying ``type`` and ``sequence_number``:
``response.created``, ``response.in_progress``, ``response.output_item.added``, then
``response.content_part.added``, a ``response.output_text.delta`` per word,
``response.output_text.done``, ``response.content_part.done`` (or a
``response.function_call_arguments.delta`` per word and ``.done``), then
``response.output_item.done`` and ``response.completed`` (``response.incomplete`` when
cut) with the whole response, usage included.
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


def create(call: Call) -> Reply:
    """``POST /v1/responses``."""
    payload = call.payload
    if not isinstance(payload.get("input"), str | list):
        raise Refused(400, "'input' must be a string or a list of items", "invalid_request")
    prompt = call.prompt(count_words(payload.get("instructions")) + count_words(payload["input"]))
    answer = compose(call.reply, _ask(payload))
    output = len(answer.words)
    usage = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + output,
    }
    response = _response(call, answer, usage)
    if not call.stream:
        return Reply(response, None, prompt, output)
    return Reply(None, _events(answer, response), prompt, output)


def _ask(payload: dict[str, Any]) -> Ask:
    tools = [
        Tool(tool["name"], tool.get("parameters"))
        for tool in dicts(payload.get("tools"))
        if tool.get("type") == "function" and isinstance(tool.get("name"), str)
    ]
    choice = payload.get("tool_choice")
    tool = None if choice == "none" else pick(tools, dig(choice, "name"))
    fmt = dig(payload, "text", "format")
    schema = json_asked(dig(fmt, "type"), dig(fmt, "schema"))
    return Ask(limit(payload, "max_output_tokens"), tool, schema)


def _response(call: Call, answer: Answer, usage: dict[str, Any]) -> dict[str, Any]:
    """The whole response object, echoing the request's settings as OpenAI does."""
    payload = call.payload
    fmt = dig(payload, "text", "format")
    choice = payload.get("tool_choice")
    return {
        "id": f"resp_{call.serial:08d}",
        "object": "response",
        "created_at": call.created,
        "status": "incomplete" if answer.truncated else "completed",
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if answer.truncated else None,
        "instructions": payload.get("instructions"),
        "max_output_tokens": payload.get("max_output_tokens"),
        "model": call.model,
        "output": [_item(call, answer)],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "temperature": 1.0,
        "text": {"format": fmt if isinstance(fmt, dict) else {"type": "text"}},
        "tool_choice": choice if isinstance(choice, str | dict) else "auto",
        "tools": dicts(payload.get("tools")),
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "metadata": {},
    }


def _item(call: Call, answer: Answer) -> dict[str, Any]:
    status = "incomplete" if answer.truncated else "completed"
    if answer.tool is None:
        content = [{"type": "output_text", "text": answer.text, "annotations": []}]
        return {
            "type": "message",
            "id": f"msg_{call.serial:08d}",
            "role": "assistant",
            "status": status,
            "content": content,
        }
    return {
        "type": "function_call",
        "id": f"fc_{call.serial:08d}",
        "call_id": f"call_{call.serial:08d}",
        "name": answer.tool,
        "arguments": answer.text,
        "status": status,
    }


def _events(answer: Answer, response: dict[str, Any]) -> list[bytes]:
    """The stream of ``response``: its lifecycle around its one item's, numbered in order."""
    started = {**response, "status": "in_progress", "incomplete_details": None}
    started |= {"output": [], "usage": None}
    item: dict[str, Any] = response["output"][0]
    empty: dict[str, Any] = {"content": []} if answer.tool is None else {"arguments": ""}
    opened = {**item, "status": "in_progress", **empty}
    inside = _text_steps if answer.tool is None else _call_steps
    end = "response.incomplete" if answer.truncated else "response.completed"
    steps: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": started}),
        ("response.in_progress", {"response": started}),
        ("response.output_item.added", {"output_index": 0, "item": opened}),
        *inside(answer, item["id"]),
        ("response.output_item.done", {"output_index": 0, "item": item}),
        (end, {"response": response}),
    ]
    return [
        sse({"type": kind, "sequence_number": number, **fields}, kind)
        for number, (kind, fields) in enumerate(steps)
    ]


def _text_steps(answer: Answer, item_id: str) -> list[tuple[str, dict[str, Any]]]:
    at = {"item_id": item_id, "output_index": 0, "content_index": 0}
    part = {"type": "output_text", "text": "", "annotations": []}
    return [
        ("response.content_part.added", {**at, "part": part}),
        *(
            ("response.output_text.delta", {**at, "delta": p, "logprobs": []})
            for p in answer.pieces
        ),
        ("response.output_text.done", {**at, "text": answer.text, "logprobs": []}),
        ("response.content_part.done", {**at, "part": {**part, "text": answer.text}}),
    ]


def _call_steps(answer: Answer, item_id: str) -> list[tuple[str, dict[str, Any]]]:
    at = {"item_id": item_id, "output_index": 0}
    return [
        *(("response.function_call_arguments.delta", {**at, "delta": p}) for p in answer.pieces),
        ("response.function_call_arguments.done", {**at, "arguments": answer.text}),
    ]
