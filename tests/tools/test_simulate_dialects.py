"""The fake provider's dialects in-process: Anthropic Messages and OpenAI Responses in their
wire shapes, tool calls and JSON answers in every dialect, the same faults and token counts
for all, and any JSON body answered in the path's error shape, never with a crash."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canary.tools.simulate import Faults, Simulator, StreamCut, create_sim_app
from canary.tools.simulate.schema import sample

NOW = 1_700_000_000.0
REPLY = "Hello from sim! This is a simulated reply."  # 8 words: 8 completion tokens
USER = [{"role": "user", "content": "say hello please"}]  # 3 words: 3 prompt tokens
MESSAGES = {"model": "claude-x", "max_tokens": 64, "messages": USER}
RESPONSES = {"model": "gpt-4.1", "input": "say hello please"}
CHAT = {"model": "gpt-4.1", "messages": USER}
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1},
    },
    "required": ["city", "unit"],
}
ARGUMENTS = {"city": REPLY, "unit": "celsius"}  # required only, strings the reply


class Sleeps:
    """The simulator's sleep seam: records each delay, sleeps not at all."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def app(sleeps: Sleeps) -> Simulator:
    return create_sim_app(rng=random.Random(7), clock=lambda: NOW, sleep=sleeps)


@pytest.fixture
async def client(app: Simulator) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
        yield client


def named_events(text: str) -> list[tuple[str, Any]]:
    """(event name, decoded data) of every event of a named-event SSE body."""
    events = []
    for block in text.split("\n\n"):
        if block:
            name, data = block.split("\n")
            assert name.startswith("event: ") and data.startswith("data: ")
            events.append((name.removeprefix("event: "), orjson.loads(data.removeprefix("data: "))))
    return events


# --- Anthropic Messages -------------------------------------------------------------------


async def test_message_answers_in_anthropic_shape(client: httpx.AsyncClient) -> None:
    """A message is Anthropic's object, its usage the words of system and messages."""
    response = await client.post("/v1/messages", json={**MESSAGES, "system": "be brief"})
    assert response.status_code == 200
    assert response.json() == {
        "id": "msg_00000001",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [{"type": "text", "text": REPLY}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 5,
            "output_tokens": 8,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


async def test_message_stream_sends_anthropics_named_events(client: httpx.AsyncClient) -> None:
    """The stream: message_start, block start, ping, a delta per word, stops, message_delta."""
    response = await client.post("/v1/messages", json={**MESSAGES, "stream": True})
    assert response.headers["content-type"] == "text/event-stream"
    events = named_events(response.text)
    assert all(name == data["type"] for name, data in events)
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 8,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert (start["content"], start["stop_reason"]) == ([], None)
    assert start["usage"]["input_tokens"] == 3 and start["usage"]["output_tokens"] == 1
    assert events[1][1]["content_block"] == {"type": "text", "text": ""}
    deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
    assert all(delta["type"] == "text_delta" for delta in deltas)
    assert "".join(delta["text"] for delta in deltas) == REPLY
    assert events[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 8},
    }


async def test_max_tokens_stops_a_message_early(client: httpx.AsyncClient) -> None:
    """``max_tokens`` cuts the reply to that many words; the stop reason says so."""
    body = (await client.post("/v1/messages", json={**MESSAGES, "max_tokens": 3})).json()
    assert body["content"][0]["text"] == "Hello from sim!"
    assert (body["stop_reason"], body["usage"]["output_tokens"]) == ("max_tokens", 3)


async def test_count_tokens_is_what_a_message_bills(client: httpx.AsyncClient) -> None:
    """count_tokens answers the input tokens the same call would bill, and bills nothing."""
    request = {**MESSAGES, "system": [{"type": "text", "text": "be very brief"}]}
    counted = (await client.post("/v1/messages/count_tokens", json=request)).json()
    billed = (await client.post("/v1/messages", json=request)).json()["usage"]["input_tokens"]
    assert counted == {"input_tokens": billed} == {"input_tokens": 6}
    assert (await client.get("/_sim/stats")).json()["tokens"] == {"prompt": 6, "completion": 8}


@pytest.mark.parametrize(
    ("path", "content", "status", "kind"),
    [
        ("/v1/messages", {"model": "c", "messages": USER}, 400, "invalid_request_error"),
        ("/v1/messages", {"model": "c", "max_tokens": 9}, 400, "invalid_request_error"),
        ("/v1/messages", {"max_tokens": 9, "messages": USER}, 400, "invalid_request_error"),
        ("/v1/messages/count_tokens", {"model": "c"}, 400, "invalid_request_error"),
        ("/v1/messages/nope", {}, 404, "not_found_error"),
    ],
)
async def test_bad_messages_get_anthropic_errors(
    client: httpx.AsyncClient, path: str, content: object, status: int, kind: str
) -> None:
    """A missing max_tokens, messages or model, or an unknown path: Anthropic's error shape."""
    response = await client.post(path, json=content)
    assert response.status_code == status
    body = response.json()
    assert set(body) == {"type", "error"} and body["type"] == "error"
    assert body["error"]["type"] == kind and body["error"]["message"]


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (500, "api_error"),
        (503, "api_error"),
        (529, "overloaded_error"),
        (401, "authentication_error"),
    ],
)
async def test_injected_errors_take_anthropics_types(
    app: Simulator, client: httpx.AsyncClient, status: int, kind: str
) -> None:
    """An injected error under /v1/messages is Anthropic's error for that status."""
    app.faults.update({"error_rate": 1.0, "status_code": status})
    response = await client.post("/v1/messages", json=MESSAGES)
    assert response.status_code == status
    assert response.json() == {
        "type": "error",
        "error": {"type": kind, "message": f"Simulated error {status} from sim"},
    }


