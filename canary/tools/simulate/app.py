"""The simulator as one ASGI app: ``/v1`` answers like a provider, ``/_sim`` steers it.

Every ``/v1`` call takes the same path, whatever its dialect: count it, check its key
(with ``api_key`` set: Bearer, ``x-api-key`` or ``api-key``, else a 401 that never
echoes a key), find its route, meet the faults (hang -> latency -> rate limit (429) ->
error), then answer. A POST's answer comes from its dialect's builder (a pure function
of the ``Call``); this module does the I/O: one SSE event per ASGI message so clients
see them arrive one by one, ``chunk_delay_ms`` between them, and ``cut_after`` dropping
the connection after that many events (``StreamCut``), without the chunked terminator
or the dialect's end mark, as a crashing provider would. Refusals (faults and keys
included) take the error shape of the path's dialect: Anthropic's under
``/v1/messages``, OpenAI's elsewhere.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.types import Receive, Scope, Send

from canary.errors import StreamCut
from canary.tools.simulate import chat, control, embeddings, messages, responses
from canary.tools.simulate.answer import REPLY, Call, Reply
from canary.tools.simulate.asgi import (
    Headers,
    Refused,
    carries_key,
    json_object,
    lifespan,
    read_body,
    send_json,
    until_disconnect,
)
from canary.tools.simulate.billing import SimBilling
from canary.tools.simulate.faults import Faults
from canary.tools.simulate.files import Files
from canary.tools.simulate.sampling import distribution, family, temperature_of
from canary.tools.simulate.sessions import (
    Cut,
    Link,
    RealtimeState,
    ResponsesState,
    converse,
)
from canary.tools.simulate.stats import Stats
from canary.types import Clock, Sleep

DEFAULT_MODELS = ("gpt-4.1", "gpt-4.1-mini", "text-embedding-3-small")

Builder = Callable[[Call], Reply]
Handler = Callable[[Scope, bytes, Send], Awaitable[None]]

# POST path -> the dialect builder that answers it
BUILDERS: dict[str, Builder] = {
    "/v1/chat/completions": chat.completion,
    "/v1/completions": chat.legacy,
    "/v1/embeddings": embeddings.embed,
    "/v1/messages": messages.create,
    "/v1/messages/count_tokens": messages.count_tokens,
    "/v1/responses": responses.create,
}


class Simulator:
    """The ASGI app: ``/v1`` answers like a provider, ``/_sim`` controls faults and stats."""

    def __init__(
        self,
        faults: Faults,
        *,
        name: str,
        rng: random.Random,
        clock: Clock,
        sleep: Sleep,
        api_key: str | None = None,
        billing: SimBilling | None = None,
    ) -> None:
        self.faults = faults
        self.billing = billing  # a relay that bills (``canary.tools.simulate.billing``)
        self.name = name
        self._api_key = None if api_key is None else api_key.encode()
        self.stats = Stats(clock)
        self._rng, self._clock, self._sleep = rng, clock, sleep
        self._reply = tuple(REPLY.format(name=name).split())
        self._models = dict.fromkeys(DEFAULT_MODELS)  # an ordered set; requests add to it
        self._ids = itertools.count(1)
        self._released = asyncio.Event()
        self._name_header = (b"x-sim-name", name.encode())
        self.files = Files(clock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] == "websocket":
            await self._session(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        # An upload is counted as it streams (canary.tools.simulate.files), never held.
        body = b"" if _streamed(scope) else await read_body(receive)
        try:
            if self.billing is not None and scope["method"] == "GET" and self._bill(scope):
                await self._json(send, 200, self.billing.answer(path))
            elif path.startswith("/v1/"):
                await self._provider(scope, body, receive, send)
            elif path.startswith("/_sim/"):
                await self._json(send, 200, control.answer(self, scope["method"], path, body))
            else:
                raise Refused(404, f"Unknown path {path}", "not_found")
        except Refused as refusal:
            await self._json(send, refusal.status, _error_body(path, refusal), refusal.headers)

    def _bill(self, scope: Scope) -> bool:
        """A billing endpoint of this relay (key checked), not a provider call."""
        assert self.billing is not None
        if self.billing.answer(scope["path"]) is None:
            return False
        if self._api_key is not None and not carries_key(scope["headers"], self._api_key):
            raise Refused(401, "Incorrect API key provided (simulated).", "invalid_api_key")
        return True

    def release_hung(self) -> None:
        """Answer every hung request (and any new one) with 503: the server is stopping."""
        self._released.set()

    async def _provider(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        self.stats.started(scope, body)
        try:
            if self._api_key is not None and not carries_key(scope["headers"], self._api_key):
                self.stats.unauthorized += 1
                raise Refused(401, "Incorrect API key provided (simulated).", "invalid_api_key")
            handler = self._handler(scope, receive)
            refusal = self.billing.spent() if self.billing is not None else None
            if refusal is not None and scope["method"] == "POST":
                await self._json(send, *refusal)  # credit spent, the provider's way
            elif not await self._inject_faults(receive):
                return
            elif _streamed(scope):  # the handler reads the body: nobody else may receive
                await handler(scope, body, send)
            else:
                await self._until_done_or_gone(handler(scope, body, send), receive)
        finally:
            self.stats.in_flight -= 1  # also on refusal, disconnect, cut and cancellation

    def _handler(self, scope: Scope, receive: Receive) -> Handler:
        path: str = scope["path"]
        handler: Handler
        files, named = self.files, [self._name_header]
        if path == "/v1/models" or path.startswith("/v1/models/"):
            method, handler = "GET", self._model_list
        elif path == "/v1/files":
            method = "POST"

            async def handler(scope: Scope, body: bytes, send: Send) -> None:
                await files.upload(scope, receive, send, named)

        elif path.startswith("/v1/files/") and path.endswith("/content"):
            method = "GET"

            async def handler(scope: Scope, body: bytes, send: Send) -> None:
                await files.content(scope, send, named)

        elif path == "/v1/audio/speech":
            method = "POST"

            async def handler(scope: Scope, body: bytes, send: Send) -> None:
                await files.speech(body, send, named)

        elif path in BUILDERS:
            method, handler = "POST", functools.partial(self._answer, BUILDERS[path])
        else:
            raise Refused(404, f"Unknown path {path}", "not_found")
        if scope["method"] != method:
            raise Refused(405, f"Use {method} for {path}", "method_not_allowed")
        return handler

    async def _until_done_or_gone(self, answer: Awaitable[None], receive: Receive) -> None:
        """Run the answer, but stop as soon as the client disconnects (uvicorn's ``send``
        ignores a gone client, so a slow stream would otherwise run to its end)."""
        task = asyncio.current_task()
        assert task is not None
        state = {"done": False, "gone": False}

        async def watch() -> None:
            await until_disconnect(receive)
            if not state["done"]:
                state["gone"] = True
                task.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await answer
            state["done"] = True
        except asyncio.CancelledError:
            if not state["gone"]:
                raise
            task.uncancel()
        finally:
            state["done"] = True
            watcher.cancel()

    async def _inject_faults(self, receive: Receive) -> bool:
        """Raise the refusal a fault calls for; False when a hung client has gone."""
        faults = self.faults
        if faults.hang and not await self._hang(receive):
            return False
        if faults.latency_ms:
            await self._sleep(faults.latency_ms / 1000)
        if faults.rate_limit_rate and self._rng.random() < faults.rate_limit_rate:
            self.stats.rate_limited += 1
            seconds = faults.retry_after_s
            headers = [
                (b"retry-after", str(math.ceil(seconds)).encode()),
                (b"retry-after-ms", str(round(seconds * 1000)).encode()),
            ]
            message = "Rate limit reached (simulated)"
            raise Refused(429, message, "rate_limit_exceeded", "requests", headers)
        if faults.error_rate and self._rng.random() < faults.error_rate:
            self.stats.errors_injected += 1
            status = faults.status_code
            kind = "server_error" if status >= 500 else "invalid_request_error"
            raise Refused(status, f"Simulated error {status} from {self.name}", "simulated", kind)
        return True

    async def _hang(self, receive: Receive) -> bool:
        """Never answer: wait for the client to give up (False), or refuse once stopping."""
        self.stats.hung += 1
        disconnected = asyncio.ensure_future(until_disconnect(receive))
        released = asyncio.ensure_future(self._released.wait())
        try:
            await asyncio.wait({disconnected, released}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            disconnected.cancel()
            released.cancel()
            await asyncio.wait({disconnected, released})
        if disconnected.cancelled():
            raise Refused(503, "Simulator shutting down", "shutting_down", "server_error")
        return False

    # --- answers ------------------------------------------------------------------------

    async def _answer(self, build: Builder, scope: Scope, body: bytes, send: Send) -> None:
        """A POST: its dialect builds the reply; it is sent, then its tokens are counted."""
        payload = json_object(body)
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise Refused(400, "'model' is required", "invalid_request")
        self._models[model] = None
        call = self._call(payload, model)
        reply = build(call)
        if reply.events is None:
            truncate = self.faults.truncate_rate
            if truncate and self._rng.random() < truncate:
                await self._truncated(send, reply.body)
            await self._json(send, 200, reply.body)
        else:
            await self._stream(send, reply.events)
        self.stats.billed(reply.prompt_tokens, reply.completion_tokens)
        if self.billing is not None:
            self.billing.charge(reply.prompt_tokens, reply.completion_tokens)

    def _call(self, payload: dict[str, Any], model: str) -> Call:
        """The call as its builder sees it, with what a dishonest relay changes."""
        f, reply = self.faults, self._sampled(payload, model)
        if f.reply_text is not None:
            reply = tuple(f.reply_text.split())
        if f.reply_scale != 1.0:
            size = max(1, round(len(reply) * f.reply_scale))
            reply = (reply * (size // len(reply) + 1))[:size]
        named = f.echo_model or model
        serial, now = next(self._ids), int(self._clock())
        return Call(payload, named, serial, now, reply, f.prompt_token_factor)

    def _sampled(self, payload: dict[str, Any], model: str) -> tuple[str, ...]:
        """The fixed reply, or with a temperature set, the (model, prompt) distribution's
        answer; a forging relay draws from its substitute's instead in its share of calls."""
        temperature = temperature_of(payload)
        if temperature is None:
            return self._reply
        f, prompt = self.faults, _prompt_of(payload)
        if f.substitute_model is not None and self._rng.random() < f.substitute_rate:
            model = f.substitute_model
        return distribution(family(model), prompt).sample(temperature, self._rng)

    async def _model_list(self, scope: Scope, body: bytes, send: Send) -> None:
        """``GET /v1/models`` (the defaults and every model asked for) and ``/v1/models/ID``."""
        path: str = scope["path"]
        if path == "/v1/models":
            data = [self._model_object(model) for model in self._models]
            await self._json(send, 200, {"object": "list", "data": data})
            return
        model = path.removeprefix("/v1/models/")
        if model in self._models:
            await self._json(send, 200, self._model_object(model))
        else:
            raise Refused(404, f"The model '{model}' does not exist", "model_not_found")

    def _model_object(self, model: str) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": 0, "owned_by": self.name}

    async def _stream(self, send: Send, events: Sequence[bytes]) -> None:
        """One SSE event per ASGI message; ``cut_after`` drops the connection mid-stream."""
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send(
            {"type": "http.response.start", "status": 200, "headers": [*headers, self._name_header]}
        )
        cut_after, delay = self.faults.cut_after, self.faults.chunk_delay_ms / 1000
        for index, event in enumerate(events):
            if index == cut_after:
                self.stats.cut += 1
                raise StreamCut(f"{self.name}: stream cut after {cut_after} events")
            if index and delay:
                await self._sleep(delay)
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _truncated(self, send: Send, payload: object) -> None:
        """Declare the whole answer's length, send a fifth of it, drop the connection."""
        body = orjson.dumps(payload)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            self._name_header,
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send(
            {"type": "http.response.body", "body": body[: len(body) // 5], "more_body": True}
        )
        self.stats.cut += 1
        raise StreamCut(f"{self.name}: answer cut after {len(body) // 5} of {len(body)} bytes")

    async def _json(self, send: Send, status: int, payload: object, headers: Headers = ()) -> None:
        await send_json(send, status, payload, [self._name_header, *headers])

    # --- WebSocket sessions (canary.tools.simulate.sessions) ---------------------------

    async def _session(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One WebSocket session: refused as the faults say, else answered until it ends."""
        await receive()  # websocket.connect
        self.stats.started({**scope, "method": "GET"}, b"")
        try:
            try:
                state = self._session_state(scope)
            except Refused as refused:
                self.stats.sessions_refused += 1
                body = orjson.dumps(_error_body(scope["path"], refused))
                headers = [(b"content-type", b"application/json"), self._name_header]
                start = {"type": "websocket.http.response.start", "status": refused.status}
                await send({**start, "headers": headers})
                await send({"type": "websocket.http.response.body", "body": body})
                return
            offered = scope.get("subprotocols") or []
            accept = {"type": "websocket.accept", "subprotocol": offered[0] if offered else None}
            await send({**accept, "headers": [self._name_header]})
            self.stats.sessions += 1
            delay = self.faults.chunk_delay_ms / 1000
            link = Link(send, self.faults.session_cut_after, delay, self._sleep)
            try:
                await converse(state, receive, link, self._billed)
            except Cut:
                self.stats.sessions_cut += 1  # returning without a close frame drops it
        finally:
            self.stats.in_flight -= 1

    def _session_state(self, scope: Scope) -> RealtimeState | ResponsesState:
        if self._api_key is not None and not carries_key(scope["headers"], self._api_key):
            self.stats.unauthorized += 1
            raise Refused(401, "Incorrect API key provided (simulated).", "invalid_api_key")
        status = self.faults.session_refuse_status
        if status is not None:
            kind = "server_error" if status >= 500 else "invalid_request_error"
            raise Refused(status, f"Simulated refusal {status} from {self.name}", "simulated", kind)
        if scope["path"] == "/v1/responses":
            return ResponsesState(self._call)
        if scope["path"] != "/v1/realtime":
            raise Refused(404, f"No WebSocket endpoint at {scope['path']}", "not_found")
        query = dict(parse_qsl(scope["query_string"].decode("latin-1")))
        model = query.get("model")
        if not model:
            raise Refused(400, "'model' is required in the query", "invalid_request")
        self._models[model] = None
        call = self._call({}, model)
        return RealtimeState(call.model, call.reply)

    async def _billed(self, prompt: int, completion: int) -> None:
        self.stats.billed(prompt, completion)


def _streamed(scope: Scope) -> bool:
    return bool(scope["method"] == "POST" and scope["path"] == "/v1/files")


def _prompt_of(payload: dict[str, Any]) -> str:
    """What seeds a call's distribution: its messages, prompt or input, whatever the dialect."""
    asked = {key: payload.get(key) for key in ("system", "messages", "prompt", "input")}
    return orjson.dumps(asked, option=orjson.OPT_SORT_KEYS).decode()


def _error_body(path: str, refusal: Refused) -> dict[str, Any]:
    """The refusal in the error shape of the dialect ``path`` speaks."""
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return messages.error(refusal)
    return refusal.body()


def create_sim_app(
    faults: Faults | None = None,
    *,
    name: str = "sim",
    rng: random.Random | None = None,
    clock: Clock = time.time,
    sleep: Sleep = asyncio.sleep,
    api_key: str | None = None,
    billing: SimBilling | None = None,
) -> Simulator:
    """Build a simulator; ``rng``, ``clock`` and ``sleep`` are seams for deterministic tests.
    With ``api_key``, ``/v1`` calls without that key are answered 401."""
    rng = rng or random.Random()
    return Simulator(
        faults or Faults(),
        name=name,
        rng=rng,
        clock=clock,
        sleep=sleep,
        api_key=api_key,
        billing=billing,
    )
