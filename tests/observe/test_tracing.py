"""Traces (SPEC §12): when they are on, the spans of a call and the traceparent each
upstream call carries; off, nothing of opentelemetry is loaded."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from canary.config.model import Backend, Match, Route, Telemetry
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


class _Try:
    """The fields of a try a trace reads."""

    def __init__(self) -> None:
        self.backend = Backend(name="relay", base_url="http://relay.test/v1")
        self.origin: str | None = None
        self.status, self.outcome, self.kind = 200, "ok", None
        self.tokens: tuple[int, int] | None = (3, 4)

    def answered_model(self) -> str | None:
        return "gpt-4.1"


class _Call:
    """The fields of an exchange a trace reads, with the client's headers as given."""

    def __init__(self, hdrs: dict[bytes, bytes]) -> None:
        self.scope = {"path": "/v1/chat/completions", "method": "POST"}
        self.hdrs = hdrs
        self.route = Route(name="chat", match=Match(), weights={"relay": 1.0}, baseline="relay",
                           sticky=None)  # fmt: skip
        self.body = None
        self.first: _Try | None = None
        self.last: _Try | None = None


TRACEPARENT = re.compile(rb"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_HEADER = st.one_of(
    st.binary(max_size=80),
    st.builds(
        lambda v, t, s, f: f"{v}-{t}-{s}-{f}".encode(),
        st.sampled_from(["00", "01", "ff", "0"]),
        st.text("0123456789abcdefABCDEF", min_size=0, max_size=34),
        st.text("0123456789abcdef", min_size=0, max_size=17),
        st.sampled_from(["00", "01", "zz", ""]),
    ),
)


@settings(max_examples=150, deadline=None)
@given(traceparent=_HEADER, tracestate=st.one_of(st.none(), st.binary(max_size=60)))
def test_any_client_trace_headers_give_a_well_formed_traceparent_upstream(
    traceparent: bytes, tracestate: bytes | None
) -> None:
    """Whatever the client sends as trace context, its call is traced, and the request
    upstream carries one well-formed traceparent of canary's try: the client's trace is
    continued when its header was valid, and never forwarded as it came."""
    exporter = InMemorySpanExporter()
    tracing = tracing_with(SimpleSpanProcessor(exporter), {})
    hdrs = {b"traceparent": traceparent}
    if tracestate is not None:
        hdrs[b"tracestate"] = tracestate
    call, t = _Call(hdrs), _Try()
    trace = tracing.begin(call)  # type: ignore[arg-type]
    trace.try_began(t)
    out = [(b"traceparent", traceparent), (b"x-request-id", b"r1")]
    trace.outgoing(out)
    trace.try_ended(t)
    call.last = t
    trace.ended(call)  # type: ignore[arg-type]

    sent = [v for k, v in out if k == b"traceparent"]
    assert len(sent) == 1 and TRACEPARENT.fullmatch(sent[0]), out
    assert (b"x-request-id", b"r1") in out
    spans = exporter.get_finished_spans()
    assert len(spans) == 2
    trace_id = format(spans[0].context.trace_id, "032x")
    assert sent[0].split(b"-")[1].decode() == trace_id
    given_id = traceparent.split(b"-")[1] if traceparent.count(b"-") == 3 else b""
    if trace_id.encode() != given_id.lower():  # a new trace: the client's was not valid
        assert spans[1].parent is None


class _Body:
    def __init__(self, model: str | None) -> None:
        self.model = model

    def accounted_model(self) -> str | None:
        return self.model


_TRIES = st.lists(
    st.tuples(
        st.sampled_from([200, 429, 503, 0]),
        st.sampled_from(["ok", "timeout", "cut"]),
        st.one_of(st.none(), st.tuples(st.integers(0, 2**40), st.integers(0, 2**20))),
        st.one_of(st.none(), st.sampled_from(["gpt-4.1", "gpt-4.1-2025-04-14"])),
        st.booleans(),  # accounted (a fault may end a call before)
    ),
    max_size=3,
)