async def test_rate_limit_under_messages_is_a_rate_limit_error(
    app: Simulator, client: httpx.AsyncClient
) -> None:
    """A simulated 429 keeps its Retry-After headers and says rate_limit_error."""
    app.faults.update({"rate_limit_rate": 1.0, "retry_after_s": 2})
    response = await client.post("/v1/messages", json=MESSAGES)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    assert response.json()["error"]["type"] == "rate_limit_error"


async def test_a_wrong_key_under_messages_is_an_authentication_error() -> None:
    """With api_key set, a call without it under /v1/messages is Anthropic's 401."""
    app = create_sim_app(api_key="sk-sim-right-0a1b")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://s") as c:
        refused = await c.post("/v1/messages", json=MESSAGES, headers={"x-api-key": "sk-wrong"})
        allowed = await c.post(
            "/v1/messages", json=MESSAGES, headers={"x-api-key": "sk-sim-right-0a1b"}
        )
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "authentication_error"
    assert "sk-" not in refused.text
    assert allowed.status_code == 200


# --- OpenAI Responses ---------------------------------------------------------------------


async def test_response_answers_in_openai_shape(client: httpx.AsyncClient) -> None:
    """A response holds one completed message item; usage counts instructions and input."""
    request = {**RESPONSES, "instructions": "be brief"}
    body = (await client.post("/v1/responses", json=request)).json()
    assert (body["id"], body["object"], body["status"]) == (
        "resp_00000001",
        "response",
        "completed",
    )
    assert (body["model"], body["created_at"], body["error"]) == ("gpt-4.1", int(NOW), None)
    assert body["output"] == [
        {
            "type": "message",
            "id": "msg_00000001",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": REPLY, "annotations": []}],
        }
    ]
    assert body["usage"] == {
        "input_tokens": 5,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 8,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 13,
    }


async def test_response_stream_sends_typed_numbered_events(client: httpx.AsyncClient) -> None:
    """The stream's events come in OpenAI's order, numbered 0, 1, ...; the last is the whole."""
    whole = (await client.post("/v1/responses", json=RESPONSES)).json()
    response = await client.post("/v1/responses", json={**RESPONSES, "stream": True})
    events = named_events(response.text)
    assert all(name == data["type"] for name, data in events)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert [name for name, _ in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 8,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    created = events[0][1]["response"]
    assert (created["status"], created["output"], created["usage"]) == ("in_progress", [], None)
    deltas = [data["delta"] for name, data in events if name == "response.output_text.delta"]
    assert "".join(deltas) == events[-4][1]["text"] == REPLY
    completed = events[-1][1]["response"]
    renumbered = json.loads(json.dumps(whole).replace("00000001", "00000002"))
    assert completed == renumbered  # the stream ends with what a plain call answers


async def test_max_output_tokens_leaves_a_response_incomplete(client: httpx.AsyncClient) -> None:
    """Cut at max_output_tokens, a response is incomplete, and its stream ends so."""
    request = {**RESPONSES, "max_output_tokens": 2}
    body = (await client.post("/v1/responses", json=request)).json()
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0]["content"][0]["text"] == "Hello from"
    stream = await client.post("/v1/responses", json={**request, "stream": True})
    assert named_events(stream.text)[-1][0] == "response.incomplete"


