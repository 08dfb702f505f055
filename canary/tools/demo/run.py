"""The demo's processes and session: two simulators and the router as children, an
open-loop load through ``canary load``'s engine, the relay's faults on schedule, and the
screen. The only part of the demo that touches processes, sockets and signals.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
from rich.console import Console
from rich.live import Live

from canary.tools.demo.overbilling import RELAY_ARGS as BILLING_ARGS
from canary.tools.demo.overbilling import (
    OverbillingSummary,
    format_overbilling,
    summarize_overbilling,
    with_billing,
)
from canary.tools.demo.sessions import sessions_line
from canary.tools.demo.story import (
    BASELINE,
    CANARY,
    REQUEST_TIMEOUT_S,
    Record,
    Timeline,
    phase,
    routes_yaml,
)
from canary.tools.demo.substitution import (
    ANSWERED_AS,
    RELAY_ARGS,
    SubstitutionSummary,
    format_substitution,
    summarize_substitution,
)
from canary.tools.demo.summary import Summary, format_summary, summarize
from canary.tools.demo.view import View, plain_line, render, view_model
from canary.tools.load import LoadOptions, run_load
from canary.tools.tally import Outcome

STARTUP_TIMEOUT_S = 20.0
_Summaries = Summary | SubstitutionSummary | OverbillingSummary
POLL_S = 0.25
MAX_DURATION_S = 600


@dataclass(frozen=True, slots=True)
class Options:
    duration: float = 60
    qps: float = 20
    break_at: float = 10
    heal_at: float = 30
    error_rate: float = 0.5
    live: bool = True
    open_s: float = 8
    scenario: str = "rollback"  # or "substitution": the relay answers as another model

    def problem(self) -> str | None:
        """What is wrong with these options, if anything."""
        checks = [
            (0 < self.duration <= MAX_DURATION_S, f"--duration must be in (0, {MAX_DURATION_S}]"),
            (0 < self.qps <= 200, "--qps must be in (0, 200]"),
            (0 <= self.break_at < self.heal_at, "need 0 <= --break-at < --heal-at"),
            (0 < self.error_rate <= 1, "--error-rate must be in (0, 1]"),
            (self.open_s > 0, "--open-s must be > 0"),
        ]
        return next((message for ok, message in checks if not ok), None)


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--duration", type=float, default=60, help="seconds of load (default: 60)")
    add("--qps", type=float, default=20, help="client requests per second (default: 20)")
    add("--break-at", type=float, default=10, help="second the relay starts failing (default: 10)")
    add("--heal-at", type=float, default=30, help="second the relay recovers (default: 30)")
    add("--error-rate", type=float, default=0.5, help="share of relay calls failed with 503")
    add("--no-live", action="store_true", help="print one plain line per second instead")
    add("--open-s", type=float, default=8, help=argparse.SUPPRESS)  # rollback.open_s
    add(
        "--scenario",
        choices=("rollback", "substitution", "rollout", "overbilling", "forgery"),
        default="rollback",
        help="rollback: the relay fails and is rolled back; substitution: it never fails but "
        f"answers as {ANSWERED_AS}, and the verdict stays not ready; rollout: a progressive "
        "rollout climbs to promoted, then a broken relay is rolled back mid-way; "
        "overbilling: it bills 1.3x what its usage says, and the spend audit holds the "
        "verdict; forgery: it names the asked model but answers from another half the time, "
        "and only the same-model test sees it",
    )


def run_demo(args: argparse.Namespace) -> int:
    """Tell the story; 0 when the circuit opened and closed again with no client failure."""
    live = not args.no_live and sys.stdout.isatty()
    opts = Options(
        args.duration,
        args.qps,
        args.break_at,
        args.heal_at,
        args.error_rate,
        live,
        args.open_s,
        args.scenario,
    )
    if problem := opts.problem():
        print(f"canary demo: {problem}", file=sys.stderr)
        return 2
    # a SIGTERM before the event loop runs must still stop the children we started
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with tempfile.TemporaryDirectory(prefix="canary-demo-") as tmp:
            summary = _run(opts, Path(tmp))
    except KeyboardInterrupt:
        print("canary demo: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if summary is None:
        return 1
    if isinstance(summary, SubstitutionSummary):
        print(format_substitution(summary), flush=True)
    elif isinstance(summary, OverbillingSummary):
        print(format_overbilling(summary), flush=True)
    else:
        print(format_summary(summary), flush=True)
    return 0 if summary.ok else 1


def _run(opts: Options, tmp: Path) -> _Summaries | None:
    """Start two simulators and the router, wait until they answer, then drive the story."""
    port = {name: _free_port() for name in ("legacy", "relay", "router")}
    config = tmp / "routes.yaml"
    routes = routes_yaml(port["legacy"], port["relay"], open_s=opts.open_s)
    overbilling = opts.scenario == "overbilling"
    config.write_text(with_billing(routes) if overbilling else routes)
    urls = {name: f"http://127.0.0.1:{p}" for name, p in port.items()}
    commands = {
        name: ["simulate", "--port", str(port[name]), "--name", name] for name in (BASELINE, CANARY)
    }
    if opts.scenario == "substitution":
        commands[CANARY] += RELAY_ARGS
    if overbilling:
        commands[CANARY] += BILLING_ARGS
    commands["router"] = ["serve", "-c", str(config), "--port", str(port["router"])]
    commands["router"] += ["--no-watch", "--no-access-log"]
    ready = {"legacy": "/_sim/stats", "relay": "/_sim/stats", "router": "/readyz"}
    with open(tmp / "processes.log", "w+b") as log, contextlib.ExitStack() as children:
        procs = {name: children.enter_context(_child(cmd, log)) for name, cmd in commands.items()}
        try:
            with httpx.Client(timeout=1.0) as client:
                deadline = time.monotonic() + STARTUP_TIMEOUT_S
                for name, proc in procs.items():
                    _wait_ready(client, name, proc, urls[name] + ready[name], deadline)
        except RuntimeError as exc:
            log.seek(0)
            output = log.read().decode(errors="replace")[-4000:]
            print(f"canary demo: {exc}\n--- process output ---\n{output}", file=sys.stderr)
            return None
        story = (
            f"the relay never fails but answers every call as {ANSWERED_AS}"
            if opts.scenario == "substitution"
            else "the relay never fails but bills 1.3x what its usage says"
            if overbilling
            else f"the relay fails {opts.error_rate:.0%} of calls from {opts.break_at:g} s, "
            f"heals at {opts.heal_at:g} s"
        )
        print(
            f"canary demo: router {urls['router']} in front of simulated legacy and relay; "
            f"{opts.qps:g} req/s for {opts.duration:g} s; {story}",
            flush=True,
        )
        summary = asyncio.run(_Session(opts, urls["router"], urls["relay"]).run())
        if opts.scenario == "rollback" and summary is not None:
            print(asyncio.run(sessions_line(urls["router"])), flush=True)
        return summary


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def _child(args: list[str], log: IO[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m canary ARGS`` until the block ends; SIGTERM, then SIGKILL after 5 s."""
    cmd = [sys.executable, "-m", "canary", *args]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(
    client: httpx.Client, name: str, proc: subprocess.Popen[bytes], url: str, deadline: float
) -> None:
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} before it was ready")
        with contextlib.suppress(httpx.HTTPError):
            if client.get(url).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} was not ready at {url} within {STARTUP_TIMEOUT_S:g} s")
        time.sleep(0.05)


