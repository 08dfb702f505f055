"""Claude and Responses clients end to end: the official anthropic and openai SDKs through
a real ``canary serve`` to two real ``canary simulate`` processes that refuse any key but
their own. Keys, streams, cut streams, prefix paths, and token counts held against the
provider's, per dialect.

One router and two simulators serve the whole module; each test resets the faults and
reads counters as differences, so the tests do not depend on their order.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from canary.tools.simulate.stats import fingerprint
from tests.helpers import (
    CLIENT_KEY,
    LEGACY_KEY,
    RELAY_KEY,
    free_port,
    prometheus_samples,
    run_process,
    simulator,
    wait_until,
)

pytestmark = pytest.mark.e2e

ROUTES = """
backends:
  legacy:                       # no api_key_header: the key goes out as the client sent its own
    base_url: ${LEGACY_BASE_URL}
    api_key: ${LEGACY_API_KEY}
    timeout_s: 10
  relay:
    base_url: ${RELAY_BASE_URL}
    api_key: ${RELAY_API_KEY}
    api_key_header: x-api-key
    timeout_s: 10
    model_map: {claude-sonnet-4: claude-sonnet-4-20250514}
routes:
  - name: pinned
    match:
      headers: {x-pin: relay}
    weights: {relay: 100}
  - name: claude-canary
    match:
      paths: ["/v1/messages*"]
      headers: {x-pin: canary}
    weights: {legacy: 0, relay: 100}
    baseline: legacy
    fallback: true
  - name: claude
    match:
      paths: ["/v1/messages*"]
      models: ["claude-*"]
    weights: {legacy: 100}
  - name: default
    weights: {legacy: 100}
auth:
  api_keys: ${CANARY_API_KEYS}
pricing:
  legacy: {claude-sonnet-4: {input: 3.00, output: 15.00}, gpt-4.1: {input: 2.00, output: 8.00}}
  relay: {claude-sonnet-4: {input: 3.00, output: 15.00}}
"""

CLAUDE = "claude-sonnet-4"
PROMPT = "please count these five words"  # five prompt tokens at the simulator
DEFAULT_FAULTS = {"latency_ms": 0, "chunk_delay_ms": 0, "error_rate": 0, "cut_after": None}


@dataclass
class Router:
    """The module's router and its two simulators, with the calls the tests make on them."""

    url: str
    legacy: str
    relay: str
    log: Any

    def sim(self, which: str, path: str, body: dict[str, Any] | None = None) -> Any:
        base = self.legacy if which == "legacy" else self.relay
        r = httpx.post(base + path, json=body) if body is not None else httpx.get(base + path)
        r.raise_for_status()
        return r.json()

    def cut_after(self, which: str, events: int | None) -> None:
        self.sim(which, "/_sim/faults", {"cut_after": events})

    def last_headers(self, which: str) -> dict[str, str]:
        headers: dict[str, str] = self.sim(which, "/_sim/stats")["last_request"]["headers"]
        return headers

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return prometheus_samples(httpx.get(f"{self.url}/metrics").text)

    def anthropic(self, **kw: Any) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.url, api_key=CLIENT_KEY, max_retries=0, **kw)

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=CLIENT_KEY, max_retries=0)


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    """A router with client keys on two simulators that accept only their backend's key."""
    ports = free_port(), free_port(), free_port()
    legacy, relay = (f"http://127.0.0.1:{p}" for p in ports[:2])
    config: Path = tmp_path_factory.mktemp("dialects") / "routes.yaml"
    config.write_text(ROUTES)
    args = [sys.executable, "-m", "canary", "serve", "-c", str(config), "--port", str(ports[2])]
    env = {
        "LEGACY_BASE_URL": f"{legacy}/v1",
        "RELAY_BASE_URL": f"{relay}/v1",
        "LEGACY_API_KEY": LEGACY_KEY,
        "RELAY_API_KEY": RELAY_KEY,
        "CANARY_API_KEYS": CLIENT_KEY,
    }
    with (
        simulator(ports[0], "legacy", "--api-key", LEGACY_KEY),
        simulator(ports[1], "relay", "--api-key", RELAY_KEY),
        tempfile.TemporaryFile() as log,
        run_process(args, f"http://127.0.0.1:{ports[2]}/readyz", output=log, env=env),
    ):
        yield Router(f"http://127.0.0.1:{ports[2]}", legacy, relay, log)


