"""The simulator's WebSocket sessions (``canary.tools.simulate.sessions``) in process."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from canary.tools.simulate.answer import Call
from canary.tools.simulate.sessions import Cut, Link, RealtimeState, ResponsesState, converse

WORDS = ("hello", "from", "sim")


def _call(payload: dict[str, Any], model: str) -> Call:
    return Call(payload, model, 1, 0, WORDS, 1.0)


async def _nothing(prompt: int, completion: int) -> None: ...


events = st.dictionaries(
    st.sampled_from(["type", "model", "input", "item", "response", "x"]),
    st.one_of(
        st.sampled_from(["response.create", "session.update", "conversation.item.create"]),
        st.none(),
        st.integers(),
        st.text(max_size=20),
        st.lists(st.text(max_size=5), max_size=3),
        st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
    ),
    max_size=5,
)


@settings(max_examples=150)
@given(event=events)
def test_any_client_event_gets_events_back_and_never_an_exception(event: dict[str, Any]) -> None:
    """Whatever JSON object a client sends, each protocol answers with a list of events
    (an ``error`` event for a bad ``response.create``) and non-negative token counts."""
    for state in (RealtimeState("gpt-realtime", WORDS), ResponsesState(_call)):
        out, prompt, completion = state.answer(event)
        assert isinstance(out, list) and prompt >= 0 and completion >= 0
        assert all(isinstance(e, dict) and "type" in e for e in out)


def test_a_realtime_response_ends_in_usage_and_a_cut_drops_the_session() -> None:
    """response.create -> response.created, a delta per word, response.done with usage;
    ``session_cut_after`` stops the frames there (the app then drops the connection)."""

    async def scenario(cut_after: int | None) -> list[dict[str, Any]]:
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for message in (
            {"type": "websocket.receive", "text": '{"type": "response.create"}'},
            {"type": "websocket.disconnect", "code": 1000},
        ):
            inbox.put_nowait(message)
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(orjson.loads(message["text"]))

        link = Link(send, cut_after, 0.0, asyncio.sleep)
        with contextlib.suppress(Cut):
            await converse(RealtimeState("gpt-realtime", WORDS), inbox.get, link, _nothing)
        return sent

    whole = asyncio.run(scenario(None))
    assert [e["type"] for e in whole][:2] == ["session.created", "response.created"]
    assert whole[0]["session"]["model"] == "gpt-realtime"
    assert whole[-1]["type"] == "response.done"
    assert whole[-1]["response"]["usage"]["output_tokens"] == len(WORDS)
    assert len(asyncio.run(scenario(2))) == 2