class _Session:
    """One run: open-loop load, the relay's faults on schedule, and the screen."""

    def __init__(self, opts: Options, router: str, relay: str) -> None:
        self.opts, self.router, self.relay = opts, router, relay
        self.records: list[Record] = []
        self.timeline = Timeline()
        self.status: dict[str, Any] = {}
        self.stop = asyncio.Event()
        self.start = self.wall_start = 0.0

    async def run(self) -> _Summaries:
        """Until the duration ends or SIGINT/SIGTERM arrives; then the summary."""
        loop = asyncio.get_running_loop()
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in previous:
            loop.add_signal_handler(sig, self.stop.set)
        self.start, self.wall_start = time.monotonic(), time.time()
        try:
            async with httpx.AsyncClient(timeout=2.0) as control:
                send = asyncio.ensure_future(self._send())
                inject = self.opts.scenario == "rollback"
                tasks = asyncio.gather(send, self._inject(control) if inject else asyncio.sleep(0))
                try:
                    with contextlib.ExitStack() as stack:
                        show = _screen(stack, self.opts.live)
                        # until the load's schedule (duration x qps requests) has run out
                        while not self.stop.is_set() and not send.done():
                            await self._poll(control)
                            show(self.view())
                            await self._sleep_until(self.elapsed() + POLL_S)
                finally:
                    self.stop.set()
                    await tasks  # the requests still in flight finish (or time out)
                await self._poll(control)
        finally:
            for sig, handler in previous.items():  # back to stopping the children on exit
                loop.remove_signal_handler(sig)
                signal.signal(sig, handler)
        if self.opts.scenario == "substitution":
            return summarize_substitution(self.records, self.status)
        if self.opts.scenario == "overbilling":
            return summarize_overbilling(self.records, self.status)
        return summarize(self.records, self.timeline, self.status)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def view(self) -> View:
        now, o = self.elapsed(), self.opts
        quiet = {"substitution": "substituting", "overbilling": "overbilling"}
        at = quiet.get(o.scenario) or phase(now, o.break_at, o.heal_at)
        return view_model(
            self.status,
            self.records,
            elapsed=now,
            duration=o.duration,
            phase=at,
            wall_start=self.wall_start,
        )

    async def _poll(self, control: httpx.AsyncClient) -> None:
        asked = self.elapsed()
        try:
            doc = (await control.get(f"{self.router}/status")).json()
        except (httpx.HTTPError, ValueError):
            return  # keep showing the last document rather than blanking the screen
        if isinstance(doc, dict):
            self.status = doc
            self.timeline.observe(doc, asked, self.wall_start)

    async def _sleep_until(self, at: float) -> bool:
        """Sleep until ``at`` seconds into the run, or until stopped; True when stopped."""
        delay = at - self.elapsed()
        if delay > 0 and not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), delay)
        return self.stop.is_set()

    async def _send(self) -> None:
        """Open loop (``canary load``'s engine): request ``i`` is due at ``i / qps``."""
        opts = LoadOptions(
            self.router,
            self.opts.qps,
            self.opts.duration,
            concurrency=1000,
            timeout_s=REQUEST_TIMEOUT_S,
            drain_s=REQUEST_TIMEOUT_S + 1,
        )

        def record(o: Outcome) -> None:  # status 0: no whole answer
            status = o.status if o.error is None else 0
            self.records.append(Record(o.scheduled, status, o.backend, o.fallback))

        await run_load(opts, on_result=record, stop=self.stop, clock=self.elapsed)

    async def _inject(self, control: httpx.AsyncClient) -> None:
        """Break the relay at ``break_at`` (503s), heal it at ``heal_at``."""
        broken = {"error_rate": self.opts.error_rate, "status_code": 503}
        for at, faults in ((self.opts.break_at, broken), (self.opts.heal_at, {"error_rate": 0})):
            if await self._sleep_until(at):
                return
            try:
                (await control.post(f"{self.relay}/_sim/faults", json=faults)).raise_for_status()
            except httpx.HTTPError as exc:
                print(f"canary demo: could not set the relay's faults: {exc}", file=sys.stderr)


def _screen(stack: contextlib.ExitStack, live: bool) -> Callable[[View], None]:
    """How a view reaches the user: a rich Live screen, or a plain line per second."""
    if live:
        screen = stack.enter_context(Live(console=Console(), refresh_per_second=4))
        return lambda view: screen.update(render(view))
    printed: set[str] = set()
    second = -1

    def plain(view: View) -> None:
        nonlocal second
        for event in view.events:
            if event not in printed:
                printed.add(event)
                print(f"event {event}", flush=True)
        if int(view.elapsed) > second:
            second = int(view.elapsed)
            print(plain_line(view), flush=True)

    return plain