async def test_responses_refuse_a_missing_input(client: httpx.AsyncClient) -> None:
    """A Responses call without input gets OpenAI's error shape."""
    response = await client.post("/v1/responses", json={"model": "gpt-4.1"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"


# --- tool calls ---------------------------------------------------------------------------


async def test_chat_calls_the_first_tool_with_its_required_arguments(
    client: httpx.AsyncClient,
) -> None:
    """Offered tools, chat answers a call of the first with its required arguments filled."""
    tools = [
        {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
        {"type": "function", "function": {"name": "other", "parameters": {}}},
    ]
    body = (await client.post("/v1/chat/completions", json={**CHAT, "tools": tools})).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert (call["id"], call["type"], call["function"]["name"]) == (
        "call_00000001",
        "function",
        "get_weather",
    )
    assert json.loads(call["function"]["arguments"]) == ARGUMENTS
    words = len(call["function"]["arguments"].split())
    assert body["usage"]["completion_tokens"] == words == 11


async def test_chat_streams_a_tool_call_in_argument_pieces(client: httpx.AsyncClient) -> None:
    """The stream opens the call with its id and name, then sends the arguments word by word."""
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]
    request = {**CHAT, "tools": tools, "stream": True}
    text = (await client.post("/v1/chat/completions", json=request)).text
    chunks = [orjson.loads(e.removeprefix("data: ")) for e in text.split("\n\n")[:-2]]
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
    opened = deltas[0]["tool_calls"][0]
    assert (opened["id"], opened["function"]) == (
        "call_00000001",
        {"name": "get_weather", "arguments": ""},
    )
    pieces = [d["tool_calls"][0]["function"]["arguments"] for d in deltas[1:-1]]
    assert json.loads("".join(pieces)) == ARGUMENTS
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    ("choice", "called"),
    [
        ("none", None),
        ("auto", "a"),
        ("required", "a"),
        ({"type": "function", "function": {"name": "b"}}, "b"),
    ],
)
async def test_tool_choice_picks_the_tool_or_none(
    client: httpx.AsyncClient, choice: object, called: str | None
) -> None:
    """tool_choice "none" answers text; a named function is the one called."""
    tools = [{"type": "function", "function": {"name": n, "parameters": WEATHER}} for n in "ab"]
    request = {**CHAT, "tools": tools, "tool_choice": choice}
    message = (await client.post("/v1/chat/completions", json=request)).json()["choices"][0][
        "message"
    ]
    if called is None:
        assert message["content"] == REPLY and "tool_calls" not in message
    else:
        assert message["tool_calls"][0]["function"]["name"] == called


async def test_anthropic_answers_a_tool_use_block(client: httpx.AsyncClient) -> None:
    """Offered tools, a message is a tool_use block with parsed input; streamed as JSON pieces."""
    tools = [{"name": "get_weather", "description": "the weather", "input_schema": WEATHER}]
    request = {**MESSAGES, "tools": tools}
    body = (await client.post("/v1/messages", json=request)).json()
    assert body["stop_reason"] == "tool_use"
    assert body["content"] == [
        {"type": "tool_use", "id": "toolu_00000001", "name": "get_weather", "input": ARGUMENTS}
    ]
    events = named_events(
        (await client.post("/v1/messages", json={**request, "stream": True})).text
    )
    assert events[1][1]["content_block"] == {
        "type": "tool_use",
        "id": "toolu_00000002",
        "name": "get_weather",
        "input": {},
    }
    deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
    assert {delta["type"] for delta in deltas} == {"input_json_delta"}
    assert json.loads("".join(delta["partial_json"] for delta in deltas)) == ARGUMENTS
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


async def test_responses_answer_a_function_call_item(client: httpx.AsyncClient) -> None:
    """Offered functions, a response's item is a function_call; streamed as argument deltas."""
    tools = [{"type": "function", "name": "get_weather", "parameters": WEATHER}]
    request = {**RESPONSES, "tools": tools}
    body = (await client.post("/v1/responses", json=request)).json()
    [item] = body["output"]
    assert {k: item[k] for k in ("type", "id", "call_id", "name", "status")} == {
        "type": "function_call",
        "id": "fc_00000001",
        "call_id": "call_00000001",
        "name": "get_weather",
        "status": "completed",
    }
    assert json.loads(item["arguments"]) == ARGUMENTS
    events = named_events(
        (await client.post("/v1/responses", json={**request, "stream": True})).text
    )
    deltas = [d["delta"] for name, d in events if name == "response.function_call_arguments.delta"]
    assert json.loads("".join(deltas)) == ARGUMENTS
    assert events[-3][0] == "response.function_call_arguments.done"


# --- JSON answers -------------------------------------------------------------------------


CHAT_TEXT = "choices", 0, "message", "content"
RESPONSE_TEXT = "output", 0, "content", 0, "text"
OBJECT = {"reply": REPLY}  # what json_object gets


@pytest.mark.parametrize(
    ("path", "request_body", "where", "value"),
    [
        (
            "/v1/chat/completions",
            {**CHAT, "response_format": {"type": "json_object"}},
            CHAT_TEXT,
            OBJECT,
        ),
        (
            "/v1/chat/completions",
            {
                **CHAT,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "w", "schema": WEATHER},
                },
            },
            CHAT_TEXT,
            ARGUMENTS,
        ),
        (
            "/v1/responses",
            {**RESPONSES, "text": {"format": {"type": "json_object"}}},
            RESPONSE_TEXT,
            OBJECT,
        ),
        (
            "/v1/responses",
            {
                **RESPONSES,
                "text": {"format": {"type": "json_schema", "name": "w", "schema": WEATHER}},
            },
            RESPONSE_TEXT,
            ARGUMENTS,
        ),
        (
            "/v1/messages",
            {**MESSAGES, "output_config": {"format": {"type": "json_schema", "schema": WEATHER}}},
            ("content", 0, "text"),
            ARGUMENTS,
        ),
    ],
    ids=["chat-object", "chat-schema", "responses-object", "responses-schema", "messages-schema"],
)
async def test_json_asked_for_is_json_answered(
    client: httpx.AsyncClient,
    path: str,
    request_body: dict[str, Any],
    where: tuple[str | int, ...],
    value: object,
) -> None:
    """When JSON is asked for, the text is a JSON object (one that fits the schema if given)."""
    found: Any = (await client.post(path, json=request_body)).json()
    for step in where:
        found = found[step]
    assert json.loads(found) == value


