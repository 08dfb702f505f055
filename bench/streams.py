"""``make bench`` rows 5: canary's streams and plain calls against a bare forwarder.

Each figure is a pair measured in the same run, the forwarder (``bench/forwarder.py``:
starlette + aiohttp, no routing) beside canary, runs alternating, and the table prints
canary / forwarder. Both sit in front of one ``canary simulate`` whose reply is
``REPLY_WORDS`` words long (one SSE event each), so a stream carries ~100 events.

  5a CPU per chunk: closed loop, ``STREAMS`` streams in flight, 5 ms between upstream
     events; router CPU (``/proc``) over the window / SSE events delivered in it.
  5b CPU per plain call: closed loop, 32 in flight, non-streamed, upstream latency 0.
  5c memory per open idle stream: ``BURST`` streams opened at once, each idle after its
     first event; (RSS with them open - RSS before) / ``BURST``. ``kept`` is the RSS not
     returned 2 s after they closed, per stream.
  5d first byte at ``BURST`` streams opened at once: p50 / p99 from send to first chunk.
  5e CPU per plain call with traces on (``OTEL_EXPORTER_OTLP_ENDPOINT`` at a sink in this
     process; the SDK's batch processor, OTLP/HTTP) against the same canary with them off.

The load generator is this file with ``--loadgen SPEC`` in its own process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import run as bench  # bench/run.py: processes, /proc, the plain-call load generator

REPLY_WORDS = 100
STREAMS = 32
BURST = 1000
CHUNK_DELAY_MS = 5.0
IDLE_DELAY_MS = 600_000.0  # after its first event a burst stream stays silent
BODY = json.dumps({**bench.PAYLOAD, "stream": True}).encode()


@dataclass(frozen=True)
class StreamSpec:
    url: str
    mode: str  # "paced" or "burst"
    warmup_s: float = 1.0
    duration_s: float = 3.0
    streams: int = STREAMS
    cpu_pids: dict[str, list[int]] = field(default_factory=dict)


def rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


async def _paced(session: aiohttp.ClientSession, spec: StreamSpec) -> dict[str, Any]:
    """Streams back to back; SSE event ends counted as their chunks arrive."""
    t0 = time.perf_counter() + spec.warmup_s
    t1 = t0 + spec.duration_s
    counted = [0, 0]  # events in the window, errors

    async def worker() -> None:
        while time.perf_counter() < t1:
            try:
                async with session.post(spec.url, data=BODY) as resp:
                    async for chunk in resp.content.iter_any():
                        if t0 <= time.perf_counter() < t1:
                            counted[0] += chunk.count(b"\n\n")
            except (aiohttp.ClientError, OSError):
                counted[1] += 1

    workers = asyncio.gather(*(worker() for _ in range(spec.streams)))
    await asyncio.sleep(spec.warmup_s)
    before = bench.cpu_snapshot(spec.cpu_pids)
    await asyncio.sleep(spec.duration_s)
    after = bench.cpu_snapshot(spec.cpu_pids)
    await workers
    cpu_ms = {k: (after[k] - before[k]) * 1000 / bench.CLK_TCK for k in after}
    return {"events": counted[0], "errors": counted[1], "cpu_ms": cpu_ms}


async def _burst(session: aiohttp.ClientSession, spec: StreamSpec) -> dict[str, Any]:
    """``streams`` streams at once; RSS once all have their first chunk, and after."""
    pids = spec.cpu_pids["router"]
    before = rss_kb(pids)
    first: list[float] = []
    opened = asyncio.Event()
    hold = asyncio.Event()

    async def one() -> None:
        sent = time.perf_counter()
        async with session.post(spec.url, data=BODY) as resp:
            await resp.content.readany()
            first.append((time.perf_counter() - sent) * 1000)
            if len(first) == spec.streams:
                opened.set()
            await hold.wait()

    tasks = [asyncio.create_task(one()) for _ in range(spec.streams)]
    await asyncio.wait_for(opened.wait(), 60)
    await asyncio.sleep(0.5)
    held = rss_kb(pids)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(2.0)
    return {
        "ttfb_ms": bench.percentiles(first),
        "rss_kb": {"before": before, "open": held, "after": rss_kb(pids)},
    }


async def _drive(spec: StreamSpec) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        return await (_paced if spec.mode == "paced" else _burst)(session, spec)


def _load(fleet: bench.Fleet, spec: StreamSpec) -> dict[str, Any]:
    args = [bench.PYTHON, str(Path(__file__).resolve()), "--loadgen", json.dumps(asdict(spec))]
    proc = fleet.start("streams-loadgen", args, stdout=subprocess.PIPE)
    try:
        out, _ = proc.communicate(timeout=spec.warmup_s + spec.duration_s + 120)
    finally:
        fleet.stop(proc)
    if proc.returncode != 0:
        raise bench.BenchError(f"stream load generator failed with {proc.returncode}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


class _Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP collector that takes every export and keeps nothing."""

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


