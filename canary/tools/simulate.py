"""A fake OpenAI-compatible provider with fault injection, for demos, tests and benchmarks.

It is the upstream the benchmark measures against, so it is a raw ASGI callable: no
routing framework, one dict lookup per request, orjson for every body. Streams send
each SSE event as its own ASGI message so clients see them arrive one by one.

Faults (``Faults``, changed live via ``POST /_sim/faults``) apply to known ``/v1``
routes in this order: hang -> latency -> rate limit (429) -> error -> answer. A stream
may then be cut after N content chunks by raising ``StreamCut``: the server drops the
connection without the chunked terminator or ``[DONE]``, as a crashing provider would.

With ``--api-key KEY`` every ``/v1`` call must carry that key (as ``Authorization: Bearer``,
``x-api-key`` or ``api-key``, the schemes providers use) or gets OpenAI's 401; the answer
never echoes the key it was given.

Token counts are deterministic so cost accounting can be checked: prompt tokens are
the whitespace-separated words of the messages/prompt/input (a token id counts one; at
least 1); completion tokens are the words of ``REPLY``, truncated to ``max_tokens``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import itertools
import logging
import math
import random
import struct
import sys
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import orjson
import uvicorn
from starlette.types import Receive, Scope, Send

from canary.errors import StreamCut
from canary.serve.signals import stop_signals_return

REPLY = "Hello from {name}! This is a simulated reply."
DEFAULT_MODELS = ("gpt-4.1", "gpt-4.1-mini", "text-embedding-3-small")
STARTS_WINDOW_S = 120

Headers = Sequence[tuple[bytes, bytes]]


class _Refused(Exception):
    """An answer in OpenAI's error shape; raised anywhere below, rendered in one place."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        kind: str = "invalid_request_error",
        headers: Headers = (),
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.kind, self.headers = status, code, kind, headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.kind, "code": self.code}}


@dataclass
class Faults:
    """What the simulator does wrong; mutable so the control plane can change it live."""

    latency_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    error_rate: float = 0.0
    status_code: int = 500
    rate_limit_rate: float = 0.0
    retry_after_s: float = 1.0
    cut_after: int | None = None
    hang: bool = False

    def __post_init__(self) -> None:
        self.update(asdict(self))

    def update(self, patch: dict[str, Any]) -> None:
        """Validate every key of ``patch`` first, then apply them all (or none)."""
        clean = {key: _check(key, value) for key, value in patch.items()}
        for key, value in clean.items():
            setattr(self, key, value)


# key -> (type, lowest, highest); bounds are inclusive.
_LIMITS: dict[str, tuple[type, float, float]] = {
    "latency_ms": (float, 0, 3_600_000),
    "chunk_delay_ms": (float, 0, 3_600_000),
    "error_rate": (float, 0, 1),
    "status_code": (int, 400, 599),
    "rate_limit_rate": (float, 0, 1),
    "retry_after_s": (float, 0, 86_400),
    "cut_after": (int, 0, math.inf),
    "hang": (bool, 0, 1),
}


def _check(key: str, value: object) -> object:
    if key not in _LIMITS:
        raise ValueError(f"unknown fault {key!r}; known: {', '.join(_LIMITS)}")
    kind, low, high = _LIMITS[key]
    if key == "cut_after" and value is None:
        return None
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{key}: must be true or false, got {value!r}")
    accepted = int if kind is int else int | float
    if isinstance(value, bool) or not isinstance(value, accepted) or not low <= value <= high:
        raise ValueError(f"{key}: must be {kind.__name__} in [{low}, {high}], got {value!r}")
    return float(value) if kind is float else value


