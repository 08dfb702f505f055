"""Flow tests: token accounting, cost, /metrics and the access line, through the whole app."""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from tests.helpers import Chunks, Upstream, no_sleep, prometheus_samples, sample, serving

ROUTES = """
backends:
  legacy: {base_url: "http://legacy.test/v1", api_key: sk-legacy-secret-000111}
  relay: {base_url: "http://relay.test/v1", api_key: sk-relay-secret-222333}
routes:
  - name: chat
    match: {paths: [/v1/chat/completions]}
    weights: {legacy: 50, relay: 50}
    baseline: legacy
    sticky: header:x-user-id
    fallback: true
  - name: default
    weights: {legacy: 100}
retry: {max_attempts: 1}
pricing:
  legacy: {gpt-4.1: {input: 8.0, output: 8.0}}
  relay: {gpt-4.1: {input: 1.0, output: 1.0}}
"""


def answer(prompt: int, completion: int) -> httpx.Response:
    body = {"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": prompt}}
    body["usage"]["completion_tokens"] = completion
    return httpx.Response(
        200,
        headers={"content-type": "application/json"},
        stream=httpx.ByteStream(orjson.dumps(body)),
    )


def stream(prompt: int, completion: int, usage: bool = True) -> httpx.Response:
    chunks = [b'data: {"choices":[{"delta":{"content":"a"}}],"usage":null}\n\n']
    if usage:
        tail = {"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}
        chunks.append(b"data: " + orjson.dumps(tail) + b"\n\n")
    chunks.append(b"data: [DONE]\n\n")
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Chunks(chunks))


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}], **extra}


