"""OpenAI Chat Completions (``/v1/chat/completions``) and legacy Completions
(``/v1/completions``): the same answer, the text in ``message.content`` or in ``text``.

Streams send a chunk per word, a finish chunk, the usage chunk when
``stream_options.include_usage`` asks for it (``usage: null`` on every chunk before it,
as OpenAI does), then ``data: [DONE]``.
"""

from __future__ import annotations

from typing import Any

from canary.tools.simulate.answer import Call, Reply, count_words, limit, pieces, sse
from canary.tools.simulate.asgi import Refused

DONE = b"data: [DONE]\n\n"


def completion(call: Call) -> Reply:
    """``POST /v1/chat/completions``."""
    messages = call.payload.get("messages")
    if not isinstance(messages, list):
        raise Refused(400, "'messages' must be a list", "invalid_request")
    return _complete(call, count_words(messages), chat=True)


def legacy(call: Call) -> Reply:
    """``POST /v1/completions``."""
    if "prompt" not in call.payload:
        raise Refused(400, "'prompt' is required", "invalid_request")
    return _complete(call, count_words(call.payload["prompt"]), chat=False)


def _complete(call: Call, prompt_words: int, *, chat: bool) -> Reply:
    """Chat and legacy completions differ only in names and in where the text goes."""
    most = limit(call.payload, "max_completion_tokens", "max_tokens")
    words = call.reply if most is None else call.reply[:most]
    finish = "length" if len(words) < len(call.reply) else "stop"
    usage = _usage(max(1, prompt_words), len(words))
    prefix, kind = ("chatcmpl", "chat.completion") if chat else ("cmpl", "text_completion")
    base: dict[str, Any] = {"id": f"{prefix}-{call.serial:08d}", "object": kind}
    base |= {"created": call.created, "model": call.model}
    tokens = usage["prompt_tokens"], usage["completion_tokens"]
    if not call.stream:
        text = " ".join(words)
        whole = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
        body = {**base, "choices": [_choice(whole, finish)], "usage": usage}
        return Reply(body, None, *tokens)
    parts: list[dict[str, Any]]
    if chat:
        base["object"] = "chat.completion.chunk"
        said = pieces(words)
        first = {"delta": {"role": "assistant", "content": said[0]}}
        parts = [first, *({"delta": {"content": p}} for p in said[1:]), {"delta": {}}]
    else:
        parts = [*({"text": p} for p in pieces(words)), {"text": ""}]
    chunks = [{**base, "choices": [_choice(part, None)]} for part in parts]
    chunks[-1]["choices"][0]["finish_reason"] = finish
    return Reply(None, _events(chunks, call, usage), *tokens)


def _events(chunks: list[dict[str, Any]], call: Call, usage: dict[str, int]) -> list[bytes]:
    options = call.payload.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        for chunk in chunks:  # as OpenAI does: null on every chunk, then a usage chunk
            chunk["usage"] = None
        base = {key: chunks[0][key] for key in ("id", "object", "created", "model")}
        chunks.append({**base, "choices": [], "usage": usage})
    return [*(sse(chunk) for chunk in chunks), DONE]


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    total = prompt_tokens + completion_tokens
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": total,
    }


def _choice(part: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {"index": 0, **part, "logprobs": None, "finish_reason": finish}
