"""``canary demo``: two simulators, the router and a steady load; watch a canary rolled back.

The story: traffic is split 50/50 between ``legacy`` (the baseline) and ``relay`` (the
canary). At ``--break-at`` the relay starts answering 503s; its error rate crosses the
threshold, its circuit opens and all traffic goes to legacy while fallback keeps every
client answered. At ``--heal-at`` the relay recovers; after ``open_s`` the circuit
probes, closes and the split returns. The view and the summary are pure functions of
``/status`` documents and client ``Record`` s; only ``run_demo`` touches processes.
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import httpx
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from canary.tools.console import projection_pending
from canary.tools.load import LoadOptions, run_load
from canary.tools.tally import Outcome

CANARY, BASELINE = "relay", "legacy"
REQUEST_TIMEOUT_S = 10.0
STARTUP_TIMEOUT_S = 20.0
CIRCUIT_STYLES = {"closed": "bold green", "open": "bold red", "half_open": "bold yellow"}
PHASE_STYLES = {"healthy": "green", "relay broken": "red", "relay healed": "cyan"}

ROUTES_YAML = """\
# written by `canary demo`
backends:
  legacy: {{base_url: "http://127.0.0.1:{legacy}/v1", timeout_s: {timeout:g}}}
  relay: {{base_url: "http://127.0.0.1:{relay}/v1", timeout_s: {timeout:g}}}
routes:
  - name: chat
    match: {{paths: [/v1/chat/completions]}}
    weights: {{legacy: 50, relay: 50}}
    baseline: legacy
    fallback: true
rollback:
  window_s: 10
  min_requests: 20
  max_error_rate: {threshold:g}
  open_s: {open_s:g}
  probe_requests: 10  # 5 probes pass a 50%-broken relay 1 time in 32; 10, 1 in 1024
  auto_resume: true
readiness: {{min_requests: 50, max_error_rate: 0.05}}
retry: {{max_attempts: 1}}  # one try per backend: each failed relay call is one fallback
pricing:  # USD per million tokens, as in the example routes.yaml
  legacy: {{gpt-4.1: {{input: 8.00, output: 8.00}}}}
  relay: {{gpt-4.1: {{input: 1.10, output: 1.10}}}}
"""
THRESHOLD = 0.2


def routes_yaml(legacy_port: int, relay_port: int, *, open_s: float = 8) -> str:
    """The demo's routes.yaml for simulators on these ports."""
    return ROUTES_YAML.format(
        legacy=legacy_port,
        relay=relay_port,
        timeout=REQUEST_TIMEOUT_S,
        threshold=THRESHOLD,
        open_s=open_s,
    )


# --- what the client saw, and what /status said ---------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    """One client request: when it was sent (s since start), its status (0: no answer)."""

    t: float
    status: int
    backend: str | None = None
    fallback: str | None = None

    @property
    def failed(self) -> bool:
        return self.status != 200

    @property
    def canary_failed(self) -> bool:
        """The canary failed this call: the client saw it, or fallback hid it."""
        return self.fallback == CANARY or (self.backend == CANARY and self.failed)