class _Stats:
    """Counters behind ``GET /_sim/stats``; the last request is decoded only when read."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        self.requests = self.in_flight = self.peak_in_flight = 0
        self.errors_injected = self.rate_limited = self.cut = self.hung = self.unauthorized = 0
        self.prompt_tokens = self.completion_tokens = 0
        self.by_path: Counter[str] = Counter()
        self.starts: dict[int, int] = {}
        self.recent: deque[float] = deque()  # starts in the last second, for the peak
        self.peak_starts_1s = 0  # most starts in any one-second window, not just a unix second
        self.last: tuple[Scope, bytes] | None = None

    def started(self, scope: Scope, body: bytes) -> None:
        self.requests += 1
        self.by_path[scope["path"]] += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        self.last = (scope, body)
        now = self._clock()
        recent = self.recent
        while recent and recent[0] <= now - 1.0:  # the window (now - 1 s, now]
            recent.popleft()
        recent.append(now)
        self.peak_starts_1s = max(self.peak_starts_1s, len(recent))
        second = int(now)
        if second not in self.starts:  # a new second: forget those out of the window
            for old in [s for s in self.starts if s <= second - STARTS_WINDOW_S]:
                del self.starts[old]
        self.starts[second] = self.starts.get(second, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        horizon = int(self._clock()) - STARTS_WINDOW_S
        return {
            "requests": self.requests,
            "by_path": dict(self.by_path),
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "errors_injected": self.errors_injected,
            "rate_limited": self.rate_limited,
            "cut": self.cut,
            "hung": self.hung,
            "unauthorized": self.unauthorized,
            "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens},
            "starts_per_second": {str(s): n for s, n in self.starts.items() if s > horizon},
            "peak_starts_1s": self.peak_starts_1s,
            "last_request": None if self.last is None else _describe(*self.last),
        }


Handler = Callable[[Scope, bytes, Send], Awaitable[None]]


class Simulator:
    """The ASGI app: ``/v1`` answers like OpenAI, ``/_sim`` controls faults and stats."""

    def __init__(
        self,
        faults: Faults,
        *,
        name: str,
        rng: random.Random,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        api_key: str | None = None,
    ) -> None:
        self.faults = faults
        self.name = name
        self._api_key = None if api_key is None else api_key.encode()
        self.stats = _Stats(clock)
        self._rng, self._clock, self._sleep = rng, clock, sleep
        self._reply = REPLY.format(name=name).split()
        self._models = dict.fromkeys(DEFAULT_MODELS)  # an ordered set; requests add to it
        self._ids = itertools.count(1)
        self._released = asyncio.Event()
        self._name_header = (b"x-sim-name", name.encode())
        self._routes: dict[str, tuple[str, Handler]] = {
            "/v1/chat/completions": ("POST", self._chat),
            "/v1/completions": ("POST", self._completion),
            "/v1/embeddings": ("POST", self._embeddings),
            "/v1/models": ("GET", self._list_models),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # no websockets here
        path: str = scope["path"]
        body = await _read_body(receive)
        try:
            if path.startswith("/v1/"):
                await self._provider(scope, body, receive, send)
            elif path.startswith("/_sim/"):
                await self._control(scope, body, send)
            else:
                raise _Refused(404, f"Unknown path {path}", "not_found")
        except _Refused as refusal:
            await self._json(send, refusal.status, refusal.body(), refusal.headers)

    def release_hung(self) -> None:
        """Answer every hung request (and any new one) with 503: the server is stopping."""
        self._released.set()

    async def _provider(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        handler: Handler
        self.stats.started(scope, body)
        try:
            if self._api_key is not None and not self._key_ok(scope["headers"]):
                self.stats.unauthorized += 1
                raise _Refused(401, "Incorrect API key provided (simulated).", "invalid_api_key")
            if path.startswith("/v1/models/"):
                method, handler = "GET", self._get_model
            elif path in self._routes:
                method, handler = self._routes[path]
            else:
                raise _Refused(404, f"Unknown path {path}", "not_found")
            if scope["method"] != method:
                raise _Refused(405, f"Use {method} for {path}", "method_not_allowed")
            if await self._inject_faults(receive):
                await self._until_done_or_gone(handler(scope, body, send), receive)
        finally:
            self.stats.in_flight -= 1  # also on refusal, disconnect, cut and cancellation

    def _key_ok(self, headers: Headers) -> bool:
        """The call carries ``--api-key`` in one of the headers providers read it from."""
        assert self._api_key is not None
        for name, value in headers:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                value = value[7:].strip()
            elif name not in (b"x-api-key", b"api-key"):
                continue
            if hmac.compare_digest(value, self._api_key):
                return True
        return False

    async def _until_done_or_gone(self, answer: Awaitable[None], receive: Receive) -> None:
        """Run the answer, but stop as soon as the client disconnects (uvicorn's ``send``
        ignores a gone client, so a slow stream would otherwise run to its end)."""
        task = asyncio.current_task()
        assert task is not None
        state = {"done": False, "gone": False}

        async def watch() -> None:
            await _until_disconnect(receive)
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
            raise _Refused(429, message, "rate_limit_exceeded", "requests", headers)
        if faults.error_rate and self._rng.random() < faults.error_rate:
            self.stats.errors_injected += 1
            status = faults.status_code
            kind = "server_error" if status >= 500 else "invalid_request_error"
            raise _Refused(status, f"Simulated error {status} from {self.name}", "simulated", kind)
        return True

    async def _hang(self, receive: Receive) -> bool:
        """Never answer: wait for the client to give up (False), or refuse once stopping."""
        self.stats.hung += 1
        disconnected = asyncio.ensure_future(_until_disconnect(receive))
        released = asyncio.ensure_future(self._released.wait())
        try:
            await asyncio.wait({disconnected, released}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            disconnected.cancel()
            released.cancel()
            await asyncio.wait({disconnected, released})
        if disconnected.cancelled():
            raise _Refused(503, "Simulator shutting down", "shutting_down", "server_error")
        return False

    # --- /v1 handlers -------------------------------------------------------------------

    async def _chat(self, scope: Scope, body: bytes, send: Send) -> None:
        payload = _json_object(body)
        if not isinstance(payload.get("messages"), list):
            raise _Refused(400, "'messages' must be a list", "invalid_request")
        await self._complete(payload, send, _count_words(payload["messages"]), chat=True)

    async def _completion(self, scope: Scope, body: bytes, send: Send) -> None:
        payload = _json_object(body)
        if "prompt" not in payload:
            raise _Refused(400, "'prompt' is required", "invalid_request")
        await self._complete(payload, send, _count_words(payload["prompt"]), chat=False)

    async def _complete(
        self, payload: dict[str, Any], send: Send, prompt_words: int, *, chat: bool
    ) -> None:
        """Chat and legacy completions differ only in names and in where the text goes."""
        model = self._model_of(payload)
        words, finish = self._answer(payload)
        usage = _usage(max(1, prompt_words), len(words))
        prefix, kind = ("chatcmpl", "chat.completion") if chat else ("cmpl", "text_completion")
        base: dict[str, Any] = {"id": f"{prefix}-{next(self._ids):08d}", "object": kind}
        base |= {"created": int(self._clock()), "model": model}
        if payload.get("stream") is not True:
            text = " ".join(words)
            whole = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
            await self._json(
                send, 200, {**base, "choices": [_choice(whole, finish)], "usage": usage}
            )
        else:
            pieces = [word if i == 0 else f" {word}" for i, word in enumerate(words)]
            parts: list[dict[str, Any]]
            if chat:
                base["object"] = "chat.completion.chunk"
                first = {"delta": {"role": "assistant", "content": pieces[0]}}
                parts = [first, *({"delta": {"content": p}} for p in pieces[1:]), {"delta": {}}]
            else:
                parts = [*({"text": p} for p in pieces), {"text": ""}]
            chunks: list[dict[str, Any]] = [
                {**base, "choices": [_choice(part, None)]} for part in parts
            ]
            chunks[-1]["choices"][0]["finish_reason"] = finish
            options = payload.get("stream_options")
            if isinstance(options, dict) and options.get("include_usage") is True:
                for chunk in chunks:  # as OpenAI does: null on every chunk, then a usage chunk
                    chunk["usage"] = None
                chunks.append({**base, "choices": [], "usage": usage})
            await self._stream(send, chunks)
        self._count_tokens(usage)

    async def _embeddings(self, scope: Scope, body: bytes, send: Send) -> None:
        payload = _json_object(body)
        model = self._model_of(payload)
        raw = payload.get("input")
        token_ids = isinstance(raw, list) and bool(raw) and isinstance(raw[0], int)
        inputs = [raw] if isinstance(raw, str) or token_ids else raw
        if (
            not isinstance(inputs, list)
            or not inputs
            or not all(isinstance(i, str | list) for i in inputs)
        ):
            message = "'input' must be a string or a list of strings or token ids, not empty"
            raise _Refused(400, message, "invalid_request")
        as_base64 = payload.get("encoding_format") == "base64"  # the openai client's default
        data = []
        for index, item in enumerate(inputs):
            vector = _vector(item)
            embedding = (
                base64.b64encode(struct.pack("<8f", *vector)).decode() if as_base64 else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = max(1, _count_words(inputs))
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        await self._json(
            send, 200, {"object": "list", "data": data, "model": model, "usage": usage}
        )
        self._count_tokens(usage)

    async def _list_models(self, scope: Scope, body: bytes, send: Send) -> None:
        data = [self._model_object(model) for model in self._models]
        await self._json(send, 200, {"object": "list", "data": data})

    async def _get_model(self, scope: Scope, body: bytes, send: Send) -> None:
        model = scope["path"].removeprefix("/v1/models/")
        if model not in self._models:
            raise _Refused(404, f"The model '{model}' does not exist", "model_not_found")
        await self._json(send, 200, self._model_object(model))

    # --- helpers ------------------------------------------------------------------------

    def _model_of(self, payload: dict[str, Any]) -> str:
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise _Refused(400, "'model' is required", "invalid_request")
        self._models[model] = None
        return model

    def _model_object(self, model: str) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": 0, "owned_by": self.name}

    def _answer(self, payload: dict[str, Any]) -> tuple[list[str], str]:
        limit = payload.get("max_completion_tokens", payload.get("max_tokens"))
        if limit is None:
            return self._reply, "stop"
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise _Refused(400, "'max_tokens' must be a positive integer", "invalid_request")
        return self._reply[:limit], "length" if limit < len(self._reply) else "stop"

    def _count_tokens(self, usage: dict[str, int]) -> None:
        self.stats.prompt_tokens += usage["prompt_tokens"]
        self.stats.completion_tokens += usage.get("completion_tokens", 0)

    async def _stream(self, send: Send, chunks: list[dict[str, Any]]) -> None:
        """One SSE event per ASGI message; ``cut_after`` drops the connection mid-stream."""
        events = [b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks]
        events.append(b"data: [DONE]\n\n")
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send(
            {"type": "http.response.start", "status": 200, "headers": [*headers, self._name_header]}
        )
        cut_after, delay = self.faults.cut_after, self.faults.chunk_delay_ms / 1000
        for index, event in enumerate(events):
            if index == cut_after:
                self.stats.cut += 1
                raise StreamCut(f"{self.name}: stream cut after {cut_after} chunks")
            if index and delay:
                await self._sleep(delay)
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _json(self, send: Send, status: int, payload: object, headers: Headers = ()) -> None:
        body = orjson.dumps(payload)
        length = (b"content-length", str(len(body)).encode())
        start = [(b"content-type", b"application/json"), length, self._name_header, *headers]
        await send({"type": "http.response.start", "status": status, "headers": start})
        await send({"type": "http.response.body", "body": body})

    # --- /_sim control plane ------------------------------------------------------------

    async def _control(self, scope: Scope, body: bytes, send: Send) -> None:
        action = f"{scope['method']} {scope['path']}"
        if action == "GET /_sim/faults":
            await self._json(send, 200, asdict(self.faults))
        elif action == "POST /_sim/faults":
            try:
                self.faults.update(_json_object(body))
            except ValueError as exc:
                raise _Refused(400, str(exc), "invalid_fault") from None
            await self._json(send, 200, asdict(self.faults))
        elif action == "GET /_sim/stats":
            await self._json(send, 200, self.stats.snapshot())
        elif action == "POST /_sim/reset":
            in_flight = self.stats.in_flight  # those still running decrement when they end
            self.stats.reset()
            self.stats.in_flight = in_flight
            await self._json(send, 200, self.stats.snapshot())
        else:
            raise _Refused(404, f"Unknown control endpoint {action}", "not_found")


def create_sim_app(
    faults: Faults | None = None,
    *,
    name: str = "sim",
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    api_key: str | None = None,
) -> Simulator:
    """Build a simulator; ``rng``, ``clock`` and ``sleep`` are seams for deterministic tests.
    With ``api_key``, ``/v1`` calls without that key are answered 401."""
    rng = rng or random.Random()
    return Simulator(
        faults or Faults(), name=name, rng=rng, clock=clock, sleep=sleep, api_key=api_key
    )


# --- request and response pieces ---------------------------------------------------------


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _Refused(400, f"Body is not valid JSON: {exc}", "invalid_json") from None
    if not isinstance(payload, dict):
        raise _Refused(400, "Body must be a JSON object", "invalid_json")
    return payload


def _describe(scope: Scope, body: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
    return {
        "method": scope["method"],
        "path": scope["path"],
        "query": scope["query_string"].decode("latin-1"),
        "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
        "body": parsed,
    }


def _count_words(value: object) -> int:
    """Words in strings, one per token id; messages and content parts count their text."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, int) and not isinstance(value, bool):
        return 1
    if isinstance(value, list):
        return sum(_count_words(item) for item in value)
    if isinstance(value, dict):
        return _count_words(value.get("content")) + _count_words(value.get("text"))
    return 0


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    total = prompt_tokens + completion_tokens
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": total,
    }