def start_pair(
    fleet: bench.Fleet, sim_port: int, label: str, sink: str | None = None
) -> dict[str, bench.Router]:
    """The forwarder and a 1-worker canary before the simulator; with ``sink``, the same
    canary with traces on too."""
    base = f"http://127.0.0.1:{sim_port}/v1"
    port = bench.free_port()
    args = [bench.PYTHON, str(Path(__file__).with_name("forwarder.py")), "--port", str(port)]
    proc = fleet.start(f"forwarder-{label}", [*args, "--upstream", base])
    url = f"http://127.0.0.1:{port}/healthz"
    bench.wait_ready(proc, "forwarder", url, fleet.log_path(f"forwarder-{label}"), lambda: True)
    forwarder = bench.Router("forwarder", proc, port, [proc.pid])
    routes = fleet.workdir / f"{label}.yaml"
    routes.write_text(
        f'backends:\n  up: {{base_url: "{base}"}}\n'
        "routes:\n  - name: all\n    weights: {up: 100}\n"
    )
    pair = {"forwarder": forwarder, "canary": bench.start_router(fleet, f"canary-{label}", routes)}
    if sink is not None:
        pair["canary-traced"] = _traced(fleet, routes, sink)
    return pair


def measure(fleet: bench.Fleet, rounds: int, quick: bool) -> dict[str, Any]:
    """Every row 5 figure, forwarder and canary, their runs alternating."""
    words = " ".join(["up"] * (REPLY_WORDS - 8))
    sim = fleet.start("sim-streams", [bench.PYTHON, "-m", "canary", "simulate", "--port",
                                      str(port := bench.free_port()), "--name", words])  # fmt: skip
    stats = f"http://127.0.0.1:{port}/_sim/stats"
    bench.wait_ready(sim, "simulator", stats, fleet.log_path("sim-streams"), lambda: True)
    sink = contextlib.ExitStack()
    targets = start_pair(fleet, port, "streams", sink.enter_context(otlp_sink()))
    out: dict[str, Any] = {name: {"chunk_us": [], "call_ms": []} for name in targets}
    duration = 1.5 if quick else 3.0
    for n in range(rounds):
        for name, router in targets.items():
            pids = {"router": router.pids, "upstream": [sim.pid]}
            bench.progress(f"5a/5b/5e round {n + 1}/{rounds}: {name}")
            if name != "canary-traced":
                bench.set_faults(port, chunk_delay_ms=CHUNK_DELAY_MS)
                spec = StreamSpec(router.url, "paced", duration_s=duration, cpu_pids=pids)
                r = _load(fleet, spec)
                out[name]["chunk_us"].append(r["cpu_ms"]["router"] * 1000 / max(1, r["events"]))
            bench.set_faults(port, chunk_delay_ms=0)
            plain = bench.LoadSpec(router.url, "closed", 1.0, duration, 32, cpu_pids=pids)
            out[name]["call_ms"].append(bench.run_load(fleet, plain)["cpu_ms_per_req"]["router"])
    fleet.stop(targets.pop("canary-traced").proc)
    sink.close()
    bench.set_faults(port, chunk_delay_ms=IDLE_DELAY_MS)
    for name, router in targets.items():
        bench.progress(f"5c/5d {BURST} streams at once: {name}")
        spec = StreamSpec(router.url, "burst", 0, 0, BURST, {"router": router.pids})
        out[name]["burst"] = _load(fleet, spec)
    for router in targets.values():
        fleet.stop(router.proc)
    fleet.stop(sim)
    return out


def render(figures: dict[str, Any]) -> str:
    """Rows 5 as a markdown table: forwarder, canary, canary / forwarder, target."""
    fwd, can, traced = figures["forwarder"], figures["canary"], figures.get("canary-traced")

    def per_stream(f: dict[str, Any], key: str) -> float:
        rss = f["burst"]["rss_kb"]
        return float(rss[key] - rss["before"]) / BURST

    rows = [
        ("5a", "CPU us per chunk, paced streams", statistics.median(fwd["chunk_us"]),
         statistics.median(can["chunk_us"]), 1.05),
        ("5b", "CPU ms per plain call, c=32", statistics.median(fwd["call_ms"]),
         statistics.median(can["call_ms"]), 1.3),
        ("5c", f"KB per open idle stream ({BURST})", per_stream(fwd, "open"),
         per_stream(can, "open"), 1.1),
        ("5c", "KB kept per stream after they closed", per_stream(fwd, "after"),
         per_stream(can, "after"), None),
        ("5d", f"first byte p50 ms, {BURST} at once", fwd["burst"]["ttfb_ms"]["p50"],
         can["burst"]["ttfb_ms"]["p50"], None),
        ("5d", f"first byte p99 ms, {BURST} at once", fwd["burst"]["ttfb_ms"]["p99"],
         can["burst"]["ttfb_ms"]["p99"], None),
    ]  # fmt: skip
    lines = [
        "| # | canary vs a bare forwarder | forwarder | canary | ratio | target |",
        "|---|---|---|---|---|---|",
    ]
    for key, what, f, c, target in rows:
        ratio = c / f if f > 0 else float("nan")
        goal = "-" if target is None else f"<= {target:g}x {'ok' if ratio <= target else 'MISSED'}"
        lines.append(f"| {key} | {what} | {f:.3f} | {c:.3f} | {ratio:.2f}x | {goal} |")
    if traced is not None:  # against canary with traces off, not against the forwarder
        off, on = statistics.median(can["call_ms"]), statistics.median(traced["call_ms"])
        ratio = on / off if off > 0 else float("nan")
        goal = f"<= 1.1x {'ok' if ratio <= 1.1 else 'MISSED'}"
        lines.append(
            f"| 5e | CPU ms per plain call, traces on (off -> on) | {off:.3f} | {on:.3f} "
            f"| {ratio:.2f}x | {goal} |"
        )
    runs = len(fwd["chunk_us"])
    lines.append(f"\n- rows 5a/5b: medians of {runs} alternating runs each.")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--loadgen":
        import uvloop

        print(json.dumps(uvloop.run(_drive(StreamSpec(**json.loads(sys.argv[2]))))))
