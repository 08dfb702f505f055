"""Flow tests: shadow copies of a route's calls, compared with the client's answer (SPEC §9)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import orjson
from hypothesis import given
from hypothesis import strategies as st

from canary.proxy.facts import answer_facts
from tests.helpers import Chunks, Upstream, prometheus_samples, serving

ROUTES = """
backends:
  legacy: {base_url: "http://legacy.test/v1", api_key: sk-legacy-secret-000111}
  relay:
    base_url: "http://relay.test/v1"
    api_key: sk-relay-secret-222333
    model_map: {gpt-4.1: gpt-4.1-relay}
routes:
  - name: chat
    match: {paths: [/v1/chat/completions, /v1/responses]}
    weights: {legacy: 100, relay: 0}
    baseline: legacy
    shadow: {backend: relay, sample: 1.0, max_concurrency: %(cap)d, max_usd_per_day: 5}
retry: {max_attempts: 3}
readiness: {min_requests: 10}
pricing:
  relay: {gpt-4.1: {input: 1000.0, output: 1000.0}}
"""


def answer(request: httpx.Request, prompt: int = 5, model: str | None = None) -> httpx.Response:
    """A chat answer in the shape the request asked for (plain or streamed)."""
    asked = orjson.loads(request.content)["model"]
    name = model or asked
    usage = {"prompt_tokens": prompt, "completion_tokens": 2}
    if b'"stream":true' not in request.content:
        body = {
            "model": name,
            "choices": [{"message": {"content": "hi there"}, "finish_reason": "stop"}],
            "usage": usage,
        }
        return httpx.Response(200, json=body)
    chunks = [
        b"data: "
        + orjson.dumps({"model": name, "choices": [{"delta": {"content": "hi"}}]})
        + b"\n\n",
        b"data: "
        + orjson.dumps(
            {"model": name, "choices": [{"delta": {"content": " there"}, "finish_reason": "stop"}]}
        )
        + b"\n\n",
        b"data: " + orjson.dumps({"model": name, "choices": [], "usage": usage}) + b"\n\n",
        b"data: [DONE]\n\n",
    ]
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Chunks(chunks))


async def settle(c: httpx.AsyncClient, calls: int) -> dict[str, Any]:
    """/status once every shadow copy has ended (they run after the client's answer)."""
    for _ in range(200):
        doc = (await c.get("/status")).json()
        if doc["shadow"]["chat"]["calls"] >= calls:
            return doc
        await asyncio.sleep(0.01)
    return doc


async def test_copies_reach_the_shadow_backend_mapped_and_keyed_and_are_compared(
    tmp_path: Path,
) -> None:
    """Plain and streamed calls, and /v1/responses, are copied with the shadow backend's
    model_map and key and a request id of their own; pairs are compared and shown."""
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES % {"cap": 8})
    upstream = Upstream()
    upstream.handler = answer
    async with serving(str(path), transport=httpx.MockTransport(upstream), watch=False) as c:
        for stream in (False, True):
            body = {"model": "gpt-4.1", "messages": [], "stream": stream, "temperature": 0}
            r = await c.post("/v1/chat/completions", json=body)
            assert r.status_code == 200 and r.headers["x-canary-backend"] == "legacy"
        r = await c.post("/v1/responses", json={"model": "gpt-4.1", "input": "x"})
        doc = await settle(c, 3)
        metrics = prometheus_samples((await c.get("/metrics")).text)
    calls = ("canary_shadow_calls_total", (("backend", "relay"), ("route", "chat")))
    assert metrics[calls] == 3
    assert metrics[("canary_shadow_compare", (("figure", "exact_match"), ("route", "chat")))] == 1
    relay = [q for q in upstream.requests if q.url.host == "relay.test"]
    legacy = [q for q in upstream.requests if q.url.host == "legacy.test"]
    assert len(relay) == 3 and len(legacy) == 3
    assert [orjson.loads(q.content)["model"] for q in relay] == ["gpt-4.1-relay"] * 3
    assert {q.headers["authorization"] for q in relay} == {"Bearer sk-relay-secret-222333"}
    assert relay[-1].url.path == "/v1/responses"
    assert all(q.headers.get("x-request-id", "shadow").startswith("shadow") for q in relay)
    shadow = doc["shadow"]["chat"]
    assert shadow["calls"] == 3 and shadow["errors"] == 0 and shadow["pairs"] == 3
    compare = shadow["compare"]
    assert compare["status_agreement"] == 1.0
    assert compare["prompt_tokens_match"] == 1.0
    assert compare["exact_match"] == 1.0  # temperature 0 on both chat calls
    assert compare["model_mismatch"] == 0
    assert shadow["tokens"] == {"input": 15, "output": 6}
    # shadow calls stay out of the relay's window: it carried no live call
    assert doc["backends"]["relay"]["total_requests"] == 0
    assert doc["audit"]["relay"]["gpt-4.1-relay"]["match"] == 3


