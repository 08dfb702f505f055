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

The load generator is this file with ``--loadgen SPEC`` in its own process.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import run as bench  # bench/run.py: processes, /proc, the plain-call load generator

REPLY_WORDS = 100
STREAMS = 32
BURST = 1000
CHUNK_DELAY_MS = 5.0
IDLE_DELAY_MS = 600_000.0  # after its first event a burst stream stays silent
REDIS_RATE = 100.0  # 5e: proxied calls per second, open loop
REDIS_CALLS = 1000  # 5e: calls counted with INFO commandstats
REDIS_RATIO = 1.15  # 5e: Redis mode / memory mode, CPU per plain call
REDIS_USEC_MAX = 20.0  # 5e: Redis command time per proxied call
BODY = json.dumps({**bench.PAYLOAD, "stream": True}).encode()
# As the SDKs send it: without it aiohttp says application/octet-stream, which both the
# floor and canary stream upstream as an upload rather than read as a chat request.
JSON = {"content-type": "application/json"}


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
                async with session.post(spec.url, data=BODY, headers=JSON) as resp:
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
        async with session.post(spec.url, data=BODY, headers=JSON) as resp:
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


FLOORS = {"raw": "forwarder.py", "starlette": "forwarder_starlette.py"}


def forwarder(fleet: bench.Fleet, name: str, base: str) -> bench.Router:
    """One of the floors (``FLOORS``) in front of the simulator at ``base``."""
    port = bench.free_port()
    script = str(Path(__file__).with_name(FLOORS[name]))
    proc = fleet.start(f"forwarder-{name}", [bench.PYTHON, script, "--port", str(port),
                                            "--upstream", base])  # fmt: skip
    url = f"http://127.0.0.1:{port}/healthz"
    bench.wait_ready(proc, name, url, fleet.log_path(f"forwarder-{name}"), lambda: True)
    return bench.Router(name, proc, port, [proc.pid])


def _start(fleet: bench.Fleet, sim_port: int, redis_port: int) -> dict[str, bench.Router]:
    """Both floors, a 1-worker canary and a 1-worker canary on Redis, before the simulator."""
    base = f"http://127.0.0.1:{sim_port}/v1"
    routes = fleet.workdir / "streams.yaml"
    routes.write_text(
        f'backends:\n  up: {{base_url: "{base}"}}\n'
        "routes:\n  - name: all\n    weights: {up: 100}\n"
    )
    shared = bench.write_redis_routes(fleet.workdir, sim_port, redis_port, "streams-redis.yaml")
    return {
        **{name: forwarder(fleet, name, base) for name in FLOORS},
        "canary": bench.start_router(fleet, "canary-streams", routes),
        "redis": bench.start_router(fleet, "canary-streams-redis", shared, state="redis"),
    }


def _round(fleet: bench.Fleet, targets: dict[str, bench.Router], sim: bench.Popen, port: int,
           duration: float, out: dict[str, Any]) -> None:  # fmt: skip
    """One run of 5a and 5b per target, in turn; Redis mode runs plain calls only."""
    for name, router in targets.items():
        pids = {"router": router.pids, "upstream": [sim.pid]}
        if name != "redis":
            bench.set_faults(port, chunk_delay_ms=CHUNK_DELAY_MS)
            spec = StreamSpec(router.url, "paced", duration_s=duration, cpu_pids=pids)
            r = _load(fleet, spec)
            out[name]["chunk_us"].append(r["cpu_ms"]["router"] * 1000 / max(1, r["events"]))
            bench.set_faults(port, chunk_delay_ms=0)
        plain = bench.LoadSpec(router.url, "closed", 1.0, duration, 32, cpu_pids=pids)
        out[name]["call_ms"].append(bench.run_load(fleet, plain)["cpu_ms_per_req"]["router"])


def commandstats(port: int, reset: bool = False) -> dict[str, dict[str, float]]:
    """``INFO commandstats`` of the redis-server on ``port``: calls and usec per command."""
    import redis

    with redis.Redis(port=port, socket_timeout=5) as client:
        if reset:
            client.config_resetstat()
        info: dict[str, dict[str, float]] = client.info("commandstats")
        return {k.removeprefix("cmdstat_"): v for k, v in info.items()}


def redis_time(fleet: bench.Fleet, router: bench.Router, redis_pid: int, redis_port: int,
               calls: int) -> dict[str, Any]:  # fmt: skip
    """5e: ``calls`` proxied plain calls at ``REDIS_RATE`` per second in Redis mode, and
    what redis-server spent on them (``INFO commandstats``, reset after a warm-up)."""
    warm = bench.LoadSpec(router.url, "open", 0.0, 1.0, 64, REDIS_RATE)
    bench.run_load(fleet, warm)
    commandstats(redis_port, reset=True)
    pids = {"router": router.pids, "redis": [redis_pid]}
    spec = bench.LoadSpec(router.url, "open", 0.0, calls / REDIS_RATE, 64, REDIS_RATE,
                          cpu_pids=pids)  # fmt: skip
    r = bench.run_load(fleet, spec)
    stats = commandstats(redis_port)
    # The router's own reads of /status (its readiness poll) are not in the window.
    return {"ok": r["ok"], "commands": stats, "cpu_ms_per_req": r["cpu_ms_per_req"]}