@pytest.mark.parametrize(
    ("schema", "value"),
    [
        ({"type": "string", "enum": ["b", "a"]}, "b"),
        ({"const": 7}, 7),
        ({"type": ["null", "integer"], "minimum": 2.5}, 3),
        ({"type": "number"}, 1),
        ({"type": "boolean"}, True),
        ({"type": "array", "items": {"type": "integer"}, "minItems": 2}, [1, 1]),
        ({"type": "array", "items": {"type": "integer"}}, []),
        ({"anyOf": [{"type": "boolean"}, {"type": "string"}]}, True),
        ({"properties": {"x": {"type": "integer"}, "y": {"type": "boolean"}}}, {"x": 1, "y": True}),
        (
            {
                "$defs": {"Point": {"type": "object", "properties": {"x": {"type": "integer"}}}},
                "type": "object",
                "properties": {"at": {"$ref": "#/$defs/Point"}},
                "required": ["at"],
            },
            {"at": {"x": 1}},
        ),
        ("not a schema", "text"),
    ],
)
def test_sample_fits_the_schema(schema: object, value: object) -> None:
    """Samples follow enum, const, type lists, minimum, minItems, anyOf, properties and $ref."""
    assert sample(schema, "text") == value


def test_sample_of_a_recursive_schema_ends() -> None:
    """A schema that refers to itself still yields a finite value."""
    tree = {"type": "object", "properties": {"child": {"$ref": "#"}}, "required": ["child"]}
    value = sample(tree, "leaf")
    depth = 0
    while isinstance(value, dict):
        value, depth = value["child"], depth + 1
    assert value == "leaf" and depth < 20


# --- the same faults and counts for every dialect -----------------------------------------

STREAMS = [
    pytest.param("/v1/chat/completions", {**CHAT, "stream": True}, id="chat"),
    pytest.param("/v1/messages", {**MESSAGES, "stream": True}, id="messages"),
    pytest.param("/v1/responses", {**RESPONSES, "stream": True}, id="responses"),
]
END_MARKS = (b"data: [DONE]", b"event: message_stop", b"event: response.completed")


