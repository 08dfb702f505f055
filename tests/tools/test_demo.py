"""``canary demo``: the view model and summary from made-up ``/status`` documents, and the
whole story end to end as a real process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from canary.config.loader import load_config
from canary.tools.cli import main
from canary.tools.demo import (
    Options,
    Record,
    Summary,
    Timeline,
    cost_line,
    error_bar,
    event_time,
    format_summary,
    phase,
    plain_line,
    render,
    routes_yaml,
    summarize,
    view_model,
)
from canary.tools.demo.overbilling import format_overbilling, summarize_overbilling, with_billing
from canary.tools.demo.substitution import format_substitution, summarize_substitution

ROOT = Path(__file__).resolve().parents[2]
WALL = 1_700_000_000.0  # the demo's start on the wall clock


def iso(seconds_in: float) -> str:
    return datetime.fromtimestamp(WALL + seconds_in, UTC).isoformat()


def event(at: float, frm: str, to: str, reason: str = "", backend: str = "relay") -> dict[str, Any]:
    return {"at": iso(at), "backend": backend, "from": frm, "to": to, "reason": reason}


def status(
    *,
    circuit: str | None = "closed",
    effective: dict[str, float] | None = None,
    events: list[dict[str, Any]] | None = None,
    migration: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A /status document shaped like SPEC §6; ``None`` leaves a field out."""
    relay: dict[str, Any] = {
        "requests": 39,
        "errors": 8,
        "error_rate": 0.2051,
        "latency_ms": {"p50": 1.24, "p95": 3.0, "p99": 5.76},
    }
    if circuit is not None:
        relay["circuit"] = circuit
    doc: dict[str, Any] = {
        "routes": [
            {
                "name": "chat",
                "baseline": "legacy",
                "configured": {"legacy": 50, "relay": 50},
                "effective": effective or {"legacy": 50, "relay": 50},
            }
        ],
        "backends": {
            "legacy": {"circuit": "closed", "requests": 77, "errors": 0, "error_rate": 0.0},
            "relay": relay,
        },
    }
    if events is not None:
        doc["events"] = events
    if migration is not None:
        doc["migration"] = migration
    return doc


OPENED = event(6.3, "closed", "open", "error rate 0.205 > 0.2 over 39 requests")
HALF_OPEN = event(14.5, "open", "half_open", "open for 8 s: probing")
CLOSED = event(15.7, "half_open", "closed", "5 probes succeeded")


def test_routes_yaml_is_a_valid_config(tmp_path: Path) -> None:
    """The demo's routes.yaml passes canary's own validation with the story's settings."""
    path = tmp_path / "routes.yaml"
    path.write_text(routes_yaml(9101, 9102, open_s=4))
    cfg = load_config(str(path))
    chat, realtime = cfg.routes  # realtime: the WebSocket sessions shown at the end
    for route in (chat, realtime):
        assert dict(route.weights) == {"legacy": 50, "relay": 50}
        assert route.baseline == "legacy" and route.fallback
    assert realtime.match.paths == frozenset({"/v1/realtime"})
    assert cfg.backends["relay"].base_url == "http://127.0.0.1:9102/v1"
    rb = cfg.rollback
    assert (rb.window_s, rb.min_requests, rb.max_error_rate) == (10, 20, 0.2)
    assert (rb.open_s, rb.probe_requests, rb.auto_resume) == (4, 10, True)
    assert (cfg.readiness.min_requests, cfg.readiness.max_error_rate) == (50, 0.05)


def test_phase_follows_the_schedule() -> None:
    """Healthy before the break, broken until the heal, healed after."""
    assert [phase(t, 10, 30) for t in (0, 9.9, 10, 29.9, 30, 60)] == [
        "healthy",
        "healthy",
        "relay broken",
        "relay broken",
        "relay healed",
        "relay healed",
    ]


