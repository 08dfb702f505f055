"""The fake provider as a real process, driven by the official anthropic and openai SDKs:
Anthropic Messages and OpenAI Responses plain and streamed, tool calls, JSON answers,
the usage each SDK reads against what the simulator says it billed, and cut streams."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any, Literal

import anthropic
import httpx
import httpx2
import openai
import pytest
from pydantic import BaseModel

from canary.tools.simulate import Faults
from tests.helpers import free_port, run_process

pytestmark = pytest.mark.e2e

REPLY = "Hello from sdk! This is a simulated reply."
USER: Any = [{"role": "user", "content": "say hello please"}]  # 3 prompt tokens
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"],
}


class City(BaseModel):
    name: str


class Forecast(BaseModel):
    """Nested (a $ref), a Literal (an enum) and an int: what SDK parse helpers send."""

    city: City
    unit: Literal["celsius", "fahrenheit"]
    days: int


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    """One simulator process for the module, named "sdk"."""
    port = free_port()
    args = ["-m", "canary", "simulate", "--port", str(port), "--name", "sdk", "--seed", "1"]
    with run_process([sys.executable, *args], f"http://127.0.0.1:{port}/_sim/stats"):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def sim(base: str) -> str:
    """The simulator's base URL, with default faults and zeroed stats."""
    httpx.post(f"{base}/_sim/faults", json=asdict(Faults())).raise_for_status()
    httpx.post(f"{base}/_sim/reset").raise_for_status()
    return base


@pytest.fixture
def claude(sim: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=sim, api_key="sk-ant-test", max_retries=0) as client:
        yield client


@pytest.fixture
def gpt(sim: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{sim}/v1", api_key="sk-test", max_retries=0) as client:
        yield client


def billed(url: str) -> tuple[int, int]:
    """(prompt, completion) tokens the simulator says it sent since the last reset."""
    tokens = httpx.get(f"{url}/_sim/stats").json()["tokens"]
    return tokens["prompt"], tokens["completion"]


def set_faults(url: str, **patch: object) -> None:
    httpx.post(f"{url}/_sim/faults", json=patch).raise_for_status()


# --- Anthropic Messages -------------------------------------------------------------------


def test_anthropic_client_gets_a_message(claude: anthropic.Anthropic, sim: str) -> None:
    """messages.create parses the answer; its usage is what the simulator billed."""
    raw = claude.messages.with_raw_response.create(
        model="claude-sonnet-4-5", max_tokens=256, system="be brief", messages=USER
    )
    message = raw.parse()
    assert raw.headers["x-sim-name"] == "sdk"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == REPLY  # type: ignore[union-attr]
    assert (message.stop_reason, message.model) == ("end_turn", "claude-sonnet-4-5")
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens) == billed(sim) == (5, 8)
    assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (0, 0)


def test_anthropic_client_streams_a_message(claude: anthropic.Anthropic, sim: str) -> None:
    """messages.stream yields the words as they come and ends with the whole message."""
    with claude.messages.stream(model="claude-x", max_tokens=256, messages=USER) as stream:
        words = list(stream.text_stream)
        message = stream.get_final_message()
    assert len(words) == 8 and "".join(words) == REPLY
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == billed(sim) == (3, 8)


def test_anthropic_raw_stream_events_in_order(claude: anthropic.Anthropic) -> None:
    """create(stream=True) gives each event typed; the SDK swallows the ping."""
    events = list(claude.messages.create(model="c", max_tokens=3, messages=USER, stream=True))
    assert [event.type for event in events] == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 3,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[-2].delta.stop_reason == "max_tokens"  # type: ignore[union-attr]


def test_anthropic_client_counts_tokens(claude: anthropic.Anthropic, sim: str) -> None:
    """count_tokens says what a message would bill as input, and bills nothing itself."""
    counted = claude.messages.count_tokens(model="c", system="be brief", messages=USER)
    assert counted.input_tokens == 5
    assert billed(sim) == (0, 0)


def test_anthropic_client_gets_a_tool_use(claude: anthropic.Anthropic) -> None:
    """Offered a tool, the answer is a tool_use the SDK parses, plain and streamed."""
    tools: Any = [{"name": "get_weather", "description": "weather", "input_schema": WEATHER}]
    message = claude.messages.create(model="c", max_tokens=256, tools=tools, messages=USER)
    with claude.messages.stream(model="c", max_tokens=256, tools=tools, messages=USER) as s:
        streamed = s.get_final_message()
    for answer in (message, streamed):
        assert answer.stop_reason == "tool_use"
        [block] = answer.content
        assert block.type == "tool_use"
        assert (block.name, block.input) == ("get_weather", {"city": REPLY})


def test_anthropic_client_parses_a_json_answer(claude: anthropic.Anthropic) -> None:
    """output_format=Model sends output_config.format; the answer parses into the model."""
    with claude.messages.stream(
        model="c", max_tokens=256, messages=USER, output_format=Forecast
    ) as stream:
        message = stream.get_final_message()
    assert message.parsed_output == Forecast(city=City(name=REPLY), unit="celsius", days=1)