def event_time(at: object, wall_start: float) -> float | None:
    """An event's ``at`` (ISO 8601 or epoch seconds) as seconds since the demo started."""
    if isinstance(at, int | float) and not isinstance(at, bool):
        return float(at) - wall_start
    if isinstance(at, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(at).timestamp() - wall_start
    return None


def timed_events(status: Mapping[str, Any], wall_start: float) -> list[tuple[float, Any]]:
    """``/status.events`` oldest first, with their time in seconds since the demo started."""
    timed = [(event_time(e.get("at"), wall_start), e) for e in status.get("events") or ()]
    return sorted(((t, e) for t, e in timed if t is not None), key=lambda te: te[0])


@dataclass
class Timeline:
    """When the canary's circuit first opened, last opened and last closed again.

    Built from ``/status.events`` (exact times) and, where events are missing, from the
    polled circuit state (late by at most one poll).
    """

    opened_at: float | None = None
    last_opened_at: float | None = None
    closed_at: float | None = None
    circuit: str = "?"

    def observe(self, status: Mapping[str, Any], now: float, wall_start: float) -> None:
        """Fold in one ``/status`` read at ``now``; reading the same events twice is harmless."""
        events = [(t, e) for t, e in timed_events(status, wall_start) if e.get("backend") == CANARY]
        for t, event in events:
            if event.get("to") == "open":
                self._opened(t)
        circuit = (status.get("backends") or {}).get(CANARY, {}).get("circuit")
        if isinstance(circuit, str):
            self.circuit = circuit
        if circuit == "open":
            self._opened(now)
        if self.last_opened_at is None:
            return
        closes = [t for t, e in events if e.get("to") == "closed" and t > self.last_opened_at]
        if closes:
            self.closed_at = max(closes)
        elif circuit == "closed" and (
            self.closed_at is None or self.closed_at < self.last_opened_at
        ):
            self.closed_at = now

    def _opened(self, t: float) -> None:
        self.opened_at = t if self.opened_at is None else min(self.opened_at, t)
        self.last_opened_at = t if self.last_opened_at is None else max(self.last_opened_at, t)

    @property
    def closed_again(self) -> bool:
        """Opened, then closed, and (when /status says) still closed."""
        if self.last_opened_at is None or self.closed_at is None:
            return False
        return self.closed_at > self.last_opened_at and self.circuit in ("closed", "?")


def phase(elapsed: float, break_at: float, heal_at: float) -> str:
    if elapsed < break_at:
        return "healthy"
    return "relay broken" if elapsed < heal_at else "relay healed"


def error_bar(rate: float, threshold: float, width: int = 20) -> str:
    """``rate`` as a bar on a 0..1 scale, with ``|`` where the threshold is."""
    filled = min(width, round(rate * width))
    cells = ["█" if i < filled else "░" for i in range(width)]
    cells[min(width - 1, round(threshold * width))] = "|"
    return "".join(cells)


# --- the view model ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RouteView:
    name: str
    baseline: str
    configured: dict[str, float]
    effective: dict[str, float]

    @property
    def canary_percentage(self) -> float:
        """The effective non-baseline share, as ``/status`` computes it."""
        return round(100.0 - self.share.get(self.baseline, 100.0), 2)

    @property
    def share(self) -> dict[str, float]:
        """Each backend's share of the route's traffic now, in percent."""
        total = sum(self.effective.values())
        return {n: 100 * w / total if total else 0.0 for n, w in self.effective.items()}


@dataclass(frozen=True, slots=True)
class BackendView:
    name: str
    circuit: str
    requests: int
    errors: int
    error_rate: float
    p50_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True, slots=True)
class ClientView:
    sent: int
    ok: int
    failed: int
    fallbacks: int


@dataclass(frozen=True, slots=True)
class View:
    elapsed: float
    duration: float
    phase: str
    routes: tuple[RouteView, ...]
    backends: tuple[BackendView, ...]
    client: ClientView
    events: tuple[str, ...]
    verdict: str


def client_view(records: Sequence[Record]) -> ClientView:
    failed = sum(r.failed for r in records)
    fallbacks = sum(r.fallback is not None for r in records)
    return ClientView(len(records), len(records) - failed, failed, fallbacks)


def verdict(status: Mapping[str, Any]) -> str:
    migration = status.get("migration")
    if not isinstance(migration, dict):
        return "unknown (no migration in /status)"
    if migration.get("ready_for_full_migration"):
        return "ready for full migration"
    return f"not ready: {migration.get('reason') or 'no reason given'}"


def view_model(
    status: Mapping[str, Any],
    records: Sequence[Record],
    *,
    elapsed: float,
    duration: float,
    phase: str,
    wall_start: float,
    last_events: int = 5,
) -> View:
    """Everything the screen shows, from one ``/status`` document and the client records."""
    routes = tuple(
        RouteView(
            r.get("name", "?"),
            r.get("baseline", BASELINE),
            dict(r.get("configured") or {}),
            dict(r.get("effective") or r.get("configured") or {}),
        )
        for r in status.get("routes") or ()
    )
    backends = tuple(
        BackendView(
            name,
            b.get("circuit", "?"),
            int(b.get("requests", 0)),
            int(b.get("errors", 0)),
            float(b.get("error_rate", 0.0)),
            (b.get("latency_ms") or {}).get("p50"),
            (b.get("latency_ms") or {}).get("p99"),
        )
        for name, b in (status.get("backends") or {}).items()
    )
    events = tuple(
        f"{t:5.1f} s  {e.get('backend')} {e.get('from')} -> {e.get('to')}: {e.get('reason', '')}"
        for t, e in timed_events(status, wall_start)[-last_events:]
    )
    return View(
        elapsed, duration, phase, routes, backends, client_view(records), events, verdict(status)
    )