def test_error_bar_marks_the_threshold() -> None:
    """The bar fills with the rate on a 0..1 scale and shows the threshold as a bar."""
    assert error_bar(0.0, 0.2, width=10) == "░░|░░░░░░░"
    assert error_bar(0.5, 0.2, width=10) == "██|██░░░░░"
    assert error_bar(1.5, 0.2, width=10) == "██|███████"


def test_a_canary_failure_is_a_fallback_or_a_visible_relay_error() -> None:
    """Fallbacks from relay and relay errors count against the canary; legacy errors do not."""
    assert Record(1, 200, "legacy", "relay").canary_failed
    assert Record(1, 503, "relay").canary_failed
    assert not Record(1, 200, "relay").canary_failed
    assert not Record(1, 502, "legacy").canary_failed
    assert Record(1, 0).failed and not Record(1, 0).canary_failed


def test_event_time_reads_iso_and_epoch_seconds() -> None:
    """Event times become seconds since the start; unreadable ones are None."""
    assert event_time(iso(6.5), WALL) == pytest.approx(6.5)
    assert event_time("2023-11-14T22:13:26.5+00:00", WALL) == pytest.approx(6.5)
    assert event_time(WALL + 2, WALL) == pytest.approx(2)
    assert event_time("soon", WALL) is None
    assert event_time(None, WALL) is None


def test_timeline_takes_exact_times_from_events() -> None:
    """Open and close times come from the events, however often they are read."""
    timeline = Timeline()
    for now in (7.0, 16.0, 20.0):
        timeline.observe(status(events=[CLOSED, HALF_OPEN, OPENED]), now, WALL)
    assert timeline.opened_at == pytest.approx(6.3)
    assert timeline.closed_at == pytest.approx(15.7)
    assert timeline.closed_again


def test_timeline_falls_back_to_the_polled_circuit() -> None:
    """Without events, the first poll that sees open or closed again dates the change."""
    timeline = Timeline()
    for now, circuit in ((5.0, "closed"), (7.0, "open"), (8.0, "open"), (15.0, "half_open")):
        timeline.observe(status(circuit=circuit), now, WALL)
    assert timeline.opened_at == 7.0 and not timeline.closed_again
    timeline.observe(status(circuit="closed"), 16.0, WALL)
    timeline.observe(status(circuit="closed"), 17.0, WALL)
    assert timeline.closed_at == 16.0 and timeline.closed_again


def test_a_circuit_open_again_has_not_closed_again() -> None:
    """A close followed by a new open leaves the story unfinished."""
    reopened = event(18.0, "closed", "open", "error rate 0.3 > 0.2 over 20 requests")
    timeline = Timeline()
    timeline.observe(status(circuit="open", events=[OPENED, CLOSED, reopened]), 19.0, WALL)
    assert timeline.opened_at == pytest.approx(6.3)
    assert not timeline.closed_again


def test_timeline_without_a_breaker_sees_nothing() -> None:
    """A /status without circuit or events never counts as opened or closed again."""
    timeline = Timeline()
    timeline.observe(status(circuit=None), 10.0, WALL)
    assert timeline.opened_at is None and not timeline.closed_again


def test_view_model_of_an_open_circuit() -> None:
    """Effective weights, shares, circuit, window figures, client counts, events, verdict."""
    doc = status(
        circuit="open",
        effective={"legacy": 50, "relay": 0},
        events=[HALF_OPEN, OPENED, event(1.0, "closed", "open", "x", backend="other")],
        migration={"ready_for_full_migration": False, "reason": "relay: circuit open"},
    )
    records = [Record(1, 200, "legacy"), Record(2, 200, "legacy", "relay"), Record(3, 0)]
    view = view_model(
        doc, records, elapsed=7.2, duration=60, phase="relay broken", wall_start=WALL, last_events=2
    )
    (route,) = view.routes
    assert route.effective == {"legacy": 50, "relay": 0}
    assert route.share == {"legacy": 100.0, "relay": 0.0} and route.canary_percentage == 0
    relay = next(b for b in view.backends if b.name == "relay")
    assert (relay.circuit, relay.requests, relay.errors) == ("open", 39, 8)
    assert (relay.p50_ms, relay.p99_ms) == (1.24, 5.76)
    assert (view.client.sent, view.client.ok, view.client.failed) == (3, 2, 1)
    assert view.client.fallbacks == 1
    assert view.events == (
        "  6.3 s  relay closed -> open: error rate 0.205 > 0.2 over 39 requests",
        " 14.5 s  relay open -> half_open: open for 8 s: probing",
    )
    assert view.verdict == "not ready: relay: circuit open"