@pytest.mark.parametrize(
    ("status", "error", "kind"),
    [
        (529, anthropic.OverloadedError, "overloaded_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
    ],
)
def test_anthropic_client_raises_typed_errors(
    claude: anthropic.Anthropic, sim: str, status: int, error: type[Exception], kind: str
) -> None:
    """Injected errors reach the SDK as its own error classes, with Anthropic's body."""
    set_faults(sim, error_rate=1.0, status_code=status)
    with pytest.raises(error) as caught:
        claude.messages.create(model="c", max_tokens=16, messages=USER)
    assert isinstance(caught.value, anthropic.APIStatusError)
    assert caught.value.body["error"]["type"] == kind  # type: ignore[index]


def test_cut_stream_raises_in_the_anthropic_client(claude: anthropic.Anthropic, sim: str) -> None:
    """A cut message stream raises APIConnectionError (an incomplete chunked read) in both
    the raw stream and messages.stream, after the events that did arrive."""
    set_faults(sim, cut_after=5)  # message_start, block start, ping, two deltas
    received: list[str] = []
    with pytest.raises(anthropic.APIConnectionError) as caught:
        for event in claude.messages.create(model="c", max_tokens=64, messages=USER, stream=True):
            received.append(event.type)
    assert received == ["message_start", "content_block_start", *["content_block_delta"] * 2]
    assert isinstance(caught.value.__cause__, httpx2.RemoteProtocolError)
    assert "incomplete chunked read" in str(caught.value.__cause__)
    words: list[str] = []
    with (
        pytest.raises(anthropic.APIConnectionError),
        claude.messages.stream(model="c", max_tokens=64, messages=USER) as stream,
    ):
        words.extend(stream.text_stream)
    assert words == ["Hello", " from"]
    assert httpx.get(f"{sim}/_sim/stats").json()["cut"] == 2
    assert billed(sim) == (0, 0)  # a cut answer bills nothing


# --- OpenAI Responses ---------------------------------------------------------------------


def test_openai_client_gets_a_response(gpt: openai.OpenAI, sim: str) -> None:
    """responses.create parses the answer; output_text and usage are what was sent."""
    response = gpt.responses.create(model="gpt-4.1", instructions="be brief", input="hello there")
    assert (response.status, response.output_text) == ("completed", REPLY)
    assert response.usage is not None
    usage = response.usage
    assert (usage.input_tokens, usage.output_tokens) == billed(sim) == (4, 8)
    assert usage.total_tokens == 12


def test_openai_client_streams_a_response(gpt: openai.OpenAI, sim: str) -> None:
    """stream=True gives typed events, the completed one with usage; responses.stream checks
    the items' identities and assembles the same response."""
    events = list(gpt.responses.create(model="gpt-4.1", input=USER, stream=True))
    types = [event.type for event in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-1] == "response.completed"
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == REPLY
    completed = events[-1].response  # type: ignore[union-attr]
    assert completed.usage is not None and completed.usage.output_tokens == 8
    with gpt.responses.stream(model="gpt-4.1", input=USER) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == final.output_text == REPLY
    assert billed(sim) == (6, 16)


def test_openai_client_gets_function_calls(gpt: openai.OpenAI) -> None:
    """Offered functions, Responses answer a function_call (plain and streamed) and chat a
    tool call the chat stream helper assembles."""
    tools: Any = [{"type": "function", "name": "get_weather", "parameters": WEATHER}]
    plain = gpt.responses.create(model="gpt-4.1", input="weather?", tools=tools)
    with gpt.responses.stream(model="gpt-4.1", input="weather?", tools=tools) as stream:
        streamed = stream.get_final_response()
    for response in (plain, streamed):
        [item] = response.output
        assert item.type == "function_call"
        assert (item.name, item.arguments) == ("get_weather", f'{{"city": "{REPLY}"}}')
    chat_tools: Any = [
        {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}
    ]
    with gpt.chat.completions.stream(model="gpt-4.1", messages=USER, tools=chat_tools) as chat:
        completion = chat.get_final_completion()
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert (call.function.name, call.function.arguments) == (
        "get_weather",
        f'{{"city": "{REPLY}"}}',
    )


def test_openai_client_parses_json_answers(gpt: openai.OpenAI) -> None:
    """The parse helpers send a strict json_schema; the answer parses into the model."""
    expected = Forecast(city=City(name=REPLY), unit="celsius", days=1)
    chat = gpt.chat.completions.parse(model="gpt-4.1", messages=USER, response_format=Forecast)
    assert chat.choices[0].message.parsed == expected
    response = gpt.responses.parse(model="gpt-4.1", input="forecast", text_format=Forecast)
    assert response.output_parsed == expected


def test_cut_stream_raises_in_the_openai_responses_client(gpt: openai.OpenAI, sim: str) -> None:
    """A cut Responses stream raises APIConnectionError (an incomplete chunked read), in the
    raw stream and in responses.stream, after the events that did arrive."""
    set_faults(sim, cut_after=5)
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError) as caught:
        for event in gpt.responses.create(model="gpt-4.1", input="hi", stream=True):
            received.append(event.type)
    assert received[-1] == "response.output_text.delta" and len(received) == 5
    assert isinstance(caught.value.__cause__, httpx2.RemoteProtocolError)
    with (
        pytest.raises(openai.APIConnectionError),
        gpt.responses.stream(model="gpt-4.1", input="hi") as stream,
    ):
        for _ in stream:
            pass
    assert httpx.get(f"{sim}/_sim/stats").json()["cut"] == 2
    assert billed(sim) == (0, 0)