@pytest.fixture
def stack(router: Router) -> Router:
    """The module's router, its simulators without faults, and every call of the tests
    before accounted (none in flight), so counters read as differences are this test's."""
    for which in ("legacy", "relay"):
        router.sim(which, "/_sim/faults", DEFAULT_FAULTS)

    def idle() -> bool:
        backends = httpx.get(f"{router.url}/status").json()["backends"].values()
        return all(b["in_flight"] == 0 for b in backends)

    wait_until(idle, 5, "no call in flight")
    return router


def stream_cuts(r: Router, backend: str) -> float:
    key = ("canary_upstream_failures_total", (("backend", backend), ("kind", "stream_cut")))
    return r.metrics().get(key, 0.0)


# --- the anthropic SDK ------------------------------------------------------------------


def test_anthropic_sdk_gets_a_message(stack: Router) -> None:
    """A Messages call through the router: the provider's answer, usage and route."""
    with stack.anthropic() as client:
        raw = client.messages.with_raw_response.create(
            model=CLAUDE, max_tokens=64, messages=[{"role": "user", "content": PROMPT}]
        )
    message = raw.parse()
    assert (raw.headers["x-canary-backend"], raw.headers["x-canary-route"]) == ("legacy", "claude")
    assert message.content[0].type == "text"
    assert message.content[0].text == "Hello from legacy! This is a simulated reply."
    assert (message.usage.input_tokens, message.usage.output_tokens) == (5, 8)


def test_anthropic_sdk_streams_a_message(stack: Router) -> None:
    """A streamed Messages call arrives whole, with message_start's and message_delta's usage."""
    with (
        stack.anthropic(default_headers={"x-pin": "relay"}) as client,
        client.messages.stream(
            model=CLAUDE, max_tokens=64, messages=[{"role": "user", "content": PROMPT}]
        ) as stream,
    ):
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello from relay! This is a simulated reply."
    assert final.model == "claude-sonnet-4-20250514"  # relay's model_map
    assert (final.usage.input_tokens, final.usage.output_tokens) == (5, 8)


def test_anthropic_sdk_raises_on_a_cut_stream(stack: Router) -> None:
    """A provider that drops a Messages stream: the router ends it with Anthropic's error
    event, the SDK raises, and the cut counts against the backend."""
    before = stream_cuts(stack, "legacy")
    stack.cut_after("legacy", 4)
    with (
        stack.anthropic() as client,
        pytest.raises(anthropic.APIStatusError) as info,
        client.messages.stream(
            model=CLAUDE, max_tokens=64, messages=[{"role": "user", "content": PROMPT}]
        ) as stream,
    ):
        for _ in stream:
            pass
    assert "failed mid-stream" in str(info.value)
    wait_until(lambda: stream_cuts(stack, "legacy") == before + 1, 5, "stream_cut counted")


def test_a_claude_stream_cut_before_its_first_byte_falls_back(stack: Router) -> None:
    """The canary drops a Messages stream before any event: the baseline answers it whole,
    the SDK never notices, and only the baseline's tokens are counted."""
    before, cuts = legacy_status(stack)["tokens"], stream_cuts(stack, "relay")
    stack.cut_after("relay", 0)
    with (
        stack.anthropic(default_headers={"x-pin": "canary"}) as client,
        client.messages.with_streaming_response.create(
            model=CLAUDE,
            max_tokens=64,
            stream=True,
            messages=[{"role": "user", "content": PROMPT}],
        ) as raw,
    ):
        headers = raw.headers
        body = raw.read().decode()
    assert (headers["x-canary-backend"], headers["x-canary-fallback"]) == ("legacy", "relay")
    assert body.rstrip().endswith('data: {"type":"message_stop"}')
    wait_until(lambda: stream_cuts(stack, "relay") == cuts + 1, 5, "the canary's cut counted")
    wait_until(lambda: legacy_status(stack)["tokens"]["output"] == before["output"] + 8, 5)
    assert legacy_status(stack)["tokens"]["input"] == before["input"] + 5


