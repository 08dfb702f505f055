"""A progressive rollout in process: weights follow the steps, steering needs the admin token."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import Upstream, no_sleep, prometheus_samples, serving

ROUTES = """
backends:
  legacy: {base_url: "http://legacy.test/v1"}
  relay: {base_url: "http://relay.test/v1"}
routes:
  - name: chat
    weights: {legacy: 100, relay: 0}
auth: {admin_token: "s3cret-admin"}
rollout:
  backend: relay
  steps: [50, 100]
  step_s: 0.2
  step_min_requests: 5
  gates: GATES
"""
ADMIN = {"authorization": "Bearer s3cret-admin"}


def config(tmp_path: Path, gates: str = "[]") -> str:
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES.replace("GATES", gates))
    return str(path)


async def drive(c: httpx.AsyncClient, until: str, seconds: float = 15.0) -> dict[str, Any]:
    """Send calls until the rollout reaches ``until`` (bounded)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(5):
            r = await c.post("/v1/chat/completions", json={"model": "m", "messages": []})
            assert r.status_code == 200
        doc = (await c.get("/status")).json()
        if doc["rollout"]["state"] == until:
            return dict(doc)
        await asyncio.sleep(0.05)
    raise AssertionError(f"rollout never reached {until}: {doc['rollout']}")


async def test_a_healthy_canary_is_promoted_and_status_shows_the_weights_line(
    tmp_path: Path,
) -> None:
    """Each step is applied and analysed; effective weights follow, configured stay the file's."""
    upstream = Upstream()
    transport = httpx.MockTransport(upstream)
    async with serving(
        config(tmp_path), transport=transport, watch=False, rollout_tick_s=0.05
    ) as c:
        doc = await drive(c, "promoted")
        route = doc["routes"][0]
        assert route["configured"] == {"legacy": 100, "relay": 0}
        assert route["effective"] == {"legacy": 0, "relay": 100}
        rollout = doc["rollout"]
        assert rollout["percent"] == 100 and rollout["step"] == 2
        assert rollout["weights_line"] == {"chat": "weights: {legacy: 0, relay: 100}"}
        assert [h["to"] for h in rollout["history"]] == ["promoted", "progressing"]
        assert any(e["origin"] == "rollout" for e in doc["events"])
        samples = prometheus_samples((await c.get("/metrics")).text)
        assert samples[("canary_rollout_step_percent", (("backend", "relay"),))] == 100
        state = ("canary_rollout_state", (("backend", "relay"), ("state", "promoted")))
        assert samples[state] == 1
    hosts = [r.url.host for r in upstream.requests[-5:]]
    assert hosts == ["relay.test"] * 5


async def test_a_failing_canary_fails_the_rollout_and_goes_to_zero(tmp_path: Path) -> None:
    upstream = Upstream()

    def half_broken(request: httpx.Request) -> httpx.Response:
        if request.url.host == "relay.test":
            return httpx.Response(400, json={"error": {"message": "no"}})
        return Upstream.ok(request)

    upstream.handler = half_broken
    path = config(tmp_path)
    Path(path).write_text(
        Path(path).read_text().replace("relay: 0}", "relay: 0}\n    fallback: true")
    )
    async with serving(
        path, transport=httpx.MockTransport(upstream), watch=False, rollout_tick_s=0.05
    ) as c:
        doc = await drive(c, "failed")
        assert doc["routes"][0]["effective"] == {"legacy": 100, "relay": 0}
        assert "error rate" in doc["rollout"]["history"][0]["reason"]


async def test_a_gate_waits_for_promote_which_needs_the_admin_token(tmp_path: Path) -> None:
    transport = httpx.MockTransport(Upstream())
    async with serving(
        config(tmp_path, "[100]"), transport=transport, watch=False, rollout_tick_s=0.05
    ) as c:
        doc = await drive(c, "awaiting_promotion")
        assert doc["rollout"]["needs"] == "canary rollout promote (next step: 100%)"
        assert (await c.post("/admin/rollout/promote")).status_code == 401
        assert (await c.post("/admin/rollout/resume", headers=ADMIN)).status_code == 409
        assert (await c.post("/admin/rollout/jump", headers=ADMIN)).status_code == 404
        r = await c.post("/admin/rollout/promote", headers=ADMIN)
        assert r.status_code == 200 and r.json()["percent"] == 100
        await drive(c, "promoted")
        r = await c.post("/admin/rollout/abort", headers=ADMIN)
        assert r.json()["state"] == "aborted"
        doc = (await c.get("/status")).json()
        assert doc["routes"][0]["effective"] == {"legacy": 100, "relay": 0}
        assert "s3cret" not in str(doc)


