"""Row 5f counted in instructions: what tracing adds to a plain call, free of machine noise.

On a shared machine row 5f's CPU figures spread wider than its 1.1x target. This counts
instructions instead (valgrind's cachegrind, no cache simulation): `canary serve` runs
under valgrind against a `canary simulate` upstream, answers `--small` plain calls, stops
(SIGTERM, a clean exit), and runs again for `--large` calls; the difference over the
difference in calls is the instructions per call, start-up and shutdown (the last span
flush included) cancelling out. Traces on: `OTEL_EXPORTER_OTLP_ENDPOINT` points at the
same in-process sink as row 5f. Needs `valgrind`; takes about a minute and a half.
`make bench` runs it after row 5f (not with `--quick`, and not without valgrind).

    .venv/bin/python bench/instructions.py [--small 100] [--large 1100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import run as bench  # bench/run.py: free ports, the interpreter, the repository root
import traces  # bench/traces.py: the OTLP sink of row 5f

BODY = b'{"model":"gpt-4.1","messages":[{"role":"user","content":"' + b"hello " * 40 + b'"}]}'
IN_FLIGHT = 16


async def _load(port: int, calls: int) -> None:
    """Wait for the router (slow under valgrind), then ``calls`` plain calls, 16 in flight."""
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 120
        while True:
            try:
                async with session.get(f"{url}/healthz") as r:
                    if r.status < 500:
                        break
            except aiohttp.ClientError:
                if time.monotonic() > deadline:
                    raise SystemExit("instructions: the router did not start in 120 s") from None
            await asyncio.sleep(0.2)
        left = [calls]

        async def worker() -> None:
            while left[0] > 0:
                left[0] -= 1
                headers = {"content-type": "application/json"}
                async with session.post(f"{url}/v1/chat/completions", data=BODY,
                                        headers=headers) as r:  # fmt: skip
                    await r.read()
                    assert r.status == 200, r.status

        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))


def _count(routes: Path, calls: int, env: dict[str, str], log: Path) -> int:
    """Instructions of one router process that answered ``calls`` calls."""
    port = bench.free_port()
    command = ["valgrind", "--tool=cachegrind", "--cache-sim=no",
               "--cachegrind-out-file=/dev/null", bench.PYTHON, "-m", "canary", "serve",
               "--config", str(routes), "--port", str(port)]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=bench.ROOT, env=env, stdout=out, stderr=out)
        try:
            asyncio.run(_load(port, calls))
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # a clean exit: valgrind prints its count
            proc.wait(timeout=120)
    found = re.search(r"I\s+refs:\s+([\d,]+)", log.read_text())
    if found is None:
        raise SystemExit(f"instructions: no count in {log}")
    return int(found.group(1).replace(",", ""))


def measure(fleet: bench.Fleet, small: int = 100, large: int = 1100) -> dict[str, float] | None:
    """Instructions per plain call, traces off and on; None without valgrind."""
    if shutil.which("valgrind") is None:
        return None
    with traces.otlp_sink() as sink:
        sim, routes = traces.upstream(fleet, "instructions")
        try:
            plain = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
            traced = {**plain, "OTEL_EXPORTER_OTLP_ENDPOINT": sink}
            per_call = {}
            for name, env in (("off", plain), ("on", traced)):
                counts = []
                for calls in (small, large):
                    bench.progress(f"5f in instructions: traces {name}, {calls} calls")
                    log = fleet.workdir / f"instructions-{name}-{calls}.log"
                    counts.append(_count(routes, calls, env, log))
                per_call[name] = (counts[1] - counts[0]) / (large - small)
        finally:
            fleet.stop(sim)
    return per_call


def render(per_call: dict[str, float] | None) -> str:
    head = "| # | traces | off | on | ratio | target |\n|---|---|---|---|---|---|\n"
    if per_call is None:
        return head + "| 5f | instructions per plain call | | | | skipped: no valgrind |"
    off, on = per_call["off"], per_call["on"]
    verdict = "ok" if on / off <= traces.TARGET else "MISSED"
    what = f"instructions per plain call, {IN_FLIGHT} in flight"
    figures = f"{off / 1000:.1f}k | {on / 1000:.1f}k | {on / off:.3f}x"
    return head + f"| 5f | {what} | {figures} | <= {traces.TARGET:g}x {verdict} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--large", type=int, default=1100)
    args = parser.parse_args()
    with bench.fleet_in_tempdir() as fleet:
        per_call = measure(fleet, args.small, args.large)
    if per_call is None:
        print("instructions: needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 1
    print(render(per_call))
    return 0


if __name__ == "__main__":
    sys.exit(main())