class Clock:
    """The router's clock in flow tests: it moves only when a test moves it."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


async def test_tokens_and_cost_from_json_and_stream_answers(tmp_path: Path) -> None:
    """Usage of plain and streamed answers lands in /status per backend, priced per route;
    the projection waits for 10 minutes of traffic, then follows the live token rate."""
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES)
    upstream = Upstream()
    upstream.handler = lambda r: (
        stream(100, 50) if b'"stream":true' in r.content else answer(1000, 500)
    )
    clock = Clock()
    app = {"transport": httpx.MockTransport(upstream), "watch": False, "clock": clock}
    async with serving(str(path), **app) as c:
        backends = set()
        for i in range(20):
            r = await c.post("/v1/chat/completions", json=chat(), headers={"x-user-id": f"u{i}"})
            assert r.status_code == 200
            backends.add(r.headers["x-canary-backend"])
            s = await c.post(
                "/v1/chat/completions", json=chat(stream=True), headers={"x-user-id": f"u{i}"}
            )
            assert s.text.endswith("data: [DONE]\n\n")
            if i == 0:  # the first two calls, then ten quiet minutes, then the rest
                early = (await c.get("/status")).json()["migration"]
                clock.now += 600
        assert backends == {"legacy", "relay"}
        doc = (await c.get("/status")).json()
    assert early["projected_monthly_savings_usd"] is None
    assert early["projection_basis"] == "2 calls over 0 s; a projection needs 10 min of traffic"
    legacy, relay = doc["backends"]["legacy"], doc["backends"]["relay"]
    calls = {"legacy": legacy["total_requests"] // 2, "relay": relay["total_requests"] // 2}
    for name, b in (("legacy", legacy), ("relay", relay)):
        assert b["tokens"] == {"input": 1100 * calls[name], "output": 550 * calls[name]}
        assert b["unmetered_requests"] == 0
    assert legacy["cost_usd"] == round(8 * 1650 * calls["legacy"] / 1e6, 6)
    assert relay["cost_usd"] == round(1 * 1650 * calls["relay"] / 1e6, 6)
    cost = doc["cost"]
    assert cost["total_usd"] == round(legacy["cost_usd"] + relay["cost_usd"], 6)
    assert cost["at_100_baseline_usd"] == round(8 * 1650 * 20 / 1e6, 6)
    assert cost["at_100_canary_usd"] == round(1 * 1650 * 20 / 1e6, 6)
    rate = cost["token_rate_per_s"]  # the 38 calls after the quiet minutes
    assert rate["input"] > 0 and rate["output"] > 0
    expected = (rate["input"] + rate["output"]) * (8.0 - 1.0) * 30 * 24 * 3600 / 1e6
    assert doc["migration"]["projected_monthly_savings_usd"] == pytest.approx(expected, rel=1e-6)
    assert doc["migration"]["projection_basis"] == "40 calls over 10 min"


async def test_streams_without_usage_are_unmetered_and_unknown_models_unpriced(
    tmp_path: Path,
) -> None:
    """A stream without a usage chunk counts as unmetered; a model without a price as unpriced."""
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES.replace("legacy: 50, relay: 50", "legacy: 100"))
    upstream = Upstream()
    upstream.handler = lambda r: (
        stream(0, 0, usage=False) if b'"stream":true' in r.content else answer(10, 10)
    )
    async with serving(str(path), transport=httpx.MockTransport(upstream), watch=False) as c:
        await c.post("/v1/chat/completions", json=chat(stream=True))
        await c.post("/v1/chat/completions", json=chat(model="gpt-9"))
        doc = (await c.get("/status")).json()
    legacy = doc["backends"]["legacy"]
    assert legacy["unmetered_requests"] == 1
    assert legacy["unpriced_tokens"] == {"input": 10, "output": 10}
    assert legacy["cost_usd"] is None
    assert "legacy/gpt-9" in doc["cost"]["unpriced"]
    assert doc["cost"]["unmetered_requests"] == 1


async def test_fallback_is_one_access_line_and_counted_in_metrics(tmp_path: Path) -> None:
    """A canary failure answered by the baseline: one access line naming both, and the
    failure, the fallback and both calls in /metrics, which parses as Prometheus text."""
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES.replace("legacy: 50, relay: 50", "legacy: 0, relay: 100"))
    upstream = Upstream()
    upstream.handler = lambda r: (
        httpx.Response(503, json={"error": "down"}) if r.url.host == "relay.test" else answer(7, 3)
    )
    async with serving(
        str(path), transport=httpx.MockTransport(upstream), sleep=no_sleep, watch=False
    ) as c:
        with capture_logs() as logs:
            r = await c.post("/v1/chat/completions", json=chat())
        assert r.headers["x-canary-fallback"] == "relay"
        text = (await c.get("/metrics")).text
    lines = [e for e in logs if e["event"] == "proxy.request"]
    assert len(lines) == 1
    line = lines[0]
    assert (line["route"], line["backend"], line["status"]) == ("chat", "legacy", 200)
    assert (line["fallback"], line["fallback_outcome"]) == ("relay", "upstream_503")
    assert (line["tokens_in"], line["tokens_out"]) == (7, 3)
    m = prometheus_samples(text)

    def value(name: str, **labels: str) -> float:
        return sample(m, name, **labels)

    assert value("canary_requests_total", route="chat", backend="relay", status_class="5xx") == 1
    assert value("canary_requests_total", route="chat", backend="legacy", status_class="2xx") == 1
    assert value("canary_upstream_failures_total", backend="relay", kind="5xx") == 1
    assert value("canary_fallbacks_total", route="chat", backend="relay") == 1
    assert value("canary_tokens_total", backend="legacy", model="gpt-4.1", direction="input") == 7
    assert value("canary_cost_usd_total", backend="legacy") == (7 + 3) * 8 / 1e6
    assert "sk-legacy-secret" not in text and "sk-relay-secret" not in text


async def test_refusals_are_counted_without_a_backend(tmp_path: Path) -> None:
    """A request refused before routing (here: no client key) is a 4xx of route "none"."""
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES + "auth: {api_keys: ck-client-key-123}\n")
    async with serving(str(path), transport=httpx.MockTransport(Upstream()), watch=False) as c:
        assert (await c.post("/v1/chat/completions", json=chat())).status_code == 401
        m = prometheus_samples((await c.get("/metrics")).text)
    labels = (("backend", "none"), ("route", "none"), ("status_class", "4xx"))
    assert m[("canary_requests_total", labels)] == 1


GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "canary-dashboard.json"
_PROMQL_WORDS = {"sum", "by", "rate", "max", "min", "ignoring", "group_left", "histogram_quantile"}


async def test_grafana_dashboard_queries_name_exported_metrics(tmp_path: Path) -> None:
    """Every metric a Grafana panel queries is one the router really exports."""
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES)
    upstream = Upstream()
    upstream.handler = lambda r: answer(5, 5)
    clock = Clock()
    app = {"transport": httpx.MockTransport(upstream), "watch": False, "clock": clock}
    async with serving(str(path), **app) as c:
        await c.post("/v1/chat/completions", json=chat())
        clock.now += 600  # ten minutes of traffic: the savings projection is exported too
        await c.post("/v1/chat/completions", json=chat())
        text = (await c.get("/metrics")).text
    exported = set()
    for family in text_string_to_metric_families(text):
        exported.add(family.name)
        exported.update(s.name for s in family.samples)
        if family.type == "counter":  # a counter with no sample yet is still exported
            exported.add(f"{family.name}_total")
    dashboard = orjson.loads(GRAFANA.read_bytes())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 20
    used = {m for e in exprs for m in re.findall(r"\b(canary_[a-z_]+)", e)}
    assert used - exported == set()
    assert {w for e in exprs for w in re.findall(r"\b([a-z_]+)\s*\(", e)} <= _PROMQL_WORDS
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"])


async def test_gzip_answers_are_metered_and_reach_the_client_as_sent(tmp_path: Path) -> None:
    """The openai SDKs ask for gzip: such an answer passes untouched and is still metered;
    br and zstd are not asked of the provider."""
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES.replace("legacy: 50, relay: 50", "legacy: 100"))
    body = orjson.dumps({"choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 9}})
    packed = gzip.compress(body)
    upstream = Upstream()
    upstream.handler = lambda r: httpx.Response(
        200,
        headers={"content-type": "application/json", "content-encoding": "gzip"},
        stream=Chunks([packed[:10], packed[10:]]),
    )
    async with serving(str(path), transport=httpx.MockTransport(upstream), watch=False) as c:
        r = await c.post(
            "/v1/chat/completions", json=chat(), headers={"accept-encoding": "gzip, br, zstd"}
        )
        assert r.json()["usage"]["prompt_tokens"] == 30  # httpx inflated the bytes we passed
        doc = (await c.get("/status")).json()
    assert upstream.requests[0].headers["accept-encoding"] == "gzip"
    assert doc["backends"]["legacy"]["tokens"] == {"input": 30, "output": 9}
    assert doc["backends"]["legacy"]["unmetered_requests"] == 0


@pytest.mark.parametrize(
    ("failure", "kind"),
    [
        (httpx.ReadTimeout("slow"), "timeout"),
        (httpx.ConnectError("refused"), "connect"),
    ],
)
async def test_failure_kinds_name_the_upstream_failure_not_our_answer(
    tmp_path: Path, failure: Exception, kind: str
) -> None:
    """A timeout is a timeout and a refused connection a connect failure (not the 504 or
    502 the router answered with)."""
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES.replace("legacy: 50, relay: 50", "legacy: 100"))

    def fail(request: httpx.Request) -> httpx.Response:
        raise failure

    upstream = Upstream()
    upstream.handler = fail
    async with serving(
        str(path), transport=httpx.MockTransport(upstream), sleep=no_sleep, watch=False
    ) as c:
        r = await c.post("/v1/chat/completions", json=chat())
        assert r.status_code in (502, 504)
        m = prometheus_samples((await c.get("/metrics")).text)
    assert sample(m, "canary_upstream_failures_total", backend="legacy", kind=kind) == 1


async def test_a_stream_broken_before_its_first_chunk_is_a_cut_and_not_a_success(
    tmp_path: Path,
) -> None:
    """Headers said 200, then the body broke: the canary call counts as a 5xx stream_cut,
    and the baseline answers (fallback)."""
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES.replace("legacy: 50, relay: 50", "legacy: 0, relay: 100"))
    upstream = Upstream()
    upstream.handler = lambda r: (
        httpx.Response(
            200,
            headers={"content-type": "text/event-stream"},
            stream=Chunks([], fail=httpx.ReadError("reset")),
        )
        if r.url.host == "relay.test"
        else answer(1, 1)
    )
    async with serving(
        str(path), transport=httpx.MockTransport(upstream), sleep=no_sleep, watch=False
    ) as c:
        r = await c.post("/v1/chat/completions", json=chat())
        assert (r.status_code, r.headers["x-canary-fallback"]) == (200, "relay")
        m = prometheus_samples((await c.get("/metrics")).text)
    assert sample(m, "canary_upstream_failures_total", backend="relay", kind="stream_cut") == 1
    assert (
        sample(m, "canary_requests_total", route="chat", backend="relay", status_class="5xx") == 1
    )
    assert (
        "canary_requests_total",
        (("backend", "relay"), ("route", "chat"), ("status_class", "2xx")),
    ) not in m


async def test_a_large_body_is_not_parsed_for_the_model_label(tmp_path: Path) -> None:
    """Past a few KiB the model is found by a bounded search, at the end where the openai
    SDK writes it (after messages), and the tokens are priced for it."""
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES.replace("legacy: 50, relay: 50", "legacy: 100"))
    upstream = Upstream()
    upstream.handler = lambda r: answer(100, 10)
    big = (
        b'{"messages": [{"role": "user", "content": "'
        + b"x" * 300_000
        + b'"}], "model": "gpt-4.1"}'
    )
    async with serving(str(path), transport=httpx.MockTransport(upstream), watch=False) as c:
        r = await c.post(
            "/v1/chat/completions", content=big, headers={"content-type": "application/json"}
        )
        assert r.status_code == 200
        doc = (await c.get("/status")).json()
    assert doc["cost"]["by_model"][0]["model"] == "gpt-4.1"
    assert doc["backends"]["legacy"]["cost_usd"] == round(110 * 8 / 1e6, 6)
