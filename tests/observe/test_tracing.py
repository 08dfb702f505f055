"""Traces (SPEC §12): when they are on, the spans of a call and the traceparent each
upstream call carries; off, nothing of opentelemetry is loaded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from canary.config.model import Telemetry
from canary.observe.otel import tracing_with
from canary.observe.tracing import OFF, traces_on

from ..helpers import Upstream, no_sleep, serving

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"

ROUTES = """
backends:
  legacy: {base_url: "http://legacy.test/v1", api_key: sk-legacy-SECRET}
  relay:
    base_url: "http://relay.test:8443/v1"
    model_map: {gpt-4.1: relay-4.1}
routes:
  - name: chat
    weights: {legacy: 0, relay: 100}
    baseline: legacy
    fallback: true
retry: {max_attempts: 1}
"""


@pytest.mark.parametrize(
    ("traces", "env", "on"),
    [
        ("auto", {}, False),
        ("auto", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ("auto", {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
        ("off", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
        ("on", {}, True),
        ("on", {"OTEL_SDK_DISABLED": "true"}, False),
        ("on", {"OTEL_TRACES_EXPORTER": "none"}, False),
    ],
)
def test_traces_follow_the_setting_and_the_standard_variables(
    traces: str, env: dict[str, str], on: bool
) -> None:
    """`auto` is on when an OTLP endpoint is set; the SDK's own off switches are honoured."""
    assert traces_on(Telemetry(traces=traces), env) is on  # type: ignore[arg-type]


OFF_CALL = """
import asyncio, sys
import httpx
from asgi_lifespan import LifespanManager
from canary.serve.app import create_app

async def main() -> None:
    upstream = httpx.MockTransport(lambda request: httpx.Response(200, json={"ok": True}))
    app = create_app(sys.argv[1], transport=upstream, watch=False)
    async with LifespanManager(app) as m, httpx.AsyncClient(
        transport=httpx.ASGITransport(app=m.app), base_url="http://c"
    ) as c:
        r = await c.post("/v1/chat/completions", json={"model": "gpt-4.1"},
                         headers={"traceparent": sys.argv[2]})
        assert r.status_code == 200, r.text
        assert app.live.proxy.plane.tracing.enabled is False
    loaded = ("canary.observe.otel", "opentelemetry.sdk.trace", "opentelemetry.exporter")
    print(sorted(m for m in sys.modules if m.startswith(loaded)))

asyncio.run(main())
"""


def test_off_a_call_loads_no_tracer_sdk_or_exporter(tmp_path: Path) -> None:
    """Off, a call through the router imports neither canary's tracer nor the SDK's tracing
    or exporter (redis-py 8 itself imports the OpenTelemetry API and metrics SDK)."""
    config = tmp_path / "routes.yaml"
    config.write_text(ROUTES)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run(
        [sys.executable, "-c", OFF_CALL, str(config), f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"  # after the router's log lines
    assert OFF.enabled is False


def _answer(request: httpx.Request) -> httpx.Response:
    if request.url.host == "relay.test":
        return httpx.Response(503, json={"error": {"message": "overloaded"}})
    body = {
        "model": "gpt-4.1-2025-04-14",
        "choices": [{"message": {"role": "assistant", "content": "hi"}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7},
    }
    return httpx.Response(200, json=body)


def _by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {f"{s.kind.name} {s.name}": s for s in spans}


async def test_a_call_is_one_trace_continuing_the_clients_with_a_span_per_try(
    tmp_path: Path,
) -> None:
    """A canary that fails and its fallback: three spans under the client's trace, and each
    upstream call carries the traceparent of its own try, never the client's."""
    config = tmp_path / "routes.yaml"
    config.write_text(ROUTES)
    exporter = InMemorySpanExporter()
    upstream = Upstream()
    upstream.handler = _answer
    options = {
        "transport": httpx.MockTransport(upstream),
        "watch": False,
        "sleep": no_sleep,
        "tracing": tracing_with(SimpleSpanProcessor(exporter), {}),
    }
    async with serving(str(config), **options) as client:  # type: ignore[arg-type]
        r = await client.post(
            "/v1/chat/completions",
            json={"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]},
            headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"},
        )
    assert r.status_code == 200 and r.headers["x-canary-fallback"] == "relay"

    spans = _by_name(exporter.get_finished_spans())
    assert set(spans) == {"SERVER chat gpt-4.1", "CLIENT chat relay-4.1", "CLIENT chat gpt-4.1"}
    call = spans["SERVER chat gpt-4.1"]
    relay, legacy = spans["CLIENT chat relay-4.1"], spans["CLIENT chat gpt-4.1"]
    assert {format(s.context.trace_id, "032x") for s in spans.values()} == {CLIENT_TRACE}
    assert call.parent is not None and format(call.parent.span_id, "016x") == CLIENT_SPAN
    assert relay.parent == legacy.parent == call.context
    assert call.kind is SpanKind.SERVER and relay.kind is legacy.kind is SpanKind.CLIENT

    assert dict(call.attributes or {}) == {
        "canary.route": "chat",
        "http.request.method": "POST",
        "url.path": "/v1/chat/completions",
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4.1",
        "gen_ai.response.model": "gpt-4.1-2025-04-14",
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 7,
        "canary.backend": "legacy",
        "canary.fallback": True,
        "canary.outcome": "ok",
        "server.address": "legacy.test",
        "http.response.status_code": 200,
    }
    assert relay.attributes is not None and legacy.attributes is not None
    assert relay.attributes["gen_ai.request.model"] == "relay-4.1"
    assert relay.attributes["server.address"] == "relay.test"
    assert relay.attributes["server.port"] == 8443
    assert relay.attributes["http.response.status_code"] == 503
    assert relay.attributes["error.type"] == "5xx"
    assert relay.attributes["canary.fallback"] is False
    assert relay.status.status_code is StatusCode.ERROR
    assert legacy.attributes["canary.fallback"] is True
    assert legacy.attributes["gen_ai.usage.output_tokens"] == 7
    assert "error.type" not in legacy.attributes

    sent = {r.url.host: r.headers.get_list("traceparent") for r in upstream.requests}
    for host, span in (("relay.test", relay), ("legacy.test", legacy)):
        tp = f"00-{CLIENT_TRACE}-{format(span.context.span_id, '016x')}-01"
        assert sent[host] == [tp], host
    assert "sk-legacy-SECRET" not in repr([s.to_json() for s in spans.values()])
