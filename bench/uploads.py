"""``make bench`` rows 6: a 200 MB upload through canary against a bare forwarder.

The raw floor (``bench/forwarder.py``, which streams a non-JSON body as canary does) and
canary sit in front of one ``canary simulate``, whose ``POST /v1/files`` counts the body
as it streams. One upload of ``UPLOAD_MB`` MB, ``application/octet-stream`` in 1 MiB
chunks from a generator (the client holds nothing either), is timed end to end, runs
alternating, and the router's RSS is sampled every 20 ms while it runs:

  6a upload throughput, MB/s (target: canary at least 0.8x the forwarder's)
  6b the router's RSS growth during the upload, MB (target: under 64 MB)
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from typing import Any

import aiohttp
import run as bench  # bench/run.py: processes, /proc, readiness
import streams  # bench/streams.py: the forwarder and canary in front of one simulator

UPLOAD_MB = 200
_CHUNK = 1 << 20


async def _upload(url: str) -> float:
    """Seconds to send ``UPLOAD_MB`` MB to ``url`` and have the simulator's answer."""
    block = b"\0" * _CHUNK

    async def body() -> Any:
        for _ in range(UPLOAD_MB):
            yield block

    headers = {"content-type": "application/octet-stream"}
    started = time.perf_counter()
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v1/files", data=body(), headers=headers) as r,
    ):
        answer = await r.json()
    elapsed = time.perf_counter() - started
    if r.status != 200 or answer.get("bytes") != UPLOAD_MB * _CHUNK:
        raise bench.BenchError(f"upload through {url} failed: {r.status} {answer}")
    return elapsed


def _peak_rss_growth(pids: list[int], run: Any) -> tuple[Any, float]:
    """Run ``run()`` while sampling the RSS of ``pids``; (its result, peak growth in MB)."""
    before = streams.rss_kb(pids)
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, streams.rss_kb(pids))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = run()
    finally:
        done.set()
        sampler.join(5)
    return result, (peak - before) / 1024


def measure(fleet: bench.Fleet, rounds: int) -> dict[str, Any]:
    """Rows 6 for the forwarder and canary, their runs alternating."""
    port = bench.free_port()
    sim = fleet.start("sim-uploads", [bench.PYTHON, "-m", "canary", "simulate", "--port",
                                      str(port), "--name", "uploads"])  # fmt: skip
    stats = f"http://127.0.0.1:{port}/_sim/stats"
    bench.wait_ready(sim, "simulator", stats, fleet.log_path("sim-uploads"), lambda: True)
    base = f"http://127.0.0.1:{port}/v1"
    routes = fleet.workdir / "uploads.yaml"
    routes.write_text(
        f'backends:\n  up: {{base_url: "{base}"}}\n'
        "routes:\n  - name: all\n    weights: {up: 100}\n"
    )
    targets = {
        "forwarder": streams.forwarder(fleet, "raw", base),
        "canary": bench.start_router(fleet, "canary-uploads", routes),
    }
    out: dict[str, Any] = {name: {"mb_s": [], "rss_mb": []} for name in targets}
    try:
        for n in range(rounds):
            for name, router in targets.items():
                bench.progress(f"6 upload round {n + 1}/{rounds}: {name}")
                base = f"http://127.0.0.1:{router.port}"
                seconds, grown = _peak_rss_growth(
                    router.pids, lambda url=base: asyncio.run(_upload(url))
                )
                out[name]["mb_s"].append(UPLOAD_MB / seconds)
                out[name]["rss_mb"].append(grown)
    finally:
        for router in targets.values():
            fleet.stop(router.proc)
        fleet.stop(sim)
    return out


def render(figures: dict[str, Any]) -> str:
    fwd, can = figures["forwarder"], figures["canary"]
    f_mb, c_mb = statistics.median(fwd["mb_s"]), statistics.median(can["mb_s"])
    f_rss, c_rss = max(fwd["rss_mb"]), max(can["rss_mb"])
    ratio = c_mb / f_mb if f_mb else float("nan")
    verdict = "ok" if ratio >= 0.8 else "MISSED"
    rss_verdict = "ok" if c_rss < 64 else "MISSED"
    return "\n".join(
        [
            f"| # | a {UPLOAD_MB} MB upload | forwarder | canary | ratio | target |",
            "|---|---|---|---|---|---|",
            f"| 6a | MB/s, end to end | {f_mb:.0f} | {c_mb:.0f} | {ratio:.2f}x "
            f"| >= 0.8x {verdict} |",
            f"| 6b | router RSS growth, MB (peak) | {f_rss:.1f} | {c_rss:.1f} | - "
            f"| < 64 MB {rss_verdict} |",
            f"\n- row 6a: medians of {len(fwd['mb_s'])} alternating uploads; 6b: the largest.",
        ]
    )
