"""The fake provider: in-process through ASGI first, then as a real process over a socket."""

from __future__ import annotations

import asyncio
import base64
import random
import struct
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import IO, Any

import httpx
import httpx2
import openai
import orjson
import pytest

from canary.tools.simulate import REPLY, Faults, Simulator, StreamCut, create_sim_app
from canary.tools.simulate.stats import fingerprint
from tests.helpers import free_port, run_process, wait_until

NOW = 1_700_000_000.0
WORDS = REPLY.format(name="sim").split()  # 8 words: "Hello from sim! This is a simulated reply."
CHAT = {
    "model": "gpt-4.1",
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "say hello"}]},
    ],
}
CHAT_PROMPT_TOKENS = 4


class FakeTime:
    """The simulator's clock and sleep: sleeping records the delay and advances the clock."""

    def __init__(self) -> None:
        self.now = NOW
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def app(fake_time: FakeTime) -> Simulator:
    return create_sim_app(rng=random.Random(7), clock=fake_time.clock, sleep=fake_time.sleep)


@pytest.fixture
async def client(app: Simulator) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
        yield client


def sse_data(text: str) -> list[Any]:
    """The ``data:`` payloads of an SSE body, JSON-decoded except the final ``[DONE]``."""
    events = [line.removeprefix("data: ") for line in text.split("\n\n") if line]
    return [event if event == "[DONE]" else orjson.loads(event) for event in events]


async def drive(
    app: Simulator,
    method: str,
    path: str,
    payload: object = None,
    *,
    disconnect: asyncio.Event | None = None,
    sent: list[Any] | None = None,
    listening: asyncio.Event | None = None,
) -> list[Any]:
    """Call the app as a server would and return what it sent.

    After the body, ``receive`` sets ``listening`` and waits for ``disconnect``.
    """
    sent = [] if sent is None else sent
    disconnect = disconnect or asyncio.Event()
    listening = listening or asyncio.Event()
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            body = b"" if payload is None else orjson.dumps(payload)
            return {"type": "http.request", "body": body, "more_body": False}
        listening.set()
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "query_string": b"", "headers": []}
    await app(scope, receive, send)
    return sent


# --- answers ---------------------------------------------------------------------------


async def test_chat_completion_answers_in_openai_shape(client: httpx.AsyncClient) -> None:
    """A chat completion echoes the model, replies the fixed text and counts words as tokens."""
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert response.headers["x-sim-name"] == "sim"
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "gpt-4.1"
    assert body["created"] == int(NOW)
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": " ".join(WORDS)},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 8, "total_tokens": 12}