@pytest.mark.parametrize(("path", "request_body"), STREAMS)
async def test_latency_and_chunk_delay_apply_to_every_stream(
    app: Simulator, client: httpx.AsyncClient, sleeps: Sleeps, path: str, request_body: object
) -> None:
    """Latency sleeps once before the headers; chunk delay between every two events."""
    app.faults.update({"latency_ms": 250, "chunk_delay_ms": 20})
    response = await client.post(path, json=request_body)
    events = [block for block in response.text.split("\n\n") if block]
    assert sleeps.delays == [0.25] + [0.02] * (len(events) - 1)


@pytest.mark.parametrize(("path", "request_body"), STREAMS)
async def test_cut_after_drops_every_stream_before_its_end_mark(
    app: Simulator, path: str, request_body: object
) -> None:
    """cut_after=3 sends three events, never the dialect's end mark, then drops the stream."""
    app.faults.update({"cut_after": 3})
    sent: list[Any] = []
    with pytest.raises(StreamCut):
        await call_app(app, "POST", path, orjson.dumps(request_body), sent)
    bodies = [m["body"] for m in sent[1:]]
    assert len(bodies) == 3 and all(m["more_body"] for m in sent[1:])
    assert not any(mark in body for body in bodies for mark in END_MARKS)
    assert (app.stats.cut, app.stats.in_flight) == (1, 0)


@pytest.mark.parametrize(("path", "request_body"), STREAMS)
async def test_error_rate_applies_to_every_dialect(
    app: Simulator, client: httpx.AsyncClient, path: str, request_body: object
) -> None:
    """An injected error answers the configured status before any stream starts."""
    app.faults.update({"error_rate": 1.0, "status_code": 502})
    response = await client.post(path, json=request_body)
    assert response.status_code == 502
    assert response.headers["content-type"] == "application/json"
    assert app.stats.errors_injected == 1


async def test_hang_holds_every_dialect(app: Simulator) -> None:
    """A hung Messages or Responses call sends nothing until the client leaves."""
    app.faults.update({"hang": True})
    for path, body in (("/v1/messages", MESSAGES), ("/v1/responses", RESPONSES)):
        sent: list[Any] = []
        await call_app(app, "POST", path, orjson.dumps(body), sent)
        assert sent == []
    assert (app.stats.hung, app.stats.in_flight) == (2, 0)


async def test_stats_count_the_tokens_every_dialect_reported(client: httpx.AsyncClient) -> None:
    """/_sim/stats adds up exactly the usage each dialect reported, streamed or not."""
    reported = [0, 0]
    for stream in (False, True):
        chat = {**CHAT, "stream": stream, "stream_options": {"include_usage": True}}
        for path, request in (
            ("/v1/chat/completions", chat),
            ("/v1/messages", {**MESSAGES, "stream": stream}),
            ("/v1/responses", {**RESPONSES, "stream": stream}),
        ):
            text = (await client.post(path, json=request)).text
            usage = usage_in(text)
            reported[0] += usage[0]
            reported[1] += usage[1]
    stats = (await client.get("/_sim/stats")).json()
    assert (
        stats["tokens"]
        == {"prompt": reported[0], "completion": reported[1]}
        == {
            "prompt": 18,
            "completion": 48,
        }
    )


def usage_in(text: str) -> tuple[int, int]:
    """(input, output) tokens as a client reads them from a body or a stream of any dialect."""
    found = {"input": 0, "output": 0}
    if not text.startswith(("data:", "event:")):
        _read_usage(orjson.loads(text).get("usage"), found)
    for line in text.split("\n") if text.startswith(("data:", "event:")) else ():
        if line.startswith("data: {"):
            data = orjson.loads(line.removeprefix("data: "))
            inner = data.get("message") or data.get("response") or {}
            _read_usage(data.get("usage") or inner.get("usage"), found)
    return found["input"], found["output"]


def _read_usage(usage: Any, found: dict[str, int]) -> None:
    """Anthropic streams input in message_start, output (the total) in message_delta."""
    if isinstance(usage, dict):
        for side, keys in (
            ("input", ("prompt_tokens", "input_tokens")),
            ("output", ("completion_tokens", "output_tokens")),
        ):
            for key in keys:
                if key in usage:
                    found[side] = usage[key]


async def call_app(app: Simulator, method: str, path: str, body: bytes, sent: list[Any]) -> None:
    """Call the app as a server would; the client disconnects as soon as the app listens."""
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "query_string": b"", "headers": []}
    await app(scope, receive, send)