@settings(max_examples=120, deadline=None)
@given(
    tries=_TRIES,
    model=st.one_of(st.none(), st.sampled_from(["gpt-4.1", "o3"])),
    traceparent=st.sampled_from([None, f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"]),
    tracestate=st.sampled_from([None, "congo=t61rcWkgMzE"]),
)
def test_the_exported_spans_of_a_call_are_the_sdks_encoding_of_them(
    tries: list[tuple[int, str, tuple[int, int] | None, str | None, bool]],
    model: str | None,
    traceparent: str | None,
    tracestate: str | None,
) -> None:
    """What the export thread writes for a call (templates of the spans alike, then ids,
    times and counts) decodes as the SDK's own encoding of the call's spans, on a first
    call of its shape and on the next ones."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.sdk.resources import Resource

    from canary.observe.otel import OtelTracing
    from canary.observe.otel_sdk import readable
    from canary.observe.otlp import Encoder
    from canary.observe.trace_context import propagation, sampler

    queued: list[Any] = []
    sink = type("Sink", (), {"put": lambda self, item: queued.append(item)})()
    tracing = OtelTracing(sink, propagation({}), sampler({}))  # type: ignore[arg-type]
    hdrs = {}
    if traceparent is not None:
        hdrs[b"traceparent"] = traceparent.encode()
        if tracestate is not None:
            hdrs[b"tracestate"] = tracestate.encode()
    relay = Backend(name="relay", base_url="http://relay.test:8443/v1",
                    model_map={"gpt-4.1": "relay-4.1"})  # fmt: skip
    for _ in range(2):
        call = _Call(hdrs)
        call.body = _Body(model)  # type: ignore[assignment]
        trace = tracing.begin(call)  # type: ignore[arg-type]
        for i, (status, outcome, tokens, named, accounted) in enumerate(tries):
            t = _Try()
            t.backend = relay if i % 2 else t.backend
            t.origin = "relay" if i else None
            t.status, t.outcome, t.tokens = status, outcome, tokens
            t.answered_model = lambda named=named: named  # type: ignore[method-assign]
            trace.try_began(t)
            if accounted:
                trace.try_ended(t)
            call.first = call.first or (t if len(tries) > 1 else None)
            call.last = t
        trace.ended(call)  # type: ignore[arg-type]
    resource = Resource({"service.name": "canary"})
    encoder = Encoder(resource.attributes)
    for item in queued:  # the first of its shape, then one alike
        ours = ExportTraceServiceRequest.FromString(encoder.encode([item]))
        sdk = encode_spans([readable(s, resource) for s in item.spans()])
        assert ours == ExportTraceServiceRequest.FromString(sdk.SerializeToString())
        assert len(ours.resource_spans[0].scope_spans[0].spans) == len(tries) + 1


async def test_a_collector_that_is_down_never_reaches_the_client(tmp_path: Path) -> None:
    """Spans exported to a port where nothing listens: the call is answered as usual, and
    the server still stops within its bound."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    config = tmp_path / "routes.yaml"
    config.write_text(ROUTES)
    upstream = Upstream()
    upstream.handler = _answer
    dead = OTLPSpanExporter(endpoint="http://127.0.0.1:9/v1/traces", timeout=0.5)
    options = {
        "transport": httpx.MockTransport(upstream),
        "watch": False,
        "sleep": no_sleep,
        "tracing": tracing_with(BatchSpanProcessor(dead, schedule_delay_millis=10), {}),
    }
    async with serving(str(config), **options) as client:  # type: ignore[arg-type]
        for _ in range(3):
            r = await client.post("/v1/chat/completions", json={"model": "gpt-4.1"})
            assert r.status_code == 200


async def test_a_call_refused_before_routing_is_one_span(tmp_path: Path) -> None:
    """A bad client key is answered by canary itself: one span, in the client's trace,
    with the refusal's code as its error type, and no upstream call."""
    config = tmp_path / "routes.yaml"
    config.write_text(ROUTES + "auth: {api_keys: ck-good-SECRET}\n")
    exporter = InMemorySpanExporter()
    upstream = Upstream()
    options = {
        "transport": httpx.MockTransport(upstream),
        "watch": False,
        "tracing": tracing_with(SimpleSpanProcessor(exporter), {}),
    }
    async with serving(str(config), **options) as client:  # type: ignore[arg-type]
        r = await client.post(
            "/v1/chat/completions",
            json={"model": "gpt-4.1"},
            headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01", "x-api-key": "bad"},
        )
    assert r.status_code == 401 and upstream.requests == []
    (span,) = exporter.get_finished_spans()
    assert span.name == "chat" and span.kind is SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == CLIENT_TRACE
    assert span.attributes is not None
    assert span.attributes["error.type"] == "invalid_api_key"
    assert span.attributes["http.response.status_code"] == 401
    assert span.status.status_code is StatusCode.ERROR


def test_a_websocket_session_is_one_span_under_the_clients_trace() -> None:
    """A session's span covers it from handshake to close: its model, tokens, backend,
    fallback and close code, under the trace its handshake carried."""
    from types import SimpleNamespace

    exporter = InMemorySpanExporter()
    tracing = tracing_with(SimpleSpanProcessor(exporter), {})
    relay = Backend("relay", "http://relay.test:8443/v1")
    legacy = Backend("legacy", "http://legacy.test/v1")
    route = Route("realtime", Match(), {"legacy": 50, "relay": 50}, "legacy", None)
    traceparent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01".encode()
    session = SimpleNamespace(
        scope={"path": "/v1/realtime"},
        hdrs={b"traceparent": traceparent},
        route=route,
        model="gpt-realtime",
        first=SimpleNamespace(backend=relay, status=503, outcome="upstream_503", kind="5xx"),
        last=SimpleNamespace(backend=legacy, status=101, outcome="ok", kind=None),
        ending=SimpleNamespace(code=1000),
        tokens=[12, 34],
    )
    tracing.session(session, 2.5)
    (span,) = exporter.get_finished_spans()
    assert span.name == "realtime gpt-realtime" and span.kind is SpanKind.SERVER
    assert span.context is not None and f"{span.context.trace_id:032x}" == CLIENT_TRACE
    assert span.end_time is not None and span.start_time is not None
    assert abs((span.end_time - span.start_time) / 1e9 - 2.5) < 0.01
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.usage.input_tokens"] == 12
    assert attributes["gen_ai.usage.output_tokens"] == 34
    assert attributes["canary.backend"] == "legacy" and attributes["canary.fallback"] is True
    assert attributes["canary.close_code"] == 1000 and "error.type" not in attributes
    OFF.session(session, 1.0)  # off: nothing, and no error
