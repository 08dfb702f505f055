"""Flow tests: the model audit of every answer, on /status, /metrics and in the verdict."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
import pytest
from structlog.testing import capture_logs

from canary.config.model import Readiness
from canary.observe.equivalence import Evidence, equivalence_reason
from canary.observe.meter import Meter
from canary.safety.windows import Stats
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
    match: {paths: [/v1/chat/completions, /v1/messages, /v1/responses]}
    weights: {legacy: 50, relay: 50}
    baseline: legacy
    sticky: header:x-user-id
retry: {max_attempts: 1}
readiness: {min_requests: 10}
"""


def relay_answers_as(name: str) -> Upstream:
    """An upstream whose relay names ``name`` in every answer, plain or streamed."""
    upstream = Upstream()

    def handler(request: httpx.Request) -> httpx.Response:
        asked = orjson.loads(request.content)["model"]
        model = name if request.url.host == "relay.test" else asked
        if b'"stream":true' not in request.content:
            body = {"id": "x", "model": model, "choices": [], "usage": {"prompt_tokens": 3}}
            return httpx.Response(200, json=body)
        first = {"id": "x", "model": model, "choices": [{"delta": {"content": "a"}}]}
        chunks = [
            b": keep-alive\n\n",
            b"data: " + orjson.dumps(first) + b"\n\n",
            b"data: [DONE]\n\n",
        ]
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, stream=Chunks(chunks)
        )

    upstream.handler = handler
    return upstream


async def calls(c: httpx.AsyncClient, n: int) -> None:
    for i in range(n):
        body = {"model": "gpt-4.1", "messages": [], "stream": i % 2 == 1}
        r = await c.post("/v1/chat/completions", json=body, headers={"x-user-id": f"u{i}"})
        assert r.status_code == 200


async def test_a_relay_answering_as_another_model_is_audited_and_not_ready(
    tmp_path: Path,
) -> None:
    """Every answer's model is read (plain and streamed, past a comment); a substitution is
    counted per backend and asked model, logged once, an event, and blocks the verdict."""
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES)
    app = {"transport": httpx.MockTransport(relay_answers_as("gpt-4o-mini")), "watch": False}
    with capture_logs() as logs:
        async with serving(str(path), **app) as c:
            await calls(c, 40)
            doc = (await c.get("/status")).json()
            metrics = prometheus_samples((await c.get("/metrics")).text)
    relay = doc["audit"]["relay"]["gpt-4.1-relay"]  # what the relay was asked for
    legacy = doc["audit"]["legacy"]["gpt-4.1"]
    assert relay["mismatch"] > 0 and relay["match"] == 0
    assert relay["last_mismatch"] == "gpt-4o-mini"
    assert legacy["match"] > 0 and legacy["mismatch"] == 0
    total = relay["mismatch"]
    assert doc["migration"]["ready_for_full_migration"] is False
    assert doc["migration"]["reason"] == (
        f"relay: answers as gpt-4o-mini when asked for gpt-4.1-relay ({total} of {total})"
    )
    events = [e for e in doc["events"] if e["to"] == "mismatch"]
    assert [e["reason"] for e in events] == ["answered as gpt-4o-mini when asked for gpt-4.1-relay"]
    warned = [e for e in logs if e["event"] == "audit.model_mismatch"]
    assert len(warned) == 1 and warned[0]["answered_as"] == "gpt-4o-mini"
    key = (
        "canary_model_audit_total",
        (("backend", "relay"), ("model", "gpt-4.1-relay"), ("verdict", "mismatch")),
    )
    assert metrics[key] == total


async def test_an_honest_relay_with_dated_names_becomes_ready(tmp_path: Path) -> None:
    """A dated name is a variant, not a mismatch: the honest relay is ready."""
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES)
    upstream = relay_answers_as("gpt-4.1-relay-2025-04-14")
    app = {"transport": httpx.MockTransport(upstream), "watch": False}
    async with serving(str(path), **app) as c:
        await calls(c, 40)
        doc = (await c.get("/status")).json()
    assert doc["audit"]["relay"]["gpt-4.1-relay"]["variant"] > 0
    assert doc["audit"]["relay"]["gpt-4.1-relay"]["mismatch"] == 0
    assert doc["migration"] == {**doc["migration"], "ready_for_full_migration": True}


