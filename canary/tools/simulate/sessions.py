"""The simulator's WebSocket endpoints: enough of OpenAI's two session APIs for the SDK.

    /v1/realtime   (``client.realtime.connect(model=...)``) session.created naming the
                   ``?model=``; session.update -> session.updated; conversation.item.create
                   -> conversation.item.added / .done; response.create -> response.created,
                   a response.output_text.delta per word, response.output_text.done,
                   response.done with usage (input_tokens, output_tokens)
    /v1/responses  (``client.responses.connect()``) response.create -> the Responses API's
                   stream events (``canary.tools.simulate.responses``), one per frame,
                   ending in response.completed with the model and usage

A binary frame is echoed back. Each session is counted in ``/_sim/stats`` (``sessions``)
and is the ``last_request`` there (its key shown by fingerprint). Faults: ``api_key``
refuses a handshake without it (401); ``session_refuse_status`` refuses every handshake
with that status and an OpenAI error body; ``session_cut_after`` drops the connection,
without a close frame, once the server has sent that many frames; ``echo_model`` names
another model; ``chunk_delay_ms`` paces the frames.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.types import Message, Receive, Send

from canary.tools.simulate import responses
from canary.tools.simulate.answer import Call, count_words
from canary.tools.simulate.asgi import Refused
from canary.types import Sleep

Events = list[dict[str, Any]]


class Cut(Exception):
    """``session_cut_after`` reached: the connection is dropped without a close frame."""


class Link:
    """One session's frames out, counted against ``session_cut_after``."""

    def __init__(self, send: Send, cut_after: int | None, delay_s: float, sleep: Sleep) -> None:
        self._send = send
        self._cut_after = cut_after
        self._delay_s = delay_s
        self._sleep = sleep
        self.sent = 0

    async def events(self, events: Events) -> None:
        for event in events:
            await self.frame({"type": "websocket.send", "text": orjson.dumps(event).decode()})

    async def frame(self, message: Message) -> None:
        if self._cut_after is not None and self.sent >= self._cut_after:
            raise Cut
        if self.sent and self._delay_s:
            await self._sleep(self._delay_s)
        await self._send(message)
        self.sent += 1


def _realtime_session(model: str) -> dict[str, Any]:
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": "sess_sim",
        "model": model,
        "output_modalities": ["text"],
        "instructions": "",
    }


class RealtimeState:
    """What one Realtime session remembers: its model and the words sent to it."""

    def __init__(self, model: str, words: tuple[str, ...]) -> None:
        self.model = model
        self.words = words
        self.prompt = 0
        self.serial = 0

    def opening(self) -> Events:
        return [{"type": "session.created", "event_id": "event_0", "session": self._session()}]

    def _session(self) -> dict[str, Any]:
        return _realtime_session(self.model)

    def answer(self, event: dict[str, Any]) -> tuple[Events, int, int]:
        """The events answering one client event, and the tokens they bill."""
        kind = event.get("type")
        if kind == "session.update":
            return (
                [{"type": "session.updated", "event_id": "event_u", "session": self._session()}],
                0,
                0,
            )
        if kind == "conversation.item.create":
            self.prompt += max(1, count_words(event.get("item")))
            item = {"id": "item_sim", "type": "message", "role": "user", "content": []}
            added = {"type": "conversation.item.added", "event_id": "event_a", "item": item}
            return [added, {**added, "type": "conversation.item.done"}], 0, 0
        if kind == "response.create":
            return self._response()
        return [], 0, 0

    def _response(self) -> tuple[Events, int, int]:
        self.serial += 1
        rid, prompt, out = f"resp_{self.serial}", max(1, self.prompt), len(self.words)
        self.prompt = 0
        text = " ".join(self.words)
        base = {"object": "realtime.response", "id": rid, "conversation_id": "conv_sim"}
        at = {"response_id": rid, "item_id": "item_out", "output_index": 0, "content_index": 0}
        usage = {"total_tokens": prompt + out, "input_tokens": prompt, "output_tokens": out}
        item: dict[str, Any] = {"id": "item_out", "type": "message", "role": "assistant"}
        item |= {"status": "completed", "content": [{"type": "output_text", "text": text}]}
        events: Events = [
            {"type": "response.created", "response": {**base, "status": "in_progress"}},
            *(
                {"type": "response.output_text.delta", **at, "delta": w if i == 0 else " " + w}
                for i, w in enumerate(self.words)
            ),
            {"type": "response.output_text.done", **at, "text": text},
            {
                "type": "response.done",
                "response": {**base, "status": "completed", "output": [item], "usage": usage},
            },
        ]
        for n, event in enumerate(events):
            event["event_id"] = f"event_{self.serial}_{n}"
        return events, prompt, out


class ResponsesState:
    """One Responses WebSocket: each ``response.create`` answered as a stream would be."""

    def __init__(self, call: Callable[[dict[str, Any], str], Call]) -> None:
        self._call = call

    def opening(self) -> Events:
        return []

    def answer(self, event: dict[str, Any]) -> tuple[Events, int, int]:
        if event.get("type") != "response.create":
            return [], 0, 0
        payload = {k: v for k, v in event.items() if k != "type"}
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            error = {"type": "error", "error": {"message": "'model' is required", "code": None}}
            return [error], 0, 0
        try:
            reply = responses.create(self._call({**payload, "stream": True}, model))
        except Refused as refused:
            return [{"type": "error", "error": refused.body()["error"]}], 0, 0
        events = [orjson.loads(e.split(b"data: ", 1)[1]) for e in reply.events or ()]
        return events, reply.prompt_tokens, reply.completion_tokens


State = RealtimeState | ResponsesState


async def converse(
    state: State, receive: Receive, link: Link, billed: Callable[[int, int], Awaitable[None]]
) -> None:
    """Answer the client's events until it closes (a ``Cut`` ends it without a close)."""
    await link.events(state.opening())
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("bytes") is not None:
            await link.frame({"type": "websocket.send", "bytes": message["bytes"]})
            continue
        try:
            event = orjson.loads(message.get("text") or "")
        except orjson.JSONDecodeError:
            event = None
        if not isinstance(event, dict):
            error = {"message": "Frames must be JSON objects.", "code": "invalid_json"}
            await link.events([{"type": "error", "error": error}])
            continue
        events, prompt, completion = state.answer(event)
        await link.events(events)
        await billed(prompt, completion)