def _choice(part: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {"index": 0, **part, "logprobs": None, "finish_reason": finish}


def _vector(item: object) -> list[float]:
    """Eight floats in [-1, 1) from a hash of the input: the same input, the same vector."""
    digest = hashlib.sha256(orjson.dumps(item)).digest()
    return [round(n / 2**31 - 1, 6) for n in struct.unpack("<8I", digest)]


# --- command line ------------------------------------------------------------------------


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``canary simulate`` options; fault options keep the names of ``Faults`` fields."""
    add = parser.add_argument
    add("--port", type=int, required=True)
    add("--host", default="127.0.0.1")
    add("--name", default="sim", help="sent back in the x-sim-name header and the reply")
    add("--latency-ms", type=float, default=0.0, help="delay before the response headers")
    add("--chunk-delay-ms", type=float, default=0.0, help="delay between SSE chunks")
    add("--error-rate", type=float, default=0.0, help="share of requests failed with --status-code")
    add("--status-code", type=int, default=500, help="status of injected errors (400..599)")
    add("--rate-limit-rate", type=float, default=0.0, help="share of requests answered 429")
    add("--retry-after", type=float, default=1.0, dest="retry_after_s", metavar="SECONDS")
    add("--cut-after", type=int, default=None, help="drop streams after N content chunks")
    add("--hang", action="store_true", help="accept requests and never answer")
    add("--seed", type=int, default=None, help="seed for the fault dice")
    add(
        "--api-key",
        default=None,
        metavar="KEY",
        help="answer 401 to /v1 calls without this key (Bearer, x-api-key or api-key)",
    )


class _QuietCuts(logging.Filter):
    """Drop uvicorn's traceback for an intentional cut; ``/_sim/stats`` counts it instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], StreamCut))


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, simulator: Simulator) -> None:
        super().__init__(config)
        self._simulator = simulator

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        self._simulator.release_hung()  # or hung requests hold graceful shutdown open
        await super().shutdown(sockets)


def run_simulate(args: argparse.Namespace) -> int:
    """Serve the simulator until SIGINT/SIGTERM, then return 0; 2 if a fault is invalid."""
    try:
        faults = Faults(**{field.name: getattr(args, field.name) for field in fields(Faults)})
    except ValueError as exc:
        print(f"canary simulate: {exc}", file=sys.stderr)
        return 2
    simulator = create_sim_app(
        faults, name=args.name, rng=random.Random(args.seed), api_key=args.api_key or None
    )
    config = uvicorn.Config(
        simulator,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
        timeout_keep_alive=75,  # like real providers: longer than the router's pool keep-alive
    )
    quiet, uvicorn_log = _QuietCuts(), logging.getLogger("uvicorn.error")
    uvicorn_log.addFilter(quiet)  # after Config(), which configures uvicorn's loggers
    try:
        with stop_signals_return():
            _Server(config, simulator).run()
    finally:
        uvicorn_log.removeFilter(quiet)
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="canary simulate", description=__doc__.splitlines()[0])
    add_simulate_arguments(_parser)
    raise SystemExit(run_simulate(_parser.parse_args()))