def test_a_claude_code_style_call_keeps_its_query_and_beta_header(stack: Router) -> None:
    """Claude Code's shape (``?beta=true``, ``anthropic-beta``, x-api-key, a stream) is
    routed by path, reaches the provider as sent, and its tokens are counted."""
    before = legacy_status(stack)["tokens"]
    body = {
        "model": CLAUDE,
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": PROMPT}],
    }
    headers = {"x-api-key": CLIENT_KEY, "anthropic-beta": "claude-code-20250219"}
    r = httpx.post(f"{stack.url}/v1/messages?beta=true", json=body, headers=headers)
    assert (r.status_code, r.headers["x-canary-route"]) == (200, "claude")
    assert "event: message_stop" in r.text
    last = stack.sim("legacy", "/_sim/stats")["last_request"]
    assert (last["path"], last["query"]) == ("/v1/messages", "beta=true")
    assert last["headers"]["anthropic-beta"] == "claude-code-20250219"
    wait_until(lambda: legacy_status(stack)["tokens"]["output"] == before["output"] + 8, 5)


def test_a_wrong_key_raises_the_sdks_authentication_error(stack: Router) -> None:
    """The router's own 401 (OpenAI-shaped) is still an AuthenticationError to the SDK."""
    with (
        anthropic.Anthropic(base_url=stack.url, api_key="wrong", max_retries=0) as client,
        pytest.raises(anthropic.AuthenticationError),
    ):
        client.messages.create(model=CLAUDE, max_tokens=8, messages=[])


def test_count_tokens_goes_through_the_prefix_route(stack: Router) -> None:
    """/v1/messages/count_tokens matches the route whose paths are ["/v1/messages*"]; it is
    free, so it is neither billed tokens nor an answer whose usage went unread."""
    before = legacy_status(stack)
    with stack.anthropic() as client:
        raw = client.messages.with_raw_response.count_tokens(
            model=CLAUDE, messages=[{"role": "user", "content": PROMPT}]
        )
    assert raw.headers["x-canary-route"] == "claude"
    assert raw.parse().input_tokens == 5
    wait_until(lambda: legacy_status(stack)["total_requests"] > before["total_requests"], 5)
    after = legacy_status(stack)
    assert after["tokens"] == before["tokens"]
    assert after["unmetered_requests"] == before["unmetered_requests"]


def legacy_status(r: Router) -> dict[str, Any]:
    backend: dict[str, Any] = httpx.get(f"{r.url}/status").json()["backends"]["legacy"]
    return backend


# --- which credentials reach the provider -----------------------------------------------

CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key")


@pytest.mark.parametrize(
    ("client_header", "pin", "sent_as"),
    [
        pytest.param(("x-api-key", CLIENT_KEY), None, "x-api-key", id="x-api-key-as-sent"),
        pytest.param(("authorization", f"Bearer {CLIENT_KEY}"), None, "authorization", id="bearer"),
        pytest.param(("api-key", CLIENT_KEY), None, "authorization", id="azure-to-bearer"),
        pytest.param(("x-api-key", CLIENT_KEY), "relay", "x-api-key", id="header-set-x-api-key"),
        pytest.param(("authorization", f"Bearer {CLIENT_KEY}"), "relay", "x-api-key", id="header"),
    ],
)
def test_only_the_backend_key_reaches_the_provider(
    stack: Router, client_header: tuple[str, str], pin: str | None, sent_as: str
) -> None:
    """The client's key never leaves the router; the backend's key goes out once, in its
    ``api_key_header`` or else in the scheme the client used."""
    backend = pin or "legacy"
    headers = dict([client_header, ("content-type", "application/json")])
    if pin:
        headers["x-pin"] = pin
    body = {"model": CLAUDE, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(f"{stack.url}/v1/messages", json=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["x-canary-backend"] == backend
    seen = stack.last_headers(backend)
    key = LEGACY_KEY if backend == "legacy" else RELAY_KEY
    expected = f"Bearer {fingerprint(key)}" if sent_as == "authorization" else fingerprint(key)
    assert {h: seen[h] for h in CREDENTIAL_HEADERS if h in seen} == {sent_as: expected}
    assert fingerprint(CLIENT_KEY) not in str(seen)


def test_a_wrong_client_key_is_refused_before_any_provider(stack: Router) -> None:
    """A bad x-api-key gets the router's 401; no provider sees the call."""
    before = stack.sim("legacy", "/_sim/stats")["requests"]
    r = httpx.post(
        f"{stack.url}/v1/messages",
        json={"model": CLAUDE, "max_tokens": 8, "messages": []},
        headers={"x-api-key": "wrong"},
    )
    assert r.status_code == 401
    assert stack.sim("legacy", "/_sim/stats")["requests"] == before


def test_a_provider_refusal_reaches_the_sdk_in_anthropic_shape(stack: Router) -> None:
    """The provider's own 4xx passes through unchanged: the SDK raises with its message."""
    with stack.anthropic() as client, pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(
            model=CLAUDE,
            max_tokens=64,
            messages=[{"role": "user", "content": PROMPT}],
            extra_body={"max_tokens": 0},
        )
    assert info.value.status_code == 400
    assert info.value.body == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "'max_tokens' must be a positive integer",
        },
    }