def _w(weight: float) -> str:
    return f"{weight:g}"


def render(view: View) -> RenderableType:
    """The live screen: phase, weights, circuits against the threshold, clients, events."""
    header = Text.assemble(
        ("canary demo  ", "bold"),
        f"{view.elapsed:5.1f} s of {view.duration:g} s   phase: ",
        (view.phase, f"bold {PHASE_STYLES.get(view.phase, '')}"),
    )
    routes = []
    for r in view.routes:
        title = f"route {r.name}: canary {r.canary_percentage:g}% of traffic"
        table = Table(title=title, title_justify="left")
        for column in ("backend", "configured weight", "effective weight", "share"):
            table.add_column(column, justify="left" if column == "backend" else "right")
        for name, weight in r.configured.items():
            effective = r.effective.get(name, 0)
            style = "bold red" if weight and not effective else ""
            share = f"{r.share.get(name, 0):.0f}%"
            table.add_row(name, _w(weight), Text(_w(effective), style), share)
        routes.append(table)
    backends = Table(
        title=f"backends: window error rate vs the {THRESHOLD:.0%} threshold (|)",
        title_justify="left",
    )
    columns = ("backend", "circuit", "requests", "errors", "rate", "0 .. 1", "p50 ms", "p99 ms")
    for column in columns:
        backends.add_column(
            column, justify="right" if column in columns[2:5] + columns[6:] else "left"
        )
    for b in view.backends:
        bar_style = "red" if b.error_rate > THRESHOLD else "green"
        backends.add_row(
            b.name,
            Text(b.circuit, CIRCUIT_STYLES.get(b.circuit, "dim")),
            str(b.requests),
            str(b.errors),
            f"{b.error_rate:.2f}",
            Text(error_bar(b.error_rate, THRESHOLD), bar_style),
            "-" if b.p50_ms is None else f"{b.p50_ms:.1f}",
            "-" if b.p99_ms is None else f"{b.p99_ms:.1f}",
        )
    c = view.client
    client = Text.assemble(
        ("clients  ", "bold"),
        f"{c.sent} sent  ",
        (f"{c.ok} ok  ", "green"),
        (f"{c.failed} failed", "bold red" if c.failed else "green"),
        f"  {c.fallbacks} answered by {BASELINE} after {CANARY} failed (fallback)",
    )
    events = Text("\n".join(view.events) or "(no circuit events yet)", style="dim")
    return Group(
        header,
        *routes,
        backends,
        client,
        Text("events", style="bold"),
        events,
        Text(f"verdict: {view.verdict}"),
    )


def plain_line(view: View) -> str:
    """One line per second for logs and captures (no terminal, or ``--no-live``)."""
    parts = [f"{view.elapsed:5.1f}s {view.phase:<12}"]
    for r in view.routes:
        weights = " ".join(f"{n} {_w(w)}" for n, w in r.effective.items())
        parts.append(f"{r.name}: {weights} (canary {r.canary_percentage:g}%)")
    for b in view.backends:
        parts.append(f"{b.name}: {b.circuit} {b.errors}/{b.requests} err {b.error_rate:.2f}")
    c = view.client
    parts.append(f"client: {c.sent} sent {c.failed} failed {c.fallbacks} fallbacks")
    return " | ".join(parts)


# --- the summary ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Summary:
    requests: int
    failures: int
    fallbacks: int
    canary_failed_before_rollback: int
    first_failure_at: float | None
    opened_at: float | None
    closed_at: float | None
    closed_again: bool
    verdict: str
    cost: str = "-"

    @property
    def ok(self) -> bool:
        """The story played out: rolled back, restored, and no client saw an error."""
        return self.opened_at is not None and self.closed_again and self.failures == 0


def summarize(records: Sequence[Record], timeline: Timeline, status: Mapping[str, Any]) -> Summary:
    opened = timeline.opened_at
    canary_failures = [r.t for r in records if r.canary_failed]
    before = [t for t in canary_failures if opened is None or t < opened]
    view = client_view(records)
    return Summary(
        requests=view.sent,
        failures=view.failed,
        fallbacks=view.fallbacks,
        canary_failed_before_rollback=len(before),
        first_failure_at=min(canary_failures, default=None),
        opened_at=opened,
        closed_at=timeline.closed_at,
        closed_again=timeline.closed_again,
        verdict=verdict(status),
        cost=cost_line(status),
    )