async def test_max_tokens_truncates_the_reply(client: httpx.AsyncClient) -> None:
    """``max_tokens`` cuts the reply to that many words and reports finish_reason "length"."""
    response = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 3})
    choice = response.json()["choices"][0]
    assert choice["message"]["content"] == "Hello from sim!"
    assert choice["finish_reason"] == "length"
    assert response.json()["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("include_usage", [True, False])
async def test_streamed_chat_sends_a_chunk_per_word(
    client: httpx.AsyncClient, include_usage: bool
) -> None:
    """A stream sends a chunk per word, a finish chunk, usage only if asked, then [DONE]."""
    request = {**CHAT, "stream": True, "stream_options": {"include_usage": include_usage}}
    response = await client.post("/v1/chat/completions", json=request)
    assert response.headers["content-type"] == "text/event-stream"
    *chunks, done = sse_data(response.text)
    assert done == "[DONE]"
    content = chunks[: len(WORDS)]
    assert content[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Hello"}
    assert "".join(c["choices"][0]["delta"]["content"] for c in content) == " ".join(WORDS)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    finish = chunks[len(WORDS)]
    assert finish["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    if include_usage:
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"] == {
            "prompt_tokens": CHAT_PROMPT_TOKENS,
            "completion_tokens": 8,
            "total_tokens": 12,
        }
        assert all(c["usage"] is None for c in chunks[:-1])
    else:
        assert len(chunks) == len(WORDS) + 1
        assert all("usage" not in c for c in chunks)


@pytest.mark.parametrize("stream", [False, True])
async def test_legacy_completion_answers_text(client: httpx.AsyncClient, stream: bool) -> None:
    """Legacy completions carry the reply in ``text``, whole or word by word."""
    request = {"model": "gpt-3.5-turbo-instruct", "prompt": "one two three", "stream": stream}
    response = await client.post("/v1/completions", json=request)
    assert response.status_code == 200
    if stream:
        *chunks, done = sse_data(response.text)
        assert done == "[DONE]"
        assert "".join(c["choices"][0]["text"] for c in chunks) == " ".join(WORDS)
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    else:
        body = response.json()
        assert body["object"] == "text_completion"
        assert body["choices"][0]["text"] == " ".join(WORDS)
        assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11}


async def test_embeddings_are_deterministic_in_both_encodings(client: httpx.AsyncClient) -> None:
    """Each input gets eight floats derived from its hash; base64 carries the same vector."""
    request = {"model": "text-embedding-3-small", "input": ["alpha beta", "gamma"]}
    floats = (await client.post("/v1/embeddings", json=request)).json()
    again = (await client.post("/v1/embeddings", json=request)).json()
    packed = await client.post("/v1/embeddings", json={**request, "encoding_format": "base64"})
    assert floats == again
    vectors = [item["embedding"] for item in floats["data"]]
    assert [len(v) for v in vectors] == [8, 8]
    assert vectors[0] != vectors[1]
    assert all(-1 <= x < 1 for v in vectors for x in v)
    decoded = struct.unpack("<8f", base64.b64decode(packed.json()["data"][0]["embedding"]))
    assert decoded == pytest.approx(vectors[0], abs=1e-6)
    assert floats["usage"] == {"prompt_tokens": 3, "total_tokens": 3}


async def test_models_lists_defaults_and_every_model_seen(client: httpx.AsyncClient) -> None:
    """The model list holds the defaults plus any model a request named; unknown ids are 404."""
    await client.post("/v1/chat/completions", json={**CHAT, "model": "my-model"})
    listed = [m["id"] for m in (await client.get("/v1/models")).json()["data"]]
    assert listed == ["gpt-4.1", "gpt-4.1-mini", "text-embedding-3-small", "my-model"]
    assert (await client.get("/v1/models/my-model")).json()["id"] == "my-model"
    missing = await client.get("/v1/models/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"authorization": "Bearer sk-sim-right-0a1b"}, id="bearer"),
        pytest.param({"authorization": "bearer  sk-sim-right-0a1b"}, id="bearer-any-case"),
        pytest.param({"x-api-key": "sk-sim-right-0a1b"}, id="x-api-key"),
        pytest.param({"api-key": "sk-sim-right-0a1b"}, id="api-key"),
    ],
)
async def test_api_key_is_accepted_in_any_providers_header(headers: dict[str, str]) -> None:
    """With ``api_key`` the key is read from Bearer, ``x-api-key`` or ``api-key``."""
    app = create_sim_app(api_key="sk-sim-right-0a1b")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://s") as c:
        models = await c.get("/v1/models", headers=headers)
        chat = await c.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert (models.status_code, chat.status_code) == (200, 200)
    assert "gpt-4.1" in [m["id"] for m in models.json()["data"]]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="none"),
        pytest.param({"authorization": "Bearer sk-sim-WRONG-9z8y"}, id="wrong-bearer"),
        pytest.param({"x-api-key": "sk-sim-WRONG-9z8y"}, id="wrong-x-api-key"),
        pytest.param({"authorization": "sk-sim-right-0a1b"}, id="not-bearer"),
        pytest.param({"x-other": "sk-sim-right-0a1b"}, id="other-header"),
    ],
)
async def test_api_key_refuses_any_other_key_with_401(headers: dict[str, str]) -> None:
    """Without the key every /v1 call is a 401 in OpenAI's shape that never echoes a key;
    the control plane needs none."""
    app = create_sim_app(api_key="sk-sim-right-0a1b")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://s") as c:
        refused = await c.get("/v1/models", headers=headers)
        stats = (await c.get("/_sim/stats")).json()
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert "sk-sim" not in refused.text
    assert (stats["requests"], stats["unauthorized"]) == (1, 1)


