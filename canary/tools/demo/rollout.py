"""``canary demo --scenario rollout``: a progressive rollout, twice, on simulators.

First a healthy relay climbs every step to ``promoted`` by itself. Then routes.yaml gets a
new rollout block (a new rollout), and once it is past its second step the relay starts
failing: the analysis fails the rollout and the relay goes to 0% while fallback keeps
every client answered. One plain line per second; exit 0 when both happened with no
client failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from canary.tools.demo.run import _child, _free_port, _wait_ready

ROUTES = """\
# written by `canary demo --scenario rollout`
backends:
  legacy: {{base_url: "http://127.0.0.1:{legacy}/v1", timeout_s: 10}}
  relay: {{base_url: "http://127.0.0.1:{relay}/v1", timeout_s: 10}}
routes:
  - name: chat
    weights: {{legacy: 100, relay: 0}}
    fallback: true
rollback: {{window_s: 10, min_requests: 30, max_error_rate: 0.2}}
retry: {{max_attempts: 1}}
rollout:
  backend: relay
  steps: {steps}
  step_s: 3
  step_min_requests: 20
  analysis: {{max_error_rate: 0.05, max_latency_ratio_p95: 3}}
"""
QPS, LIMIT_S = 40.0, 120.0


async def _load(router: str, stop: asyncio.Event, tally: dict[str, int]) -> None:
    """Open-loop chat calls at ``QPS``; a client failure is any answer but 200."""
    body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(base_url=router, timeout=10) as client:

        async def one() -> None:
            try:
                r = await client.post("/v1/chat/completions", json=body)
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            tally["calls"] += 1
            tally["failures"] += 0 if ok else 1

        tasks: set[asyncio.Task[None]] = set()
        while not stop.is_set():
            task = asyncio.get_running_loop().create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(1 / QPS)
        await asyncio.gather(*tasks)


def _line(t: float, r: dict[str, Any], tally: dict[str, int]) -> str:
    return (
        f"{t:5.1f}s  rollout {r['state']:<19} step {r['step']}/{len(r['steps'])} "
        f"relay {r['percent']:>3g}%  calls {tally['calls']:>5}  client failures "
        f"{tally['failures']}  needs: {r['needs'][:60]}"
    )


async def _story(router: str, relay: str, config: Path, ports: dict[str, int]) -> bool:
    stop, tally = asyncio.Event(), {"calls": 0, "failures": 0}
    load = asyncio.get_running_loop().create_task(_load(router, stop, tally))
    began, phase, outcome = time.monotonic(), 1, False
    async with httpx.AsyncClient(timeout=5) as http:
        while time.monotonic() - began < LIMIT_S:
            await asyncio.sleep(1.0)
            r = (await http.get(f"{router}/status")).json()["rollout"]
            print(_line(time.monotonic() - began, r, tally), flush=True)
            if phase == 1 and r["state"] == "promoted":
                print("-- promoted. A new rollout starts; the relay will break mid-way --")
                text = ROUTES.format(steps="[10, 50, 100]", **ports)
                await asyncio.to_thread(config.write_text, text)
                phase = 2
            elif phase == 2 and r["state"] == "progressing" and r["step"] >= 2:
                print("-- the relay now fails half of its calls --", flush=True)
                await http.post(f"{relay}/_sim/faults", json={"error_rate": 0.5})
                phase = 3
            elif phase == 3 and r["state"] == "failed":
                print(f"-- rolled back: {r['history'][0]['reason']} --")
                outcome = True
                break
    stop.set()
    await load
    print(f"client calls {tally['calls']}, client failures {tally['failures']}")
    return outcome and tally["failures"] == 0


def run_rollout_demo() -> int:
    """The story above; 0 when both rollouts ended as told with no client failure."""
    ports = {name: _free_port() for name in ("legacy", "relay", "router")}
    with tempfile.TemporaryDirectory(prefix="canary-demo-") as tmp:
        config = Path(tmp) / "routes.yaml"
        config.write_text(
            ROUTES.format(steps="[10, 50, 100]", **ports).replace("step_s: 3", "step_s: 2")
        )
        urls = {name: f"http://127.0.0.1:{p}" for name, p in ports.items()}
        sims = {n: ["simulate", "--port", str(ports[n]), "--name", n] for n in ("legacy", "relay")}
        router = ["serve", "-c", str(config), "--port", str(ports["router"]), "--no-access-log"]
        ready = {"legacy": "/_sim/stats", "relay": "/_sim/stats", "router": "/readyz"}
        with open(Path(tmp) / "processes.log", "w+b") as log, contextlib.ExitStack() as children:
            procs = {n: children.enter_context(_child(c, log)) for n, c in sims.items()}
            procs["router"] = children.enter_context(_child(router, log))
            with httpx.Client(timeout=1.0) as client:
                deadline = time.monotonic() + 20
                for name, proc in procs.items():
                    _wait_ready(client, name, proc, urls[name] + ready[name], deadline)
            print(f"canary demo: a progressive rollout of relay at {QPS:g} req/s", flush=True)
            ok = asyncio.run(_story(urls["router"], urls["relay"], config, ports))
    print("demo: OK" if ok else "demo: the story did not end as told", flush=True)
    return 0 if ok else 1