async def test_a_failing_or_slow_shadow_never_touches_the_client(tmp_path: Path) -> None:
    """A shadow that hangs or fails: the client's answer comes as fast, copies over the
    cap are skipped and counted, no retry or fallback is made for a copy."""
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES % {"cap": 2})
    upstream = Upstream()
    release = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "relay.test":
            await release.wait()
            return httpx.Response(503, json={"error": {"message": "down"}})
        return answer(request)

    upstream.handler = handler
    async with serving(str(path), transport=httpx.MockTransport(upstream), watch=False) as c:
        for _ in range(5):
            r = await asyncio.wait_for(
                c.post("/v1/chat/completions", json={"model": "gpt-4.1", "messages": []}), 2
            )
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
        held = (await c.get("/status")).json()["shadow"]["chat"]
        release.set()
        doc = await settle(c, 2)
    assert held["skipped"]["concurrency"] == 3
    shadow = doc["shadow"]["chat"]
    assert shadow["errors"] == 2 and shadow["compare"]["status_agreement"] == 0.0
    relay = [q for q in upstream.requests if q.url.host == "relay.test"]
    assert len(relay) == 2  # no retry of a copy, though 503 is retryable for live calls
    assert doc["backends"]["relay"]["total_errors"] == 0  # never in the rollback window


async def verdict_with(tmp_path: Path, relay_prompt: int) -> dict[str, Any]:
    """The migration verdict after 80 calls split 50/50, every legacy call shadowed."""
    routes = ROUTES % {"cap": 100}
    routes = routes.replace("{legacy: 100, relay: 0}", "{legacy: 50, relay: 50}")
    routes = routes.replace("baseline: legacy", "baseline: legacy\n    sticky: header:x-user-id")
    path = tmp_path / "routes.yaml"
    path.write_text(routes)
    upstream = Upstream()
    upstream.handler = lambda q: answer(q, relay_prompt if q.url.host == "relay.test" else 5)
    async with serving(str(path), transport=httpx.MockTransport(upstream), watch=False) as c:
        for i in range(80):
            body = {"model": "gpt-4.1", "messages": []}
            r = await c.post("/v1/chat/completions", json=body, headers={"x-user-id": f"u{i}"})
            assert r.status_code == 200
        doc = await settle(c, 25)
    assert doc["shadow"]["chat"]["pairs"] >= 20
    return doc


async def test_token_inflation_blocks_the_verdict_an_honest_relay_is_ready(
    tmp_path: Path,
) -> None:
    """A relay that bills 3x the prompt tokens on the same prompt is not ready, in words;
    the same relay billing honestly is."""
    inflated = await verdict_with(tmp_path, relay_prompt=15)
    assert inflated["migration"]["ready_for_full_migration"] is False
    reason = inflated["migration"]["reason"]
    assert reason.startswith("relay: prompt tokens differ from legacy's on 100% of")
    assert inflated["shadow"]["chat"]["compare"]["prompt_tokens_ratio_p50"] == 3.0
    honest = await verdict_with(tmp_path, relay_prompt=5)
    assert honest["migration"]["ready_for_full_migration"] is True, honest["migration"]