@pytest.mark.parametrize(
    ("method", "path", "content", "status", "code"),
    [
        ("GET", "/elsewhere", b"", 404, "not_found"),
        ("POST", "/v1/nothing", b"{}", 404, "not_found"),
        ("GET", "/v1/chat/completions", b"", 405, "method_not_allowed"),
        ("POST", "/v1/chat/completions", b"{not json", 400, "invalid_json"),
        ("POST", "/v1/chat/completions", b"[]", 400, "invalid_json"),
        ("POST", "/v1/chat/completions", b'{"messages": []}', 400, "invalid_request"),
        ("POST", "/v1/embeddings", b'{"model": "m", "input": []}', 400, "invalid_request"),
        (
            "POST",
            "/v1/chat/completions",
            orjson.dumps({**CHAT, "max_tokens": 0}),
            400,
            "invalid_request",
        ),
    ],
)
async def test_bad_requests_get_openai_shaped_errors(
    client: httpx.AsyncClient, method: str, path: str, content: bytes, status: int, code: str
) -> None:
    """Unknown paths, wrong methods, bad JSON and missing fields answer in OpenAI's error shape."""
    response = await client.request(method, path, content=content)
    assert response.status_code == status
    assert response.headers["x-sim-name"] == "sim"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code"}
    assert error["code"] == code


# --- faults ----------------------------------------------------------------------------


async def test_error_rate_one_answers_the_configured_status(
    app: Simulator, client: httpx.AsyncClient
) -> None:
    """With error_rate 1 every request gets ``status_code`` and an OpenAI error body."""
    app.faults.update({"error_rate": 1.0, "status_code": 503})
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "server_error"
    assert app.stats.errors_injected == 1


async def test_rate_limit_answers_429_with_retry_after(
    app: Simulator, client: httpx.AsyncClient
) -> None:
    """A rate-limited request gets 429, Retry-After rounded up and retry-after-ms exact."""
    app.faults.update({"rate_limit_rate": 1.0, "retry_after_s": 1.5, "error_rate": 1.0})
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 429  # the rate limit is checked before the error dice
    assert response.headers["retry-after"] == "2"
    assert response.headers["retry-after-ms"] == "1500"
    assert response.json() == {
        "error": {
            "message": "Rate limit reached (simulated)",
            "type": "requests",
            "code": "rate_limit_exceeded",
        }
    }
    assert (app.stats.rate_limited, app.stats.errors_injected) == (1, 0)


async def test_error_share_follows_the_seeded_rng() -> None:
    """Two simulators with the same seed fail exactly the same requests."""

    async def statuses(seed: int) -> list[int]:
        app = create_sim_app(Faults(error_rate=0.5), rng=random.Random(seed))
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://sim"
        ) as c:
            return [(await c.get("/v1/models")).status_code for _ in range(20)]

    first = await statuses(3)
    assert first == await statuses(3)
    assert set(first) == {200, 500}


async def test_latency_and_chunk_delay_go_through_the_sleep_seam(
    app: Simulator, client: httpx.AsyncClient, fake_time: FakeTime
) -> None:
    """Latency sleeps once before the headers; chunk delay sleeps between every two events."""
    app.faults.update({"latency_ms": 250, "chunk_delay_ms": 20})
    response = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    events = sse_data(response.text)
    assert fake_time.sleeps == [0.25] + [0.02] * (len(events) - 1)


async def test_cut_after_drops_the_stream_after_n_chunks(app: Simulator) -> None:
    """cut_after=2 sends the headers and two content chunks, never [DONE], then raises StreamCut."""
    app.faults.update({"cut_after": 2})
    sent: list[Any] = []
    with pytest.raises(StreamCut):
        await drive(app, "POST", "/v1/chat/completions", {**CHAT, "stream": True}, sent=sent)
    assert [m["type"] for m in sent] == ["http.response.start", *["http.response.body"] * 2]
    assert all(m["more_body"] for m in sent[1:])  # the body is never completed
    assert [
        orjson.loads(m["body"][6:])["choices"][0]["delta"].get("content") for m in sent[1:]
    ] == [
        "Hello",
        " from",
    ]
    assert (app.stats.cut, app.stats.in_flight) == (1, 0)


async def test_hang_answers_nothing_until_the_client_leaves(app: Simulator) -> None:
    """A hung request sends nothing; when the client disconnects it ends and leaves in-flight."""
    app.faults.update({"hang": True})
    disconnect = asyncio.Event()
    disconnect.set()  # the client gives up as soon as the app listens
    sent = await drive(app, "POST", "/v1/chat/completions", CHAT, disconnect=disconnect)
    assert sent == []
    assert (app.stats.hung, app.stats.in_flight) == (1, 0)


