"""The export of spans: batches off the request path, a full queue dropping, a failing
collector kept away from everything else, and the OTLP/HTTP POST the variables configure."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from structlog.testing import capture_logs

from canary.observe.otel import otlp_tracing
from canary.observe.otlp import SERVER, Encoder, SpanRecord
from canary.observe.otlp_export import Batcher, OtlpHttp
from tests.helpers import serving_in_thread

from ..helpers import Upstream, free_port, no_sleep, serving

WAIT_S = 10.0


def _span(n: int) -> SpanRecord:
    return SpanRecord((1, n + 1, 0), f"span {n}", SERVER, {"n": n}, 1)


class _Sender:
    """Takes batches; each one waits for ``gate`` (open unless closed) and may raise."""

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail = fail
        self.stopped = self.closed = False
        self.got = threading.Event()

    def __call__(self, spans: list[SpanRecord], deadline: float) -> None:
        assert self.gate.wait(WAIT_S)
        self.batches.append([s.attributes["n"] for s in spans])
        self.got.set()
        if self.fail:
            raise ConnectionRefusedError("the collector is down")

    def stop_retrying(self) -> None:
        self.stopped = True

    def close(self) -> None:
        self.closed = True


def test_a_full_batch_is_exported_at_once_and_the_rest_when_closing() -> None:
    """Batches of at most OTEL_BSP_MAX_EXPORT_BATCH_SIZE, the first one as soon as it is
    full (the schedule delay is an hour), the rest by the last flush, in order."""
    sender = _Sender()
    environ = {"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "2", "OTEL_BSP_SCHEDULE_DELAY": "3600000"}
    batcher = Batcher(sender, environ)
    batcher.put(_span(0))
    batcher.put(_span(1))
    assert sender.got.wait(WAIT_S)
    assert sender.batches == [[0, 1]]
    for n in range(2, 5):
        batcher.put(_span(n))
    batcher.close(WAIT_S)
    assert not batcher.thread.is_alive() and sender.stopped and sender.closed
    assert [n for b in sender.batches for n in b] == [0, 1, 2, 3, 4]
    assert all(len(b) <= 2 for b in sender.batches)


def test_a_full_queue_drops_new_spans_and_says_so() -> None:
    """A collector slower than the calls: spans past OTEL_BSP_MAX_QUEUE_SIZE are dropped
    and counted, never waited for."""
    sender = _Sender()
    sender.gate.clear()
    environ = {"OTEL_BSP_MAX_QUEUE_SIZE": "3", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "1"}
    batcher = Batcher(sender, environ)
    batcher.put(_span(0))
    while batcher.queue:  # the thread took span 0 and waits at the gate
        assert batcher.thread.is_alive()
        time.sleep(0.001)
    for n in range(1, 9):
        batcher.put(_span(n))
    assert len(batcher.queue) == 3 and batcher.dropped == 5
    with capture_logs() as logs:
        sender.gate.set()
        batcher.close(WAIT_S)
    assert [n for b in sender.batches for n in b] == [0, 1, 2, 3]
    assert next(e for e in logs if e["event"] == "traces.dropped")["spans"] == 5


def test_a_failing_collector_is_logged_and_the_next_batches_still_go() -> None:
    """An exporter that raises is logged once (not once a batch) and stops nothing."""
    sender = _Sender(fail=True)
    batcher = Batcher(sender, {"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "1"})
    with capture_logs() as logs:
        for n in range(3):
            batcher.put(_span(n))
        batcher.close(WAIT_S)
    assert sender.batches == [[0], [1], [2]]
    failed = [e for e in logs if e["event"] == "traces.export_failed"]
    assert len(failed) == 1 and "collector is down" in failed[0]["error"]


class _Collector(ThreadingHTTPServer):
    """An OTLP/HTTP receiver keeping each POST's path, headers and body; answers
    ``status``."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.posts: list[tuple[str, dict[str, str], bytes]] = []
        self.status = 200
        self.hang_up = False  # close each connection after its answer, without a word


class _Handler(BaseHTTPRequestHandler):
    server: _Collector
    protocol_version = "HTTP/1.1"  # kept alive, as a collector does

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        self.server.posts.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(self.server.status)
        self.send_header("content-length", "0")
        self.end_headers()
        self.close_connection = self.server.hang_up

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def collector() -> Iterator[_Collector]:
    with serving_in_thread(_Collector()) as server:
        yield server


def test_a_batch_is_posted_as_the_exporter_variables_say(collector: _Collector) -> None:
    """The traces endpoint under OTEL_EXPORTER_OTLP_ENDPOINT, its headers, gzip; two
    batches over one connection; a 400 is an error at once (not retried)."""
    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.server_address[1]}/",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=blue,authorization=Bearer%20t0ken",
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "gzip",
    }
    send = OtlpHttp(Encoder({"service.name": "canary"}).encode, environ)
    send([_span(0), _span(1)], time.monotonic() + WAIT_S)
    send([_span(2)], time.monotonic() + WAIT_S)
    collector.status = 400
    with pytest.raises(OSError, match="400"):
        send([_span(3)], time.monotonic() + WAIT_S)
    send.close()
    assert len(collector.posts) == 3
    path, headers, body = collector.posts[0]
    assert path == "/v1/traces"
    assert headers["content-type"] == "application/x-protobuf"
    assert headers["content-encoding"] == "gzip"
    assert headers["x-tenant"] == "blue" and headers["authorization"] == "Bearer t0ken"
    request = ExportTraceServiceRequest.FromString(gzip.decompress(body))
    spans = request.resource_spans[0].scope_spans[0].spans
    assert [s.name for s in spans] == ["span 0", "span 1"]


def test_a_kept_alive_connection_the_collector_closed_is_replaced_at_once(
    collector: _Collector,
) -> None:
    """The collector closes idle connections: the next batch goes out on a new one
    before any backoff (its deadline is shorter than the first one)."""
    collector.hang_up = True
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.server_address[1]}"}
    send = OtlpHttp(Encoder({}).encode, environ)
    for n in range(3):
        send([_span(n)], time.monotonic() + 0.5)
    send.close()
    assert len(collector.posts) == 3


def test_a_collector_that_is_not_there_fails_within_the_deadline() -> None:
    """Nothing listens: the export gives up by its deadline rather than retrying on."""
    environ = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{free_port()}/v1/traces"}
    send = OtlpHttp(Encoder({}).encode, environ)
    with pytest.raises(OSError, match="no connection"):
        send([_span(0)], time.monotonic() + 0.5)


ROUTES = """
backends:
  legacy: {base_url: "http://legacy.test/v1"}
routes:
  - name: chat
    weights: {legacy: 100}
"""


async def test_calls_traced_to_a_dead_collector_are_answered_and_the_server_stops(
    tmp_path: Path,
) -> None:
    """canary's own exporter aimed where nothing listens: every call is answered as
    usual, and the last flush at shutdown is bounded."""
    config = tmp_path / "routes.yaml"
    config.write_text(ROUTES)
    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "0.5",
        "OTEL_BSP_SCHEDULE_DELAY": "10",
    }
    tracing = otlp_tracing(environ)
    upstream = Upstream()
    transport = httpx.MockTransport(upstream)
    async with serving(
        str(config), transport=transport, watch=False, sleep=no_sleep, tracing=tracing
    ) as client:
        for _ in range(3):
            r = await client.post("/v1/chat/completions", json={"model": "gpt-4.1"})
            assert r.status_code == 200
    assert len(upstream.requests) == 3
    assert isinstance(tracing.sink, Batcher) and not tracing.sink.thread.is_alive()