def cost_line(status: Mapping[str, Any]) -> str:
    """Tokens and cost per backend, and the projected savings, from the last /status."""
    backends = status.get("backends") or {}
    parts = []
    for name, b in backends.items():
        tokens = b.get("tokens") or {}
        usd = b.get("cost_usd")
        money = "no price" if usd is None else f"${usd:,.4f}"
        parts.append(
            f"{name} {tokens.get('input', 0):,} in / {tokens.get('output', 0):,} out {money}"
        )
    migration = status.get("migration") or {}
    savings = migration.get("projected_monthly_savings_usd")
    projected = "unknown" if savings is None else f"${savings:,.2f}"
    if savings is None and projection_pending(status.get("cost") or {}):
        projected = f"not yet ({migration.get('projection_basis')})"  # a demo is minutes short
    return f"{'; '.join(parts) or '-'}; projected monthly savings {projected}"


def format_summary(s: Summary) -> str:
    def at(t: float | None) -> str:
        return "-" if t is None else f"{t:.1f} s"

    if s.opened_at is None:
        rollback = "never (the circuit did not open)"
    elif s.first_failure_at is None:
        rollback = f"circuit open at {at(s.opened_at)} (no relay failure seen by the client)"
    else:
        took = s.opened_at - s.first_failure_at
        rollback = (
            f"{took:.1f} s (first relay failure at {at(s.first_failure_at)}, "
            f"circuit open at {at(s.opened_at)})"
        )
    closed = f"yes, at {at(s.closed_at)}" if s.closed_again else "no"
    result = "PASS" if s.ok else "FAIL"
    lines = [
        "canary demo summary",
        f"  client requests: {s.requests}",
        f"  client-visible failures: {s.failures}",
        f"  answered by {BASELINE} after {CANARY} failed (fallback): {s.fallbacks}",
        f"  {CANARY} calls failed before the rollback: {s.canary_failed_before_rollback}",
        f"  first failure to rollback: {rollback}",
        f"  circuit opened: {'yes' if s.opened_at is not None else 'no'}",
        f"  circuit closed again after healing: {closed}",
        f"  tokens and cost: {s.cost}",
        f"  final verdict: {s.verdict}",
        f"  result: {result}",
    ]
    return "\n".join(lines)


# --- processes and load ---------------------------------------------------------------

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


def run_demo(args: argparse.Namespace) -> int:
    """Tell the story; 0 when the circuit opened and closed again with no client failure."""
    live = not args.no_live and sys.stdout.isatty()
    opts = Options(
        args.duration, args.qps, args.break_at, args.heal_at, args.error_rate, live, args.open_s
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
    print(format_summary(summary), flush=True)
    return 0 if summary.ok else 1


def _run(opts: Options, tmp: Path) -> Summary | None:
    """Start two simulators and the router, wait until they answer, then drive the story."""
    port = {name: _free_port() for name in ("legacy", "relay", "router")}
    config = tmp / "routes.yaml"
    config.write_text(routes_yaml(port["legacy"], port["relay"], open_s=opts.open_s))
    urls = {name: f"http://127.0.0.1:{p}" for name, p in port.items()}
    commands = {
        name: ["simulate", "--port", str(port[name]), "--name", name] for name in (BASELINE, CANARY)
    }
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
        print(
            f"canary demo: router {urls['router']} in front of simulated legacy and relay; "
            f"{opts.qps:g} req/s for {opts.duration:g} s; the relay fails "
            f"{opts.error_rate:.0%} of calls from {opts.break_at:g} s, heals at {opts.heal_at:g} s",
            flush=True,
        )
        return asyncio.run(_Session(opts, urls["router"], urls["relay"]).run())


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

    async def run(self) -> Summary:
        """Until the duration ends or SIGINT/SIGTERM arrives; then the summary."""
        loop = asyncio.get_running_loop()
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in previous:
            loop.add_signal_handler(sig, self.stop.set)
        self.start, self.wall_start = time.monotonic(), time.time()
        try:
            async with httpx.AsyncClient(timeout=2.0) as control:
                send = asyncio.ensure_future(self._send())
                tasks = asyncio.gather(send, self._inject(control))
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
        return summarize(self.records, self.timeline, self.status)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def view(self) -> View:
        now, o = self.elapsed(), self.opts
        at = phase(now, o.break_at, o.heal_at)
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