async def test_a_relay_changed_in_routes_yaml_is_judged_afresh(tmp_path: Path) -> None:
    """Mismatches before the relay's config changed (its circuit re-armed) no longer hold
    the verdict; a new one does."""
    path = tmp_path / "routes.yaml"
    admin = "\nauth: {admin_token: adm-equivalence-test}\n"
    path.write_text(ROUTES + admin)
    upstream = relay_answers_as("gpt-4o-mini")
    app = {"transport": httpx.MockTransport(upstream), "watch": False}
    auth = {"authorization": "Bearer adm-equivalence-test"}
    async with serving(str(path), **app) as c:
        await calls(c, 20)
        before = (await c.get("/status")).json()["migration"]["reason"]
        relay_key = "    api_key: sk-relay-secret-222333\n"
        path.write_text(ROUTES.replace(relay_key, relay_key + "    timeout_s: 30\n") + admin)
        assert (await c.post("/admin/reload", headers=auth)).json()["changed"] is True
        upstream.handler = relay_answers_as("gpt-4.1-relay").handler
        await calls(c, 40)
        fixed = (await c.get("/status")).json()["migration"]
        upstream.handler = relay_answers_as("gpt-4o-mini").handler
        await calls(c, 4)
        again = (await c.get("/status")).json()["migration"]["reason"]
    assert "answers as gpt-4o-mini" in before
    assert fixed["ready_for_full_migration"] is True, fixed
    assert "answers as gpt-4o-mini" in again


class Figures(Evidence):
    """Evidence with set figures: (calls, p95 ms) per backend, no audit, no pairs."""

    def __init__(self, p95s: dict[str, tuple[int, float]], pairs: tuple[int, float] | None = None):
        super().__init__(Meter(lambda: 0.0), Stats(60.0, lambda: 0.0))
        self.p95s = p95s
        self.prompt_match = (lambda _: pairs) if pairs is not None else None

    def p95(self, backend: str) -> tuple[int, float]:
        return self.p95s[backend]


@pytest.mark.parametrize(
    ("relay", "legacy", "reason"),
    [
        ((100, 300.0), (100, 100.0), "relay: p95 latency 300 ms is 3.0x legacy's 100 ms (> 2x)"),
        ((99, 300.0), (100, 100.0), None),  # too few calls to judge a p95
        ((100, 3.0), (100, 1.0), None),  # 3x, but 2 ms: scheduling, not a provider
        ((100, 190.0), (100, 100.0), None),
    ],
)
def test_latency_is_judged_with_enough_calls_and_a_floor(
    relay: tuple[int, float], legacy: tuple[int, float], reason: str | None
) -> None:
    """The p95 ratio needs 100 calls on both sides and 50 ms of difference to block."""
    ev = Figures({"relay": relay, "legacy": legacy})
    assert equivalence_reason("relay", "legacy", Readiness(), ev) == reason


def test_prompt_token_agreement_waits_for_twenty_pairs() -> None:
    """Under 20 pairs no verdict; from 20, a share under the bar blocks, in words."""
    quiet = {"relay": (0, 0.0), "legacy": (0, 0.0)}
    assert equivalence_reason("relay", "legacy", Readiness(), Figures(quiet, (19, 0.0))) is None
    assert equivalence_reason("relay", "legacy", Readiness(), Figures(quiet, (20, 0.95))) is None
    assert equivalence_reason("relay", "legacy", Readiness(), Figures(quiet, (20, 0.5))) == (
        "relay: prompt tokens differ from legacy's on 50% of 20 shadow pairs (needs 95% equal)"
    )


def test_the_same_model_bar_is_off_by_default_and_blocks_in_words_when_set() -> None:
    """min_same_model_p null: never a reason; set, a p under it blocks with the pair count."""
    quiet = {"relay": (0, 0.0), "legacy": (0, 0.0)}
    ev = Figures(quiet)
    ev.same_model = lambda _: (64, 0.0004)
    assert equivalence_reason("relay", "legacy", Readiness(), ev) is None
    bar = Readiness(min_same_model_p=0.01)
    assert equivalence_reason("relay", "legacy", bar, ev) == (
        "relay: its shadow answers' lengths are not drawn like legacy's (same-model p 0.0004 "
        "over 64 pairs, needs 0.01): another model may be answering"
    )
    ev.same_model = lambda _: (64, 0.2)
    assert equivalence_reason("relay", "legacy", bar, ev) is None
    ev.same_model = lambda _: None  # too few pairs yet
    assert equivalence_reason("relay", "legacy", bar, ev) is None