# --- the openai SDK, Responses API ------------------------------------------------------


def test_openai_sdk_gets_a_response(stack: Router) -> None:
    """responses.create through the router: the text and the usage the provider sent."""
    with stack.openai() as client:
        response = client.responses.create(model="gpt-4.1", input=PROMPT)
    assert response.output_text == "Hello from legacy! This is a simulated reply."
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (5, 8)


def test_openai_sdk_streams_a_response(stack: Router) -> None:
    """A streamed response arrives whole and ends in response.completed with its usage."""
    with stack.openai() as client:
        events = list(client.responses.create(model="gpt-4.1", input=PROMPT, stream=True))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "Hello from legacy! This is a simulated reply."
    assert events[-1].type == "response.completed"
    usage = events[-1].response.usage
    assert usage is not None and (usage.input_tokens, usage.output_tokens) == (5, 8)


def test_openai_sdk_raises_on_a_cut_response_stream(stack: Router) -> None:
    """A Responses stream the provider drops ends in an error event; the SDK raises."""
    before = stream_cuts(stack, "legacy")
    stack.cut_after("legacy", 4)
    with stack.openai() as client, pytest.raises(openai.APIError) as info:
        for _ in client.responses.create(model="gpt-4.1", input=PROMPT, stream=True):
            pass
    assert "failed mid-stream" in str(info.value)
    wait_until(lambda: stream_cuts(stack, "legacy") == before + 1, 5, "stream_cut counted")


# --- token counts against the provider's ------------------------------------------------

CALLS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    # dialect: path, body, what makes it a stream with usage
    "chat": (
        "/v1/chat/completions",
        {"model": "gpt-4.1", "messages": [{"role": "user", "content": PROMPT}]},
        {"stream": True, "stream_options": {"include_usage": True}},
    ),
    "responses": ("/v1/responses", {"model": "gpt-4.1", "input": PROMPT}, {"stream": True}),
    "anthropic": (
        "/v1/messages",
        {"model": CLAUDE, "max_tokens": 64, "messages": [{"role": "user", "content": PROMPT}]},
        {"stream": True},
    ),
}
TABLE: dict[tuple[str, str], tuple[tuple[int, int], tuple[int, int]]] = {}


@pytest.fixture(scope="module")
def token_table() -> Iterator[dict[tuple[str, str], tuple[tuple[int, int], tuple[int, int]]]]:
    """Collects each dialect's counts; printed at the end of the module (``pytest -s``)."""
    yield TABLE
    if TABLE:
        print("\n\ndialect    mode        canary in/out   provider in/out")
        for (dialect, mode), (seen, billed) in sorted(TABLE.items(), key=_in_order):
            ours, theirs = f"{seen[0]}/{seen[1]}", f"{billed[0]}/{billed[1]}"
            print(f"{dialect:<10} {mode:<11} {ours:<15} {theirs}")


MODES = ("plain", "stream", "cut")


def _in_order(item: tuple[tuple[str, str], Any]) -> tuple[int, int]:
    (dialect, mode), _ = item
    return list(CALLS).index(dialect), MODES.index(mode)


def tokens(r: Router) -> tuple[tuple[int, int], tuple[int, int]]:
    """(canary's tokens for legacy on /status, the legacy provider's billed tokens); the
    same tokens on /metrics as on /status."""
    ours = httpx.get(f"{r.url}/status").json()["backends"]["legacy"]["tokens"]
    metrics = r.metrics()
    for direction in ("input", "output"):
        assert ours[direction] == sum(
            v
            for (name, labels), v in metrics.items()
            if name == "canary_tokens_total"
            and ("backend", "legacy") in labels
            and ("direction", direction) in labels
        )
    theirs = r.sim("legacy", "/_sim/stats")["tokens"]
    return (ours["input"], ours["output"]), (theirs["prompt"], theirs["completion"])