def test_view_model_tolerates_a_sparse_status() -> None:
    """Missing circuit, events, migration and effective weights render as unknown, not crash."""
    doc = {"routes": [{"name": "chat", "configured": {"legacy": 90, "relay": 10}}]}
    doc["backends"] = {"relay": {}}
    view = view_model(doc, [], elapsed=0, duration=60, phase="healthy", wall_start=WALL)
    assert view.routes[0].effective == {"legacy": 90, "relay": 10}
    assert view.routes[0].canary_percentage == 10
    assert view.backends[0].circuit == "?" and view.backends[0].error_rate == 0
    assert view.events == () and view.verdict.startswith("unknown")
    assert view_model({}, [], elapsed=0, duration=1, phase="healthy", wall_start=WALL).routes == ()


def test_render_and_plain_line_show_the_rollback() -> None:
    """The live screen and the plain line both show the open circuit and the zero weight."""
    doc = status(circuit="open", effective={"legacy": 50, "relay": 0}, events=[OPENED])
    doc["migration"] = {"ready_for_full_migration": False, "reason": "relay: circuit open"}
    view = view_model(
        doc,
        [Record(1, 200, "legacy", "relay")],
        elapsed=7.2,
        duration=60,
        phase="relay broken",
        wall_start=WALL,
    )
    console = Console(record=True, width=120, color_system=None)
    console.print(render(view))
    screen = console.export_text()
    for text in ("relay broken", "route chat: canary 0% of traffic", "100%", "open", "0.21"):
        assert text in screen
    assert "error rate 0.205 > 0.2" in screen and "verdict: not ready" in screen
    line = plain_line(view)
    assert "relay broken" in line and "chat: legacy 50 relay 0 (canary 0%)" in line
    assert "relay: open 8/39 err 0.21" in line and "1 fallbacks" in line


def story(*extra: Record) -> list[Record]:
    """Client records of a good run: relay failures hidden by fallback before the rollback."""
    return [
        Record(1.0, 200, "relay"),
        Record(2.0, 200, "legacy"),
        Record(4.5, 200, "legacy", "relay"),
        Record(5.0, 200, "legacy", "relay"),
        Record(5.5, 200, "relay"),
        *extra,
    ]


def closed_timeline() -> Timeline:
    timeline = Timeline()
    timeline.observe(status(events=[OPENED, HALF_OPEN, CLOSED]), 20.0, WALL)
    return timeline


def test_summary_of_the_story_played_out() -> None:
    """Counts canary failures before the circuit opened only; the run passes."""
    late = Record(6.5, 200, "legacy", "relay")  # sent after the rollback, still in flight
    ready = {"ready_for_full_migration": True, "reason": "ok"}
    s = summarize(story(late), closed_timeline(), status(migration=ready))
    assert (s.requests, s.failures, s.fallbacks) == (6, 0, 3)
    assert s.canary_failed_before_rollback == 2
    assert s.first_failure_at == 4.5 and s.opened_at == pytest.approx(6.3)
    assert s.closed_again and s.verdict == "ready for full migration"
    assert s.ok


def test_a_client_visible_failure_fails_the_run() -> None:
    """One request the client saw fail is enough for exit code 1."""
    s = summarize(story(Record(5.8, 503, "relay")), closed_timeline(), status())
    assert s.failures == 1 and s.canary_failed_before_rollback == 3
    assert not s.ok