@given(st.binary(max_size=2048) | st.builds(lambda t: b"data: " + t.encode() + b"\n\n", st.text()))
def test_answer_facts_never_raise_on_any_answer(raw: bytes) -> None:
    """Any bytes a backend may send give facts (maybe empty), never an exception."""
    facts = answer_facts(raw, status=200, ok=True, latency_s=1.0, ttfb_s=None, tokens=None)
    assert facts.ok and isinstance(facts.text, str)


def test_answer_facts_read_every_dialect() -> None:
    """Chat, Responses and Anthropic answers give text, finish reason, model and usage."""
    anthropic = b"".join(
        b"data: " + orjson.dumps(e) + b"\n\n"
        for e in (
            {
                "type": "message_start",
                "message": {"model": "claude-x", "usage": {"input_tokens": 7}},
            },
            {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "hi"}},
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": 3},
            },
        )
    )
    facts = answer_facts(anthropic, status=200, ok=True, latency_s=1, ttfb_s=None, tokens=None)
    assert (facts.model, facts.text, facts.finish_reason) == ("claude-x", "hi", "end_turn")
    assert (facts.prompt_tokens, facts.completion_tokens) == (7, 3)
    response = {
        "object": "response",
        "model": "gpt-4o",
        "status": "completed",
        "output": [{"type": "message", "content": [{"type": "output_text", "text": "ok"}]}],
        "usage": {"input_tokens": 4, "output_tokens": 1},
    }
    facts = answer_facts(
        orjson.dumps(response), status=200, ok=True, latency_s=1, ttfb_s=None, tokens=None
    )
    assert (facts.model, facts.text, facts.prompt_tokens) == ("gpt-4o", "ok", 4)


async def test_copies_in_flight_are_cancelled_at_shutdown(tmp_path: Path) -> None:
    """A shadow backend that never answers does not hold shutdown open or leak a task."""
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES % {"cap": 8})
    upstream = Upstream()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "relay.test":
            await asyncio.Event().wait()  # never
        return answer(request)

    upstream.handler = handler
    async with serving(str(path), transport=httpx.MockTransport(upstream), watch=False) as c:
        r = await c.post("/v1/chat/completions", json={"model": "gpt-4.1", "messages": []})
        assert r.status_code == 200
    assert not [t for t in asyncio.all_tasks() if "_copy" in repr(t)]


async def test_the_primary_is_untouched_large_bodies_are_copied_and_the_budget_holds(
    tmp_path: Path,
) -> None:
    """The client's call goes out as sent (no shadow id, no rewrite); a 1 MiB body is copied
    whole; once a day's shadow spend reaches max_usd_per_day, copies stop and are counted."""
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES.replace("max_usd_per_day: 5", "max_usd_per_day: 0.001") % {"cap": 8})
    upstream = Upstream()
    upstream.handler = answer
    big = "x" * (1 << 20)
    async with serving(str(path), transport=httpx.MockTransport(upstream), watch=False) as c:
        body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": big}]}
        r = await c.post("/v1/chat/completions", json=body, headers={"x-request-id": "client-1"})
        assert r.status_code == 200
        await settle(c, 1)
        for _ in range(3):
            await c.post("/v1/chat/completions", json={"model": "gpt-4.1", "messages": []})
        doc = (await c.get("/status")).json()
    legacy = [q for q in upstream.requests if q.url.host == "legacy.test"]
    relay = [q for q in upstream.requests if q.url.host == "relay.test"]
    assert orjson.loads(legacy[0].content) == body  # as the client sent it
    assert legacy[0].headers["x-request-id"] == "client-1"
    assert len(relay) == 1 and len(relay[0].content) > 1 << 20  # copied whole
    assert relay[0].headers["x-request-id"].startswith("shadow-")  # not the client's id
    shadow = doc["shadow"]["chat"]
    assert shadow["cost_usd"] > 0.001  # 5 + 2 tokens at $1000 per million
    assert shadow["skipped"]["budget"] == 3