def requests_done(r: Router) -> float:
    return sum(
        v
        for (name, labels), v in r.metrics().items()
        if name == "canary_requests_total" and ("backend", "legacy") in labels
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dialect", list(CALLS))
def test_tokens_match_the_provider(
    stack: Router, token_table: dict[Any, Any], dialect: str, mode: str
) -> None:
    """What canary counts for a call equals what the provider billed, in every dialect,
    streamed or not; a cut stream bills nothing and counts nothing."""
    path, body, streamed = CALLS[dialect]
    if mode != "plain":
        body = {**body, **streamed}
    if mode == "cut":
        stack.cut_after("legacy", 3)
    (in0, out0), (pin0, pout0) = tokens(stack)
    done = requests_done(stack)
    r = httpx.post(f"{stack.url}{path}", json=body, headers={"x-api-key": CLIENT_KEY})
    assert r.status_code == 200, r.text
    assert r.headers["x-canary-backend"] == "legacy"
    assert ("failed mid-stream" in r.text) == (mode == "cut")
    wait_until(lambda: requests_done(stack) > done, 5, "the call accounted")
    (in1, out1), (pin1, pout1) = tokens(stack)
    seen, billed = (in1 - in0, out1 - out0), (pin1 - pin0, pout1 - pout0)
    token_table[(dialect, mode)] = (seen, billed)
    assert seen == billed
    assert billed == ((0, 0) if mode == "cut" else (5, 8))


# --- Claude models wherever GPT models go: model_map, pricing, cost --------------------


def test_claude_is_mapped_metered_and_priced_on_both_backends(stack: Router) -> None:
    """A Claude call on each backend (relay maps the model): tokens per client model, at
    the routes.yaml price, nothing unpriced, and the answer's model as asked."""
    body = {"model": CLAUDE, "max_tokens": 64, "messages": [{"role": "user", "content": PROMPT}]}

    def claude_rows() -> dict[str, Any]:
        doc = httpx.get(f"{stack.url}/status").json()
        return {row["backend"]: row for row in doc["cost"]["by_model"] if row["model"] == CLAUDE}

    before = claude_rows()
    for pin in ("legacy", "relay"):
        headers = {"x-api-key": CLIENT_KEY, "x-pin": pin}
        r = httpx.post(f"{stack.url}/v1/messages", json=body, headers=headers)
        assert (r.status_code, r.headers["x-canary-backend"]) == (200, pin)
    assert r.json()["model"] == "claude-sonnet-4-20250514"
    assert stack.sim("relay", "/_sim/stats")["last_request"]["body"]["model"] == r.json()["model"]
    wait_until(
        lambda: all(
            claude_rows().get(b, {}).get("requests", 0) > before.get(b, {}).get("requests", 0)
            for b in ("legacy", "relay")
        ),
        5,
        "both Claude calls metered",
    )
    for backend, row in claude_rows().items():
        assert row["price"] == {"input": 3.0, "output": 15.0}
        assert row["unpriced_tokens"] == {"input": 0, "output": 0}
        usd = (row["input_tokens"] * 3.0 + row["output_tokens"] * 15.0) / 1e6
        assert row["cost_usd"] == pytest.approx(usd), backend
    doc = httpx.get(f"{stack.url}/status").json()
    assert f"relay/{CLAUDE}" not in doc["cost"]["unpriced"]


def test_an_older_anthropic_sdk_sending_x_api_key_is_served(stack: Router) -> None:
    """SDKs that send the key as x-api-key (no Authorization) are accepted, and the key
    goes on as x-api-key to a backend without api_key_header."""
    with anthropic.Anthropic(
        base_url=stack.url, api_key=None, default_headers={"x-api-key": CLIENT_KEY}, max_retries=0
    ) as client:
        message = client.messages.create(
            model=CLAUDE, max_tokens=64, messages=[{"role": "user", "content": PROMPT}]
        )
    assert message.usage.output_tokens == 8
    seen = stack.last_headers("legacy")
    assert {h: seen[h] for h in CREDENTIAL_HEADERS if h in seen} == {
        "x-api-key": fingerprint(LEGACY_KEY)
    }


def test_no_key_shows_in_the_router_log_or_status(stack: Router) -> None:
    """After x-api-key traffic in every dialect, no key is in the router's output or /status."""
    r = httpx.post(
        f"{stack.url}/v1/messages",
        json={"model": CLAUDE, "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]},
        headers={"x-api-key": CLIENT_KEY},
    )
    assert r.status_code == 200
    stack.log.flush()
    stack.log.seek(0)
    everything = stack.log.read().decode(errors="replace") + httpx.get(f"{stack.url}/status").text
    for secret in (CLIENT_KEY, LEGACY_KEY, RELAY_KEY):
        assert secret not in everything
