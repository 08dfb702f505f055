"""``make bench`` row 5f: CPU per plain call with OpenTelemetry traces on, against off.

Two 1-worker canaries before one simulator, one of them started with
``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at a sink in this process (an OTLP/HTTP
collector that takes every export and keeps nothing), so it traces every call and
exports the spans in batches. Closed loop, 32 in flight, runs alternating; the ratio is
traces on / traces off (target <= 1.1x, SPEC §12).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import run as bench  # bench/run.py: processes, /proc, the plain-call load generator

TARGET = 1.1


class _Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP collector that takes every export and keeps nothing, over kept-alive
    connections as a collector keeps them (HTTP/1.0 would cost a connection per batch)."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@contextlib.contextmanager
def otlp_sink() -> Iterator[str]:
    """A sink on a free port, for as long as the block runs; yields its endpoint."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _traced(fleet: bench.Fleet, routes: Path, endpoint: str) -> bench.Router:
    """A canary started with the OTLP endpoint in its environment: tracing on."""
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    try:
        return bench.start_router(fleet, "canary-traced", routes)
    finally:
        del os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"]


def upstream(fleet: bench.Fleet, name: str) -> tuple[bench.Popen, Path]:
    """A simulator, ready, and a routes.yaml of one route to it (row 5f, in CPU time and
    in instructions)."""
    port = bench.free_port()
    sim = fleet.start(f"sim-{name}", [bench.PYTHON, "-m", "canary", "simulate", "--port",
                                      str(port), "--name", name])  # fmt: skip
    stats = f"http://127.0.0.1:{port}/_sim/stats"
    bench.wait_ready(sim, "simulator", stats, fleet.log_path(f"sim-{name}"), lambda: True)
    routes = fleet.workdir / f"{name}.yaml"
    routes.write_text(
        f'backends:\n  up: {{base_url: "http://127.0.0.1:{port}/v1"}}\n'
        "routes:\n  - name: all\n    weights: {up: 100}\n"
    )
    return sim, routes


def measure(fleet: bench.Fleet, rounds: int, quick: bool) -> dict[str, Any]:
    """Plain-call CPU of canary with traces off and on, runs alternating."""
    sim, routes = upstream(fleet, "traces")
    out: dict[str, Any] = {"off": [], "on": []}
    with otlp_sink() as sink:
        targets = {"off": bench.start_router(fleet, "canary-untraced", routes),
                   "on": _traced(fleet, routes, sink)}  # fmt: skip
        duration = 1.5 if quick else 3.0
        try:
            for n in range(rounds):
                for name, router in targets.items():
                    bench.progress(f"5f round {n + 1}/{rounds}: traces {name}")
                    spec = bench.LoadSpec(router.url, "closed", 1.0, duration, 32,
                                          cpu_pids={"router": router.pids})  # fmt: skip
                    out[name].append(bench.run_load(fleet, spec)["cpu_ms_per_req"]["router"])
        finally:
            for router in targets.values():
                fleet.stop(router.proc)
            fleet.stop(sim)
    return out


def render(figures: dict[str, Any]) -> str:
    off, on = statistics.median(figures["off"]), statistics.median(figures["on"])
    ratio = on / off if off > 0 else float("nan")
    goal = f"<= {TARGET:g}x {'ok' if ratio <= TARGET else 'MISSED'}"
    return "\n".join(
        [
            "| # | traces | off | on | ratio | target |",
            "|---|---|---|---|---|---|",
            f"| 5f | CPU ms per plain call, c=32 | {off:.3f} | {on:.3f} | {ratio:.2f}x | {goal} |",
            f"\n- row 5f: medians of {len(figures['off'])} alternating runs each.",
        ]
    )