# --- any body, every route: an answer or a refusal in the dialect's shape -----------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
KEYS = st.sampled_from(
    ["model", "messages", "max_tokens", "stream", "tools", "tool_choice", "input", "prompt",
     "system", "instructions", "response_format", "text", "output_config", "max_output_tokens",
     "stream_options", "max_completion_tokens", "encoding_format"]
)  # fmt: skip
TOOLS = st.lists(  # one shape that every dialect reads as a tool offered
    st.fixed_dictionaries(
        {"type": st.just("function"), "name": st.text(max_size=5), "parameters": JSON}
    ).map(lambda t: {**t, "input_schema": t["parameters"], "function": dict(t)}),
    max_size=2,
)
VALID = {"model": "m", "messages": USER, "max_tokens": 5, "input": "hi", "prompt": "hi"}
BODIES = (
    JSON
    | st.dictionaries(KEYS, JSON, max_size=6).map(lambda extra: {**VALID, **extra})
    | st.builds(
        lambda tools, stream: {**VALID, "tools": tools, "stream": stream}, TOOLS, st.booleans()
    )
)
PATHS = st.sampled_from(
    [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/responses",
    ]
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=PATHS, body=BODIES)
def test_any_body_gets_an_answer_or_a_refusal_in_the_paths_shape(path: str, body: object) -> None:
    """Whatever JSON arrives, every route answers 200, billing what it reports, or a 4xx in
    its dialect's error shape."""
    app = create_sim_app(rng=random.Random(1), clock=lambda: NOW, sleep=Sleeps())
    sent: list[Any] = []
    asyncio.run(call_app(app, "POST", path, orjson.dumps(body), sent))
    status = sent[0]["status"]
    text = b"".join(m.get("body", b"") for m in sent[1:]).decode()
    if status == 200:
        billed = app.stats.prompt_tokens, app.stats.completion_tokens
        if '"usage":{' in text:  # not in count_tokens, nor a chat stream without include_usage
            assert usage_in(text) == billed
        elif path.endswith("/count_tokens"):
            assert billed == (0, 0)
        return
    assert 400 <= status < 500
    error = orjson.loads(text)
    if path.startswith("/v1/messages"):
        assert error["type"] == "error" and set(error["error"]) == {"type", "message"}
    else:
        assert set(error["error"]) == {"message", "type", "code"}


# --- a dishonest relay (SPEC §9) --------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/chat/completions",
            {"model": "gpt-4.1", "messages": [{"role": "user", "content": "a b c d"}]},
        ),
        ("/v1/responses", {"model": "gpt-4.1", "input": "a b c d"}),
        (
            "/v1/messages",
            {
                "model": "gpt-4.1",
                "max_tokens": 50,
                "messages": [{"role": "user", "content": "a b c d"}],
            },
        ),
    ],
)
async def test_dishonest_knobs_change_the_name_the_bill_and_the_reply(
    path: str, body: dict[str, Any]
) -> None:
    """echo_model names another model, prompt_token_factor inflates the bill, reply_scale and
    reply_text change the answer; in every dialect."""
    faults = Faults(echo_model="gpt-4o-mini", prompt_token_factor=3.0, reply_text="Sure thing.")
    sim = create_sim_app(faults)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url="http://s") as c:
        answer = (await c.post(path, json=body)).json()
        faults.update({"echo_model": None, "prompt_token_factor": 1.0, "reply_text": None})
        honest = (await c.post(path, json=body)).json()
        faults.update({"reply_scale": 2.0})
        longer = (await c.post(path, json=body)).json()
    usage, plain = answer["usage"], honest["usage"]
    prompt = "prompt_tokens" if "prompt_tokens" in usage else "input_tokens"
    output = "completion_tokens" if "completion_tokens" in usage else "output_tokens"
    assert answer["model"] == "gpt-4o-mini" and honest["model"] == "gpt-4.1"
    assert usage[prompt] == 3 * plain[prompt] == 12
    assert usage[output] == 2  # "Sure thing."
    assert longer["usage"][output] == 2 * plain[output]


def test_dishonest_knobs_are_validated() -> None:
    """A bad knob changes nothing and says why."""
    faults = Faults()
    with pytest.raises(ValueError, match="prompt_token_factor"):
        faults.update({"echo_model": "x", "prompt_token_factor": 0})
    assert faults.echo_model is None
    with pytest.raises(ValueError, match="echo_model"):
        faults.update({"echo_model": ""})