def test_a_circuit_that_never_opened_fails_the_run() -> None:
    """Without a rollback every relay failure counts, and the summary says it never opened."""
    s = summarize(story(Record(30.0, 200, "legacy", "relay")), Timeline(), status())
    assert s.canary_failed_before_rollback == 3 and s.opened_at is None
    assert not s.ok
    text = format_summary(s)
    assert "first failure to rollback: never (the circuit did not open)" in text
    assert "circuit opened: no" in text and "result: FAIL" in text


def test_format_summary_lines() -> None:
    """The summary names each figure on its own line."""
    s = Summary(360, 0, 8, 8, 4.5, 6.3, 15.7, True, "ready for full migration", "x")
    assert format_summary(s).splitlines() == [
        "canary demo summary",
        "  client requests: 360",
        "  client-visible failures: 0",
        "  answered by legacy after relay failed (fallback): 8",
        "  relay calls failed before the rollback: 8",
        "  first failure to rollback: 1.8 s (first relay failure at 4.5 s, circuit open at 6.3 s)",
        "  circuit opened: yes",
        "  circuit closed again after healing: yes, at 15.7 s",
        "  tokens and cost: x",
        "  final verdict: ready for full migration",
        "  result: PASS",
    ]


def test_cost_line_names_tokens_cost_and_unknowns() -> None:
    """The summary's cost line: per backend tokens and cost ("no price" when null), savings."""
    doc = {
        "backends": {
            "legacy": {"tokens": {"input": 1200, "output": 4800}, "cost_usd": 0.048},
            "relay": {"tokens": {"input": 10, "output": 40}, "cost_usd": None},
        },
        "migration": {"projected_monthly_savings_usd": 1234.5},
    }
    assert cost_line(doc) == (
        "legacy 1,200 in / 4,800 out $0.0480; relay 10 in / 40 out no price; "
        "projected monthly savings $1,234.50"
    )
    doc["migration"]["projected_monthly_savings_usd"] = None
    assert cost_line(doc).endswith("projected monthly savings unknown")
    basis = "360 calls over 23 s; a projection needs 10 min of traffic"
    doc["migration"]["projection_basis"] = basis
    doc["cost"] = {"projection_span_s": 23.4, "projection_needs_s": 600.0}
    assert cost_line(doc).endswith(f"projected monthly savings not yet ({basis})")


def test_options_are_bounded() -> None:
    """The run is bounded in time and rate, and the relay breaks before it heals."""
    assert Options().problem() is None
    assert Options(duration=0).problem() is not None
    assert Options(duration=3600).problem() is not None
    assert Options(qps=10_000).problem() is not None
    assert Options(break_at=30, heal_at=10).problem() is not None
    assert Options(error_rate=0).problem() is not None


