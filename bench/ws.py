"""``make bench`` row 5g: CPU per WebSocket frame, canary against a bare aiohttp relay.

Both sit in front of one ``canary simulate`` whose Realtime endpoint answers each
``response.create`` with ``REPLY_WORDS`` delta events (one frame each) around
response.created / output_text.done / response.done. The load generator (this file with
``--loadgen SPEC``, its own process) keeps ``SESSIONS`` sessions open, each sending
response.create and reading to response.done, back to back. The figure is the router's
CPU (``/proc``) over the window divided by the frames relayed in it (both ways), runs
alternating between the floor (``bench/ws_relay.py``) and canary.
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
import run as bench  # bench/run.py: processes, /proc, free ports

REPLY_WORDS = 100
SESSIONS = 16
CREATE = json.dumps({"type": "response.create"})


@dataclass(frozen=True)
class WsSpec:
    url: str
    warmup_s: float = 1.0
    duration_s: float = 3.0
    sessions: int = SESSIONS
    cpu_pids: dict[str, list[int]] = field(default_factory=dict)


async def _drive(spec: WsSpec) -> dict[str, Any]:
    t0 = time.perf_counter() + spec.warmup_s
    t1 = t0 + spec.duration_s
    counted = [0, 0]  # frames in the window (both ways), errors

    async def one(session: aiohttp.ClientSession) -> None:
        try:
            async with session.ws_connect(spec.url, max_msg_size=16 << 20) as ws:
                await ws.receive()  # session.created
                while time.perf_counter() < t1:
                    await ws.send_str(CREATE)
                    frames = 1
                    while True:
                        msg = await ws.receive()
                        if msg.type is not aiohttp.WSMsgType.TEXT:
                            raise aiohttp.ClientError(f"session ended: {msg.type}")
                        frames += 1
                        if '"response.done"' in msg.data[:40]:
                            break
                    if t0 <= time.perf_counter() < t1:
                        counted[0] += frames
        except (aiohttp.ClientError, OSError):
            counted[1] += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        workers = asyncio.gather(*(one(session) for _ in range(spec.sessions)))
        await asyncio.sleep(spec.warmup_s)
        before = bench.cpu_snapshot(spec.cpu_pids)
        await asyncio.sleep(spec.duration_s)
        after = bench.cpu_snapshot(spec.cpu_pids)
        await workers
    cpu_ms = {k: (after[k] - before[k]) * 1000 / bench.CLK_TCK for k in after}
    return {"frames": counted[0], "errors": counted[1], "cpu_ms": cpu_ms}


def _load(fleet: bench.Fleet, spec: WsSpec) -> dict[str, Any]:
    args = [bench.PYTHON, str(Path(__file__).resolve()), "--loadgen", json.dumps(asdict(spec))]
    proc = fleet.start("ws-loadgen", args, stdout=subprocess.PIPE)
    try:
        out, _ = proc.communicate(timeout=spec.warmup_s + spec.duration_s + 60)
    finally:
        fleet.stop(proc)
    if proc.returncode != 0:
        raise bench.BenchError(f"WebSocket load generator failed with {proc.returncode}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    if result["errors"] or not result["frames"]:
        raise bench.BenchError(f"WebSocket sessions failed: {result}")
    return result


def _start(fleet: bench.Fleet, sim_port: int) -> dict[str, tuple[bench.Popen, int, list[int]]]:
    """The bare relay and a 1-worker canary, both in front of the simulator."""
    base = f"http://127.0.0.1:{sim_port}/v1"
    port = bench.free_port()
    args = [bench.PYTHON, str(Path(__file__).with_name("ws_relay.py")), "--port", str(port)]
    proc = fleet.start("ws-relay", [*args, "--upstream", base.replace("http", "ws", 1)])
    url = f"http://127.0.0.1:{port}/healthz"
    bench.wait_ready(proc, "ws relay", url, fleet.log_path("ws-relay"), lambda: True)
    routes = fleet.workdir / "ws.yaml"
    routes.write_text(
        f'backends:\n  up: {{base_url: "{base}"}}\n'
        "routes:\n  - name: all\n    weights: {up: 100}\n"
    )
    canary = bench.start_router(fleet, "canary-ws", routes)
    return {"relay": (proc, port, [proc.pid]), "canary": (canary.proc, canary.port, canary.pids)}


def measure(fleet: bench.Fleet, rounds: int, quick: bool) -> dict[str, Any]:
    """Row 5g, the relay and canary, their runs alternating."""
    words = " ".join(["up"] * (REPLY_WORDS - 8))
    port = bench.free_port()
    sim = fleet.start("sim-ws", [bench.PYTHON, "-m", "canary", "simulate", "--port", str(port),
                                 "--name", words])  # fmt: skip
    stats = f"http://127.0.0.1:{port}/_sim/stats"
    bench.wait_ready(sim, "simulator", stats, fleet.log_path("sim-ws"), lambda: True)
    targets = _start(fleet, port)
    out: dict[str, Any] = {name: {"frame_us": []} for name in targets}
    for n in range(rounds):
        for name, (_, router_port, pids) in targets.items():
            bench.progress(f"5g round {n + 1}/{rounds}: {name}")
            url = f"ws://127.0.0.1:{router_port}/v1/realtime?model=gpt-realtime"
            spec = WsSpec(url, duration_s=1.5 if quick else 3.0, cpu_pids={"router": pids})
            r = _load(fleet, spec)
            out[name]["frame_us"].append(r["cpu_ms"]["router"] * 1000 / r["frames"])
            out[name].setdefault("frames", []).append(r["frames"])
    for proc, _, _ in targets.values():
        fleet.stop(proc)
    fleet.stop(sim)
    return out


def render(figures: dict[str, Any]) -> str:
    relay = statistics.median(figures["relay"]["frame_us"])
    canary = statistics.median(figures["canary"]["frame_us"])
    ratio = canary / relay if relay > 0 else float("nan")
    goal = f"<= 1.2x {'ok' if ratio <= 1.2 else 'MISSED'}"
    return "\n".join(
        [
            "| # | canary vs a bare aiohttp WebSocket relay | relay | canary | ratio | target |",
            "|---|---|---|---|---|---|",
            f"| 5g | CPU us per WebSocket frame relayed | {relay:.2f} | {canary:.2f} "
            f"| {ratio:.2f}x | {goal} |",
            f"\n- row 5g: medians of {len(figures['relay']['frame_us'])} alternating runs, "
            f"{SESSIONS} sessions, {REPLY_WORDS}-word replies.",
        ]
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--loadgen":
        import uvloop

        print(json.dumps(uvloop.run(_drive(WsSpec(**json.loads(sys.argv[2]))))))
