"""End to end: `canary serve` with OTEL_EXPORTER_OTLP_ENDPOINT exports one trace per call
to an OTLP/HTTP receiver, continuing the caller's trace, and the provider sees a
traceparent of the router's own try."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.helpers import SECRETS, serving_in_thread, stack_routes, wait_until

pytestmark = pytest.mark.e2e

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


class Receiver(ThreadingHTTPServer):
    """A tiny OTLP/HTTP collector: every span of every POST /v1/traces, decoded."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[dict[str, Any]] = []
        self.services: set[str] = set()
        self.lock = threading.Lock()

    def take(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        with self.lock:
            for resource in request.resource_spans:
                for kv in resource.resource.attributes:
                    if kv.key == "service.name":
                        self.services.add(kv.value.string_value)
                for scoped in resource.scope_spans:
                    self.spans.extend(_span(s) for s in scoped.spans)


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        status = 404
        if self.path == "/v1/traces":
            self.server.take(body)
            status = 200
        self.send_response(status)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


def _value(v: AnyValue) -> Any:
    return getattr(v, v.WhichOneof("value") or "string_value")


def _span(s: Any) -> dict[str, Any]:
    return {
        "name": s.name,
        "trace": s.trace_id.hex(),
        "id": s.span_id.hex(),
        "parent": s.parent_span_id.hex(),
        "kind": s.kind,
        "attrs": {kv.key: _value(kv.value) for kv in s.attributes},
    }


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serving_in_thread(Receiver()) as server:
        yield server


def test_an_openai_call_through_canary_is_one_trace_in_the_collector(
    stack_factory: Any, receiver: Receiver
) -> None:
    """The caller's trace goes on in canary's spans, which carry the GenAI attributes and
    the provider's token counts; the provider got the traceparent of canary's try."""
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}"
    stack = stack_factory(
        stack_routes(legacy=0, relay=100),
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "50",  # export within 50 ms of the call
            "CANARY_API_KEYS": SECRETS[2],
        },
    )
    client = stack.client(api_key=SECRETS[2])
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4.1",
        messages=[{"role": "user", "content": "hello there"}],
        extra_headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"},
    )
    usage = raw.parse().usage
    assert usage is not None and raw.headers["x-canary-backend"] == "relay"

    wait_until(lambda: len(receiver.spans) >= 2, 10, "the call's spans at the collector")
    with receiver.lock:
        spans = {s["name"]: s for s in receiver.spans}
    assert set(spans) == {"chat gpt-4.1", "chat relay-4.1"}, spans
    call, try_ = spans["chat gpt-4.1"], spans["chat relay-4.1"]
    assert receiver.services == {"canary"}
    assert call["trace"] == try_["trace"] == CLIENT_TRACE
    assert call["parent"] == CLIENT_SPAN and try_["parent"] == call["id"]
    for span in (call, try_):
        attrs = span["attrs"]
        assert attrs["gen_ai.operation.name"] == "chat"
        assert attrs["gen_ai.usage.input_tokens"] == usage.prompt_tokens
        assert attrs["gen_ai.usage.output_tokens"] == usage.completion_tokens
        assert attrs["gen_ai.response.model"] == raw.parse().model
        assert attrs["http.response.status_code"] == 200
        assert attrs["server.address"] == "127.0.0.1"
        assert attrs["canary.route"] == "chat" and attrs["canary.backend"] == "relay"
        assert attrs["canary.fallback"] is False and attrs["canary.outcome"] == "ok"
        assert "error.type" not in attrs
    assert call["attrs"]["gen_ai.request.model"] == "gpt-4.1"
    assert try_["attrs"]["gen_ai.request.model"] == "relay-4.1"  # after model_map

    seen = stack.sim("relay", "/_sim/stats")["last_request"]["headers"]
    assert seen["traceparent"] == f"00-{CLIENT_TRACE}-{try_['id']}-01"
    assert not any(secret in repr(receiver.spans) for secret in SECRETS)