def test_cli_refuses_bad_options_before_starting_anything(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``canary demo`` with a heal before the break exits 2 with the reason."""
    assert main(["demo", "--break-at", "30", "--heal-at", "10", "--no-live"]) == 2
    assert "--break-at < --heal-at" in capsys.readouterr().err


# --- end to end -----------------------------------------------------------------------

DEMO = [sys.executable, "-m", "canary", "demo", "--no-live"]


def _run_demo(args: list[str], *, interrupt_after: str | None = None) -> tuple[int, str]:
    """Run the demo in its own process group; whatever happens, nothing is left running."""
    lines: list[str] = []
    with subprocess.Popen(
        [*DEMO, *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            for line in proc.stdout:  # the demo ends itself; pytest's timeout is the backstop
                lines.append(line)
                if interrupt_after and line.lstrip().startswith(interrupt_after):
                    proc.send_signal(signal.SIGINT)
                    interrupt_after = None
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    with pytest.raises(ProcessLookupError):  # no simulator or router outlived the demo
        os.killpg(proc.pid, 0)
    return code, "".join(lines)


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_demo_rolls_the_canary_back_and_restores_it() -> None:
    """Relay breaks, the circuit opens with no client-visible failure, heals and closes."""
    code, out = _run_demo(["--duration", "24", "--qps", "15", "--break-at", "4", "--heal-at", "12"])
    assert code == 0, out
    assert "client-visible failures: 0\n" in out
    assert "circuit opened: yes\n" in out
    assert "circuit closed again after healing: yes" in out
    assert "result: PASS" in out
    assert "relay closed -> open" in out and "relay half_open -> closed" in out
    assert "WebSocket sessions: 4 Realtime sessions (" in out  # then a session is shown
    requests = int(out.split("client requests: ")[1].split()[0])
    assert requests == 24 * 15
    cost = out.split("tokens and cost: ")[1].splitlines()[0]
    assert "legacy " in cost and "relay " in cost and "no price" not in cost, cost
    # A demo runs seconds, a projection needs 10 minutes of traffic: no figure, the basis.
    projected = cost.split("projected monthly savings ")[1]
    assert re.fullmatch(
        r"not yet \(\d+ calls over \d+ s; a projection needs 10 min of traffic\)", projected
    ), cost


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_sigint_stops_the_demo_with_a_summary() -> None:
    """Ctrl-C ends the load early, still prints the summary and stops every child."""
    code, out = _run_demo(["--duration", "60"], interrupt_after="2.")
    assert code == 1, out
    assert "canary demo summary" in out and "circuit opened: no" in out
    requests = int(out.split("client requests: ")[1].split()[0])
    assert 0 < requests < 60 * 20


def test_substitution_summary_passes_only_when_the_audit_holds_the_verdict() -> None:
    """The substitution story passes when no call failed, the relay's answers were audited
    as another model, and the verdict is "not ready" for that reason."""
    records = [Record(0.1 * i, 200, "relay" if i % 2 else "legacy") for i in range(10)]
    reason = "relay: answers as gpt-4o-mini when asked for gpt-4.1 (5 of 5)"
    status = {
        "backends": {"relay": {"total_errors": 0}},
        "audit": {
            "relay": {
                "gpt-4.1": {
                    "match": 0,
                    "variant": 0,
                    "mismatch": 5,
                    "absent": 0,
                    "last_mismatch": "gpt-4o-mini",
                }
            }
        },
        "migration": {"ready_for_full_migration": False, "reason": reason},
    }
    caught = summarize_substitution(records, status)
    assert caught.ok and caught.mismatches == 5 and caught.audited == 5
    assert "5 of 5 answers named gpt-4o-mini" in format_substitution(caught)
    assert "result: PASS" in format_substitution(caught)
    fooled = {**status, "migration": {"ready_for_full_migration": True, "reason": "relay: ready"}}
    assert not summarize_substitution(records, fooled).ok


def test_overbilling_summary_passes_only_when_the_bill_holds_the_verdict() -> None:
    """The overbilling story passes when no call failed and the bill, read at ~1.3x the
    meter, kept the verdict at "not ready"; its routes read the relay's bill."""
    records = [Record(0.1 * i, 200, "relay" if i % 2 else "legacy") for i in range(10)]
    reason = "relay: billed $0.0338 for calls metered at $0.0260 (1.30x) over the last hour"
    status = {
        "billing": {"relay": {"ratio": 1.3, "billed_usd": 0.0338, "metered_usd": 0.026}},
        "migration": {"ready_for_full_migration": False, "reason": reason},
    }
    caught = summarize_overbilling(records, status)
    assert caught.ok and "$0.0338 for $0.0260 metered (1.30x)" in format_overbilling(caught)
    fooled = {**status, "migration": {"ready_for_full_migration": True, "reason": "ready"}}
    assert not summarize_overbilling(records, fooled).ok
    assert "billing: {api: new-api" in with_billing(routes_yaml(9101, 9102))


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_demo_substitution_is_caught_though_the_relay_never_fails() -> None:
    """The relay answers every call as gpt-4o-mini with no error: the audit catches it and
    the verdict stays not ready, with the reason in words."""
    code, out = _run_demo(["--scenario", "substitution", "--duration", "6", "--qps", "15"])
    assert code == 0, out
    assert "client-visible failures: 0\n" in out
    assert "with 0 errors" in out
    assert "not ready: relay: answers as gpt-4o-mini when asked for gpt-4.1 (" in out
    assert "result: PASS" in out
