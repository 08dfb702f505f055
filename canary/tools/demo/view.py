"""What the demo's screen shows: a ``View`` built from one ``/status`` document and the
client records, rendered with rich (live) or as one plain line per second (logs).

``view_model`` is a pure function, so tests feed it made-up documents.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from canary.tools.demo.story import BASELINE, CANARY, THRESHOLD, Record, timed_events

CIRCUIT_STYLES = {"closed": "bold green", "open": "bold red", "half_open": "bold yellow"}
PHASE_STYLES = {"healthy": "green", "relay broken": "red", "relay healed": "cyan"}


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
        *(_route_table(r) for r in view.routes),
        _backends_table(view.backends),
        client,
        Text("events", style="bold"),
        events,
        Text(f"verdict: {view.verdict}"),
    )


def _route_table(r: RouteView) -> Table:
    """A route's weights as configured and as in effect, and each backend's share."""
    title = f"route {r.name}: canary {r.canary_percentage:g}% of traffic"
    table = Table(title=title, title_justify="left")
    for column in ("backend", "configured weight", "effective weight", "share"):
        table.add_column(column, justify="left" if column == "backend" else "right")
    for name, weight in r.configured.items():
        effective = r.effective.get(name, 0)
        style = "bold red" if weight and not effective else ""
        share = f"{r.share.get(name, 0):.0f}%"
        table.add_row(name, _w(weight), Text(_w(effective), style), share)
    return table


def _backends_table(backends: Sequence[BackendView]) -> Table:
    """Each backend's circuit, and its window error rate as a bar against the threshold."""
    table = Table(
        title=f"backends: window error rate vs the {THRESHOLD:.0%} threshold (|)",
        title_justify="left",
    )
    columns = ("backend", "circuit", "requests", "errors", "rate", "0 .. 1", "p50 ms", "p99 ms")
    for column in columns:
        table.add_column(
            column, justify="right" if column in columns[2:5] + columns[6:] else "left"
        )
    for b in backends:
        bar_style = "red" if b.error_rate > THRESHOLD else "green"
        table.add_row(
            b.name,
            Text(b.circuit, CIRCUIT_STYLES.get(b.circuit, "dim")),
            str(b.requests),
            str(b.errors),
            f"{b.error_rate:.2f}",
            Text(error_bar(b.error_rate, THRESHOLD), bar_style),
            "-" if b.p50_ms is None else f"{b.p50_ms:.1f}",
            "-" if b.p99_ms is None else f"{b.p99_ms:.1f}",
        )
    return table


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
