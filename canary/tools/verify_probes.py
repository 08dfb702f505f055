"""The battery of ``canary verify`` (``canary.tools.verify``): what each probe asks both
backends, and how its answers are read into one observation per backend.

Every probe is a Chat Completions call at temperature 0 on a fixed prompt. ``PROBES``
covers the echoed model, prompt token counts (plain text and tokenizer edges), limits
honoured (``max_tokens``, ``stop``), streaming usage, JSON mode, tool calling, logprobs and
repeatability; the ``AGREEMENT_PROMPTS`` compare temperature-0 answers across the two
backends (one model gives the same text, ``MIN_AGREEMENT`` of the time at least).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

VERIFY_TIMEOUT_S = 60.0
MAX_TOKENS = 64
LATENCY_NOISE_MS = 50.0
BOUNDARY = "  naïve café 東京都 👩‍💻🇺🇳 supercalifragilistic 1234567890123 \t\n<|endoftext|> ünïcödé"
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@dataclass(frozen=True, slots=True)
class Probe:
    """One probe: its payload (model added per backend) and what it observes."""

    name: str
    payload: dict[str, Any]
    observe: Callable[[dict[str, Any]], object]
    calls: int = 1  # sent this many times (repeatability)
    across: bool = False  # one of the temperature-0 prompts compared across the backends


def _message(answer: dict[str, Any]) -> dict[str, Any]:
    choices = answer.get("choices") or [{}]
    return choices[0].get("message") or {}


def _text(answer: dict[str, Any]) -> str:
    return str(_message(answer).get("content") or "")


def usage_of(answer: dict[str, Any], key: str) -> object:
    return (answer.get("usage") or {}).get(key)


def as_int(value: object) -> int:
    return value if isinstance(value, int) else 0


def _json_ok(answer: dict[str, Any]) -> bool:
    try:
        json.loads(_text(answer))
    except ValueError:
        return False
    return True


def _tool(answer: dict[str, Any]) -> object:
    calls = _message(answer).get("tool_calls") or []
    return (calls[0].get("function") or {}).get("name") if calls else None


def _user(text: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "temperature": 0, **extra}


PROBES: tuple[Probe, ...] = (
    Probe("echoed model", _user("Say hello.", max_tokens=16), lambda a: a.get("model")),
    Probe(
        "prompt tokens (plain)",
        _user("The quick brown fox jumps over the lazy dog.", max_tokens=1),
        lambda a: usage_of(a, "prompt_tokens"),
    ),
    Probe(
        "prompt tokens (tokenizer edges)",
        _user(BOUNDARY, max_tokens=1),
        lambda a: usage_of(a, "prompt_tokens"),
    ),
    Probe(
        "max_tokens honoured",
        _user("Write a long story about the sea.", max_tokens=5),
        lambda a: as_int(usage_of(a, "completion_tokens")) <= 5,
    ),
    Probe(
        "stop honoured",
        _user("Count from 1 to 10, separated by spaces.", max_tokens=40, stop=["5"]),
        lambda a: "5" not in _text(a),
    ),
    Probe(
        "streaming with usage",
        _user("Say hello.", max_tokens=16, stream=True, stream_options={"include_usage": True}),
        lambda a: bool(a.get("streamed_usage")),
    ),
    Probe(
        "JSON mode",
        _user(
            'Answer in JSON: {"reply": "hi"}',
            max_tokens=MAX_TOKENS,
            response_format={"type": "json_object"},
        ),
        _json_ok,
    ),
    Probe(
        "tool calling",
        _user("What is the weather in Paris?", max_tokens=MAX_TOKENS, tools=[TOOL]),
        _tool,
    ),
    Probe(
        "logprobs offered",
        _user("Say hi.", max_tokens=4, logprobs=True, top_logprobs=2),
        lambda a: bool(((a.get("choices") or [{}])[0]).get("logprobs")),
    ),
    Probe(
        "temperature-0 repeatability",
        _user("Name three colours.", max_tokens=24),
        lambda a: _text(a),
        calls=2,
    ),
)


# Temperature-0 answers compared across the two backends: one model gives the same text
# (a provider's batching may change a token now and then, hence a share, not all).
AGREEMENT_PROMPTS = (
    "Complete: The capital of France is",
    "Name a famous painter.",
    "Write one word that rhymes with 'light'.",
    "Give the name of a fruit.",
    "Say a number between 1 and 100.",
    "Name a planet of the solar system.",
)
MIN_AGREEMENT = 2 / 3  # of those prompts answered alike, or the row differs
PROBES += tuple(
    Probe(f"temperature-0 answer {i}", _user(text, max_tokens=16), _text, across=True)
    for i, text in enumerate(AGREEMENT_PROMPTS, 1)
)