async def test_hang_cancelled_leaves_in_flight(app: Simulator) -> None:
    """A hung request cancelled by its server still decrements in-flight."""
    app.faults.update({"hang": True})
    listening = asyncio.Event()
    task = asyncio.create_task(drive(app, "GET", "/v1/models", listening=listening))
    await listening.wait()  # the app is hanging, waiting for a disconnect
    assert (app.stats.hung, app.stats.in_flight) == (1, 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert app.stats.in_flight == 0


async def test_release_answers_hung_requests_503(app: Simulator) -> None:
    """Once the server stops, hung requests (and new ones) are answered 503."""
    app.faults.update({"hang": True})
    app.release_hung()
    sent = await drive(app, "GET", "/v1/models")
    assert sent[0]["status"] == 503
    assert orjson.loads(sent[1]["body"])["error"]["code"] == "shutting_down"


# --- control plane ---------------------------------------------------------------------


async def test_faults_change_at_runtime(client: httpx.AsyncClient) -> None:
    """POST /_sim/faults applies a partial update that the very next request obeys."""
    assert (await client.get("/_sim/faults")).json() == asdict(Faults())
    updated = await client.post("/_sim/faults", json={"error_rate": 1, "status_code": 502})
    assert updated.json() == {**asdict(Faults()), "error_rate": 1.0, "status_code": 502}
    assert (await client.get("/v1/models")).status_code == 502
    await client.post("/_sim/faults", json={"error_rate": 0})
    assert (await client.get("/v1/models")).status_code == 200


@pytest.mark.parametrize(
    "patch",
    [
        {"nope": 1},
        {"error_rate": 1.5},
        {"status_code": 200},
        {"latency_ms": -1},
        {"latency_ms": True},
        {"cut_after": 1.5},
        {"hang": "yes"},
        {"error_rate": 1.0, "unknown": 0},
        [1, 2],
    ],
)
async def test_bad_fault_update_is_rejected_whole(
    app: Simulator, client: httpx.AsyncClient, patch: object
) -> None:
    """An unknown key or bad value answers 400 and changes nothing, not even the valid keys."""
    response = await client.post("/_sim/faults", json=patch)
    assert response.status_code == 400
    assert response.json()["error"]["message"]
    assert app.faults == Faults()


def test_faults_validate_on_construction() -> None:
    """Faults built from command-line values are checked like runtime updates."""
    with pytest.raises(ValueError, match="error_rate"):
        Faults(error_rate=2)
    assert Faults(latency_ms=5).latency_ms == 5.0


async def test_stats_count_requests_tokens_and_the_last_request(
    client: httpx.AsyncClient,
) -> None:
    """Stats count /v1 requests by path, tokens of answers, and show the last request in full."""
    await client.post("/v1/chat/completions", json=CHAT)
    await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    await client.post(
        "/v1/embeddings?trace=1", json={"model": "e", "input": "a b"}, headers={"X-Probe": "yes"}
    )
    await client.get("/_sim/faults")  # the control plane is not counted
    stats = (await client.get("/_sim/stats")).json()
    assert stats["requests"] == 3
    assert stats["by_path"] == {"/v1/chat/completions": 2, "/v1/embeddings": 1}
    assert (stats["in_flight"], stats["peak_in_flight"]) == (0, 1)
    assert stats["tokens"] == {"prompt": 4 + 4 + 2, "completion": 8 + 8}
    assert stats["starts_per_second"] == {str(int(NOW)): 3}
    last = stats["last_request"]
    assert (last["method"], last["path"], last["query"]) == ("POST", "/v1/embeddings", "trace=1")
    assert last["headers"]["x-probe"] == "yes"
    assert last["body"] == {"model": "e", "input": "a b"}


async def test_last_request_shows_keys_only_as_fingerprints(client: httpx.AsyncClient) -> None:
    """Credential headers in the last request keep their name and scheme, never the key."""
    headers = {"authorization": "Bearer sk-a", "x-api-key": "sk-b", "api-key": "sk-c"}
    await client.post("/v1/chat/completions", json=CHAT, headers=headers)
    stats = (await client.get("/_sim/stats")).text
    for key in ("sk-a", "sk-b", "sk-c"):
        assert f'"{key}' not in stats and f" {key}" not in stats
    shown = orjson.loads(stats)["last_request"]["headers"]
    assert shown["authorization"] == f"Bearer {fingerprint('sk-a')}"
    assert (shown["x-api-key"], shown["api-key"]) == (fingerprint("sk-b"), fingerprint("sk-c"))


async def test_starts_per_second_keeps_the_last_two_minutes(
    client: httpx.AsyncClient, fake_time: FakeTime
) -> None:
    """Request starts are bucketed per unix second and forgotten after 120 seconds."""
    await client.get("/v1/models")
    fake_time.now += 1
    await client.get("/v1/models")
    await client.get("/v1/models")
    assert (await client.get("/_sim/stats")).json()["starts_per_second"] == {
        str(int(NOW)): 1,
        str(int(NOW) + 1): 2,
    }
    fake_time.now += 120
    assert (await client.get("/_sim/stats")).json()["starts_per_second"] == {}


async def test_peak_starts_counts_any_one_second_window(
    client: httpx.AsyncClient, fake_time: FakeTime
) -> None:
    """The peak counts starts in any one-second window, also one across two unix seconds."""
    for offset in (0.6, 0.8, 1.1, 1.3, 2.3):  # 2 + 2 per unix second; 4 within (0.3, 1.3]
        fake_time.now = NOW + offset
        await client.get("/v1/models")
    stats = (await client.get("/_sim/stats")).json()
    assert max(stats["starts_per_second"].values()) == 2
    assert stats["peak_starts_1s"] == 4
    assert (await client.post("/_sim/reset")).json()["peak_starts_1s"] == 0


async def test_reset_zeroes_the_stats(client: httpx.AsyncClient) -> None:
    """POST /_sim/reset forgets every counter and the last request."""
    await client.post("/v1/chat/completions", json=CHAT)
    reset = (await client.post("/_sim/reset")).json()
    assert reset["requests"] == 0
    assert reset["tokens"] == {"prompt": 0, "completion": 0}
    assert reset["last_request"] is None


async def test_lifespan_is_acknowledged(app: Simulator) -> None:
    """The app completes the ASGI lifespan handshake, so any server can host it."""
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    await app({"type": "lifespan"}, receive, send)
    assert sent == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]