async def test_every_transition_is_posted_to_the_webhooks_with_retries(tmp_path: Path) -> None:
    """A failing hook is tried three times; the body has the contract's keys and a Slack text."""
    upstream = Upstream()
    hooks: list[dict[str, Any]] = []
    answers = iter([500, 200, 200, 200, 200])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "hook.test":
            hooks.append(json.loads(request.content))
            return httpx.Response(next(answers, 200))
        return Upstream.ok(request)

    upstream.handler = handler
    path = Path(config(tmp_path, "[100]"))
    path.write_text(path.read_text() + "  webhooks: [http://hook.test/h?token=x]\n")
    async with serving(
        str(path),
        transport=httpx.MockTransport(upstream),
        watch=False,
        rollout_tick_s=0.05,
        sleep=no_sleep,
    ) as c:
        await drive(c, "awaiting_promotion")
        await c.post("/admin/rollout/abort", headers=ADMIN)
        deadline = time.monotonic() + 5
        while len(hooks) < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    # progressing->awaiting twice (a 500, then the retry), then ->aborted
    assert [(h["from"], h["to"]) for h in hooks][-2:] == [
        ("progressing", "awaiting_promotion"),
        ("awaiting_promotion", "aborted"),
    ]
    assert hooks[0] == hooks[1]
    assert set(hooks[0]) == {"rollout", "from", "to", "step", "percent", "reason", "at", "text"}
    assert hooks[-1]["text"].startswith("canary rollout of relay: awaiting_promotion -> aborted")


async def test_a_relay_answering_as_another_model_fails_the_model_check(tmp_path: Path) -> None:
    """The model audit feeds the step's mismatch rate: a substituted model fails the rollout."""
    upstream = Upstream()

    def handler(request: httpx.Request) -> httpx.Response:
        model = "gpt-4o-mini" if request.url.host == "relay.test" else "m"
        return httpx.Response(200, json={"model": model, "choices": []})

    upstream.handler = handler
    path = Path(config(tmp_path))
    path.write_text(path.read_text() + "  analysis: {max_model_mismatch_rate: 0.0}\n")
    transport = httpx.MockTransport(upstream)
    async with serving(str(path), transport=transport, watch=False, rollout_tick_s=0.05) as c:
        doc = await drive(c, "failed")
    assert "model mismatch rate 1.000 > 0" in doc["rollout"]["history"][0]["reason"]


async def test_a_relay_slow_to_its_first_byte_fails_on_the_ttfb_ratio(tmp_path: Path) -> None:
    """Streams' time to first byte is measured per backend over the step: a relay that
    starts its streams 80 ms late fails a 1.5x bar, with the check named."""
    upstream = Upstream()

    async def streams(request: httpx.Request) -> httpx.Response:
        if request.url.host == "relay.test":
            await asyncio.sleep(0.08)
        body = b'data: {"choices": []}\n\ndata: [DONE]\n\n'
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, stream=httpx.ByteStream(body)
        )

    upstream.handler = streams
    path = config(tmp_path)
    Path(path).write_text(Path(path).read_text() + "  analysis: {max_ttfb_ratio_p95: 1.5}\n")
    async with serving(
        path, transport=httpx.MockTransport(upstream), watch=False, rollout_tick_s=0.05
    ) as c:
        deadline = time.monotonic() + 15
        doc: dict[str, Any] = {}
        while time.monotonic() < deadline:
            for _ in range(5):
                r = await c.post("/v1/chat/completions", json={"model": "m", "stream": True})
                assert r.status_code == 200
            doc = (await c.get("/status")).json()
            if doc["rollout"]["state"] == "failed":
                break
        assert doc["rollout"]["state"] == "failed", doc["rollout"]
        assert "ttfb" in doc["rollout"]["history"][0]["reason"]
        assert doc["routes"][0]["effective"] == {"legacy": 100, "relay": 0}


async def test_shadow_pairs_with_other_prompt_tokens_fail_the_step(tmp_path: Path) -> None:
    """With the route copying to the rollout's backend, the step's shadow comparison is an
    analysis input: a relay counting prompts differently fails the rollout."""
    upstream = Upstream()

    def answer(request: httpx.Request) -> httpx.Response:
        prompt = 30 if request.url.host == "relay.test" else 10  # the relay inflates prompts
        usage = {"prompt_tokens": prompt, "completion_tokens": 5, "total_tokens": prompt + 5}
        body = {"id": "x", "model": "m", "choices": [], "usage": usage}
        return httpx.Response(200, json=body)

    upstream.handler = answer
    path = config(tmp_path)
    text = (
        Path(path)
        .read_text()
        .replace("relay: 0}", "relay: 0}\n    shadow: {backend: relay, sample: 1.0}")
    )
    Path(path).write_text(text + "  analysis: {max_shadow_prompt_mismatch: 0.05}\n")
    async with serving(
        path, transport=httpx.MockTransport(upstream), watch=False, rollout_tick_s=0.05
    ) as c:
        doc = await drive(c, "failed")
    reason = doc["rollout"]["history"][0]["reason"]
    assert "shadow prompt mismatch" in reason, reason
    assert doc["routes"][0]["effective"] == {"legacy": 100, "relay": 0}