def measure(fleet: bench.Fleet, rounds: int, quick: bool) -> dict[str, Any]:
    """Every row 5 figure, the floors and canary, their runs alternating."""
    words = " ".join(["up"] * (REPLY_WORDS - 8))
    sim = fleet.start("sim-streams", [bench.PYTHON, "-m", "canary", "simulate", "--port",
                                      str(port := bench.free_port()), "--name", words])  # fmt: skip
    stats = f"http://127.0.0.1:{port}/_sim/stats"
    bench.wait_ready(sim, "simulator", stats, fleet.log_path("sim-streams"), lambda: True)
    redis, redis_port = bench.start_redis(fleet, "redis-streams")
    targets = _start(fleet, port, redis_port)
    out: dict[str, Any] = {name: {"chunk_us": [], "call_ms": []} for name in targets}
    duration = 1.5 if quick else 3.0
    for n in range(rounds):
        bench.progress(f"5a/5b round {n + 1}/{rounds}: {', '.join(targets)}")
        _round(fleet, targets, sim, port, duration, out)
    calls = 300 if quick else REDIS_CALLS
    bench.progress(f"5e {calls} calls at {REDIS_RATE:g}/s in Redis mode: INFO commandstats")
    out["redis"]["commands"] = redis_time(fleet, targets["redis"], redis.pid, redis_port, calls)
    fleet.stop(targets.pop("redis").proc)
    bench.set_faults(port, chunk_delay_ms=IDLE_DELAY_MS)
    for name, router in targets.items():
        bench.progress(f"5c/5d {BURST} streams at once: {name}")
        spec = StreamSpec(router.url, "burst", 0, 0, BURST, {"router": router.pids})
        out[name]["burst"] = _load(fleet, spec)
    for router in targets.values():
        fleet.stop(router.proc)
    fleet.stop(sim)
    fleet.stop(redis)
    return out


def _rows(figures: dict[str, Any]) -> list[tuple[str, str, str, float | None]]:
    """(key, what, figure name, target vs the raw floor) per row of the table."""
    return [
        ("5a", "CPU us per chunk, paced streams", "chunk_us", 1.05),
        ("5b", "CPU ms per plain call, c=32", "call_ms", 1.3),
        ("5c", f"KB per open idle stream ({BURST})", "open", 1.1),
        ("5c", "KB kept per stream after they closed", "after", None),
        ("5d", f"first byte p50 ms, {BURST} at once", "p50", None),
        ("5d", f"first byte p99 ms, {BURST} at once", "p99", None),
    ]


def _figure(f: dict[str, Any], name: str) -> float:
    if name in ("chunk_us", "call_ms"):
        return float(statistics.median(f[name]))
    if name in ("p50", "p99"):
        return float(f["burst"]["ttfb_ms"][name])
    rss = f["burst"]["rss_kb"]
    return float(rss[name] - rss["before"]) / BURST


def _goal(ratio: float, target: float | None) -> str:
    return "-" if target is None else f"<= {target:g}x {'ok' if ratio <= target else 'MISSED'}"


def render(figures: dict[str, Any]) -> str:
    """Rows 5 as a markdown table: both floors, canary, canary / each floor, the target."""
    raw, star, can = figures["raw"], figures["starlette"], figures["canary"]
    lines = [
        "| # | canary vs the floors | raw floor | starlette floor | canary | "
        "/ raw | / starlette | target (/ raw) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, what, name, target in _rows(figures):
        r, s, c = _figure(raw, name), _figure(star, name), _figure(can, name)
        ratio = c / r if r > 0 else float("nan")
        lines.append(
            f"| {key} | {what} | {r:.3f} | {s:.3f} | {c:.3f} | {ratio:.2f}x | "
            f"{c / s if s > 0 else float('nan'):.2f}x | {_goal(ratio, target)} |"
        )
    lines += _redis_lines(figures)
    runs = len(can["chunk_us"])
    lines.append(f"\n- rows 5a/5b/5e: medians of {runs} alternating runs each, in this run.")
    return "\n".join(lines)


def _redis_lines(figures: dict[str, Any]) -> list[str]:
    """5e: Redis mode against memory mode, and what Redis spent per proxied call."""
    shared, can = figures["redis"], figures["canary"]
    mem, red = _figure(can, "call_ms"), _figure(shared, "call_ms")
    ratio = red / mem if mem > 0 else float("nan")
    lines = [
        f"| 5e | CPU ms per plain call, Redis mode (/ canary) | - | - | {red:.3f} | "
        f"{ratio:.2f}x | - | <= {REDIS_RATIO:g}x {'ok' if ratio <= REDIS_RATIO else 'MISSED'} |"
    ]
    run = shared.get("commands")
    if not run or not run["ok"]:
        return lines
    calls = run["ok"]
    stats = run["commands"]
    usec = sum(v["usec"] for v in stats.values()) / calls
    count = sum(v["calls"] for v in stats.values()) / calls
    top = sorted(stats.items(), key=lambda kv: -kv[1]["usec"])[:4]
    detail = ", ".join(f"{k} {v['calls'] / calls:.2f}x {v['usec'] / calls:.1f} us" for k, v in top)
    server = run["cpu_ms_per_req"].get("redis") or 0.0
    ok = "ok" if usec <= REDIS_USEC_MAX else "MISSED"
    lines.append(
        f"| 5e | Redis us per call, {calls} calls at {REDIS_RATE:g}/s | - | - | {usec:.1f} | - "
        f"| - | <= {REDIS_USEC_MAX:g} us {ok} |"
    )
    ceiling = 1e6 / usec if usec > 0 else float("inf")
    lines.append(
        f"\n- 5e: {count:.2f} Redis commands per proxied call ({detail}); redis-server CPU "
        f"{server * 1000:.0f} us per call; one Redis core's ceiling at this command time: "
        f"~{ceiling:,.0f} proxied calls/s fleet-wide."
    )
    return lines


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--loadgen":
        import uvloop

        print(json.dumps(uvloop.run(_drive(StreamSpec(**json.loads(sys.argv[2]))))))