# --- end to end: a real process, a real socket, the official client --------------------


def simulator_args(port: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "canary.tools.simulate",
        "--port",
        str(port),
        "--seed",
        "1",
        *extra,
    ]


@pytest.fixture(scope="module")
def simulator_process() -> Iterator[tuple[str, IO[bytes]]]:
    port = free_port()
    with (
        tempfile.TemporaryFile() as output,
        run_process(
            simulator_args(port, "--name", "e2e"),
            f"http://127.0.0.1:{port}/_sim/stats",
            output=output,
        ),
    ):
        yield f"http://127.0.0.1:{port}", output


@pytest.fixture
def sim(simulator_process: tuple[str, IO[bytes]]) -> Iterator[str]:
    """The running simulator's base URL, with default faults and zeroed stats."""
    url, _ = simulator_process
    with httpx.Client() as control:
        control.post(f"{url}/_sim/faults", json=asdict(Faults())).raise_for_status()
        control.post(f"{url}/_sim/reset").raise_for_status()
    yield url


def stats(url: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/_sim/stats")
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def set_faults(url: str, **patch: object) -> None:
    httpx.post(f"{url}/_sim/faults", json=patch).raise_for_status()


@pytest.mark.e2e
def test_openai_client_completes_a_chat(sim: str) -> None:
    """The official client gets a chat completion from the real process."""
    with openai.OpenAI(base_url=f"{sim}/v1", api_key="sk-test", max_retries=0) as client:
        response = client.with_raw_response.chat.completions.create(
            model="gpt-4.1", messages=[{"role": "user", "content": "hello there"}]
        )
    completion = response.parse()
    assert response.headers["x-sim-name"] == "e2e"
    assert completion.choices[0].message.content == "Hello from e2e! This is a simulated reply."
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (2, 8)
    assert stats(sim)["last_request"]["headers"]["authorization"] == (
        f"Bearer {fingerprint('sk-test')}"
    )


@pytest.mark.e2e
async def test_async_openai_client_streams_with_usage_last(sim: str) -> None:
    """AsyncOpenAI receives the stream as separate chunks, the usage chunk last."""
    async with openai.AsyncOpenAI(base_url=f"{sim}/v1", api_key="sk-test", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="gpt-4.1",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        async with stream:
            chunks = [chunk async for chunk in stream]
    content = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(content) == 8
    assert "".join(content) == "Hello from e2e! This is a simulated reply."
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 9
    assert all(c.usage is None for c in chunks[:-1])


@pytest.mark.e2e
def test_each_event_is_its_own_http_chunk(sim: str) -> None:
    """On the wire every SSE event is a separate chunk of the chunked body."""
    request = {**CHAT, "stream": True}
    with httpx.stream("POST", f"{sim}/v1/chat/completions", json=request) as response:
        assert response.headers["transfer-encoding"] == "chunked"
        pieces = list(response.iter_raw())
    events = sse_data(b"".join(pieces).decode())
    assert len(events) == len(WORDS) + 2  # words, finish chunk, [DONE]
    assert len(pieces) >= len(events)  # h11 never merges two chunks into one piece


@pytest.mark.e2e
def test_openai_client_embeds_and_lists_models(sim: str) -> None:
    """Embeddings (base64 by default in the client) and the model list work end to end."""
    with openai.OpenAI(base_url=f"{sim}/v1", api_key="sk-test", max_retries=0) as client:
        embedding = client.embeddings.create(model="text-embedding-3-small", input=["a b", "c"])
        models = [model.id for model in client.models.list()]
    assert [len(item.embedding) for item in embedding.data] == [8, 8]
    assert embedding.usage.prompt_tokens == 3
    assert "text-embedding-3-small" in models


@pytest.mark.e2e
def test_cut_stream_raises_in_the_openai_client(
    sim: str, simulator_process: tuple[str, IO[bytes]]
) -> None:
    """A cut stream surfaces as APIConnectionError caused by an incomplete chunked read."""
    set_faults(sim, cut_after=2)
    received: list[str | None] = []
    with openai.OpenAI(base_url=f"{sim}/v1", api_key="sk-test", max_retries=0) as client:
        stream = client.chat.completions.create(
            model="gpt-4.1", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        with stream, pytest.raises(openai.APIConnectionError) as caught:
            received.extend(chunk.choices[0].delta.content for chunk in stream)
    assert received == ["Hello", " from"]
    assert isinstance(caught.value.__cause__, httpx2.RemoteProtocolError)
    assert "incomplete chunked read" in str(caught.value.__cause__)
    assert stats(sim)["cut"] == 1
    _, output = simulator_process
    output.seek(0)
    assert b"Traceback" not in output.read()  # the intentional cut is not logged as a crash


@pytest.mark.e2e
def test_cut_stream_is_incomplete_for_httpx(sim: str) -> None:
    """A plain httpx client sees RemoteProtocolError, not a clean end of body."""
    set_faults(sim, cut_after=0)
    with (
        httpx.stream(
            "POST", f"{sim}/v1/completions", json={"model": "m", "prompt": "x", "stream": True}
        ) as response,
        pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"),
    ):
        response.read()
    assert response.status_code == 200


@pytest.mark.e2e
def test_rate_limit_reaches_the_openai_client(sim: str) -> None:
    """A simulated 429 becomes openai.RateLimitError with the Retry-After headers."""
    set_faults(sim, rate_limit_rate=1.0, retry_after_s=0.25)
    with (
        openai.OpenAI(base_url=f"{sim}/v1", api_key="sk-test", max_retries=0) as client,
        pytest.raises(openai.RateLimitError) as caught,
    ):
        client.models.list()
    assert caught.value.response.headers["retry-after"] == "1"
    assert caught.value.response.headers["retry-after-ms"] == "250"


@pytest.mark.e2e
def test_hang_times_out_the_client_and_ends_on_disconnect(sim: str) -> None:
    """A hung request times the client out; its disconnect takes it out of in-flight."""
    set_faults(sim, hang=True)
    with (
        openai.OpenAI(
            base_url=f"{sim}/v1", api_key="sk-test", max_retries=0, timeout=0.5
        ) as client,
        pytest.raises(openai.APITimeoutError),
    ):
        client.chat.completions.create(
            model="gpt-4.1", messages=[{"role": "user", "content": "hi"}]
        )
    wait_until(lambda: stats(sim)["in_flight"] == 0, what="hung request left in-flight")
    assert stats(sim)["hung"] == 1


@pytest.mark.e2e
def test_sigterm_answers_hung_requests_and_exits_zero() -> None:
    """SIGTERM answers hung requests 503 and the process exits with status 0."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (
        run_process(simulator_args(port, "--hang"), f"{url}/_sim/stats") as process,
        httpx.Client(timeout=10) as client,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        hung = pool.submit(client.get, f"{url}/v1/models")
        wait_until(lambda: stats(url)["hung"] == 1, what="request hung")
        process.terminate()
        assert hung.result(timeout=10).status_code == 503
        assert process.wait(timeout=10) == 0
