"""The rollout state machine (SPEC §10) on a fake clock: every transition, and every hold."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from canary.config.model import Analysis, Rollout, Route
from canary.safety.analysis import Figures, StepTally, judge
from canary.safety.rollout import (
    ABORTED,
    AWAITING,
    FAILED,
    PAUSED,
    PROGRESSING,
    PROMOTED,
    Observation,
    Refused,
    RolloutMachine,
    rollout_weights,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def spec(**kw: Any) -> Rollout:
    base: dict[str, Any] = {
        "backend": "relay",
        "routes": ("chat",),
        "steps": (10.0, 50.0, 100.0),
        "step_s": 60.0,
        "step_min_requests": 100,
    }
    return Rollout(**{**base, **kw})


def machine(**kw: Any) -> tuple[RolloutMachine, FakeClock]:
    clock = FakeClock()
    return RolloutMachine(spec(**kw), clock, lambda: datetime(2026, 1, 1, tzinfo=UTC)), clock


GOOD = Observation(Figures(200, 0, 100.0), Figures(800, 0, 100.0))


def test_a_healthy_canary_climbs_every_step_then_is_promoted() -> None:
    """Each step passes after step_s with enough calls; the last one is applied, then promoted."""
    m, clock = machine()
    seen = []
    for _ in range(3):
        assert m.observe(GOOD) is None  # time not up yet
        clock.now += 60
        t = m.observe(GOOD)
        assert t is not None
        seen.append((t.to_state, t.percent))
    assert seen == [(PROGRESSING, 50.0), (PROGRESSING, 100.0), (PROMOTED, 100.0)]
    assert m.percent == 100.0 and m.needs().startswith("nothing: relay holds 100%")


def test_too_few_calls_hold_the_step_however_long_it_runs() -> None:
    """No traffic never advances a step (Flagger #1011); needs says how many calls are missing."""
    m, clock = machine()
    clock.now += 3600
    assert m.observe(Observation(Figures(40, 0, 100.0), Figures(400, 0, 100.0))) is None
    assert m.state == PROGRESSING and m.percent == 10.0
    assert "60 more calls to relay" in m.needs()


def test_missing_data_is_not_a_pass() -> None:
    """A check without data holds the step (Flagger #1098, Argo #3850/#4479)."""
    m, clock = machine(analysis=Analysis(max_model_mismatch_rate=0.0))
    clock.now += 60
    assert m.observe(GOOD) is None
    assert "model mismatch rate: no audited answers" in m.needs()
    no_latency = Observation(Figures(200, 0, None), Figures(0, 0, None))
    m2, clock2 = machine()
    clock2.now += 60
    assert m2.observe(no_latency) is None and m2.state == PROGRESSING


def test_a_failed_check_fails_the_rollout_at_once_and_puts_the_backend_at_zero() -> None:
    """An error rate over the bar fails the step before its time is up."""
    m, _ = machine()
    t = m.observe(Observation(Figures(200, 10, 100.0), Figures(800, 0, 100.0)))
    assert t is not None and t.to_state == FAILED and "error rate 0.050 > 0.02" in t.reason
    assert m.percent == 0.0
    assert m.observe(GOOD) is None and m.state == FAILED  # failed stays failed


def test_a_slow_canary_fails_on_the_latency_ratio() -> None:
    m, _ = machine()
    t = m.observe(Observation(Figures(200, 0, 400.0), Figures(800, 0, 50.0)))
    assert t is not None and t.to_state == FAILED and "latency ratio p95 8.000 > 1.5" in t.reason


def test_few_calls_do_not_fail_a_step_yet() -> None:
    """One early error in two calls is not a verdict: the bar is judged on enough calls."""
    m, _ = machine()
    assert m.observe(Observation(Figures(2, 1, 100.0), Figures(8, 0, 100.0))) is None
    assert m.state == PROGRESSING


def test_the_circuit_opening_fails_the_rollout() -> None:
    m, _ = machine()
    t = m.observe(Observation(Figures(5, 5), Figures(), circuit_open=True, circuit_reason="x"))
    assert t is not None and t.to_state == FAILED and t.reason == "circuit opened: x"


def test_a_gate_waits_for_promote_and_keeps_watching() -> None:
    """Before a gated step the rollout waits; a breach there still fails it (Flagger #1801)."""
    m, clock = machine(gates=(50.0,))
    clock.now += 60
    t = m.observe(GOOD)
    assert t is not None and t.to_state == AWAITING and m.percent == 10.0
    clock.now += 600
    assert m.observe(GOOD) is None and m.state == AWAITING
    assert m.needs() == "canary rollout promote (next step: 50%)"
    t = m.promote()
    assert t.to_state == PROGRESSING and m.percent == 50.0
    m2, clock2 = machine(gates=(50.0,))
    clock2.now += 60
    m2.observe(GOOD)
    t = m2.observe(Observation(Figures(300, 30, 100.0), Figures(800, 0, 100.0)))
    assert t is not None and t.to_state == FAILED


def test_a_gate_on_the_first_step_starts_at_zero() -> None:
    m, _ = machine(gates=(10.0,))
    assert m.state == AWAITING and m.percent == 0.0
    m.promote()
    assert m.percent == 10.0


def test_pause_holds_and_resume_starts_the_step_over() -> None:
    m, clock = machine()
    clock.now += 30
    assert m.pause().to_state == PAUSED
    clock.now += 600
    assert m.observe(GOOD) is None and m.state == PAUSED and m.needs() == "canary rollout resume"
    epoch = m.epoch
    assert m.resume().to_state == PROGRESSING and m.epoch == epoch + 1
    assert m.observe(GOOD) is None  # its 60 s run again from the resume
    clock.now += 60
    assert m.observe(GOOD) is not None and m.percent == 50.0


def test_a_circuit_opening_while_paused_still_fails() -> None:
    m, _ = machine()
    m.pause()
    t = m.observe(Observation(Figures(), Figures(), circuit_open=True))
    assert t is not None and t.to_state == FAILED


def test_abort_puts_the_backend_at_zero_from_any_live_state() -> None:
    for prepare in (lambda m: None, lambda m: m.pause()):
        m, _ = machine()
        prepare(m)
        assert m.abort().to_state == ABORTED and m.percent == 0.0
        with pytest.raises(Refused):
            m.abort()


def test_steering_that_does_not_apply_is_refused() -> None:
    m, _ = machine()
    with pytest.raises(Refused, match="not at a gate"):
        m.promote()
    with pytest.raises(Refused):
        m.resume()
    m.abort()
    with pytest.raises(Refused):
        m.pause()


def test_a_config_change_restarts_the_steps_analysis() -> None:
    """A change to the backend during a step starts its clock over (Flagger #30)."""
    m, clock = machine()
    clock.now += 59
    m.restart_step()
    clock.now += 2
    assert m.observe(GOOD) is None
    clock.now += 58
    assert m.observe(GOOD) is not None


def test_at_100_the_ratios_use_the_baselines_figures_from_the_step_before() -> None:
    m, clock = machine(steps=(50.0, 100.0))
    clock.now += 60
    assert m.observe(GOOD) is not None and m.percent == 100.0
    clock.now += 60
    slow = Observation(Figures(200, 0, 400.0), Figures(0, 0, None))
    t = m.observe(slow)
    assert t is not None and t.to_state == FAILED and "latency ratio" in t.reason


def test_a_saved_state_resumes_the_same_rollout_only() -> None:
    m, clock = machine()
    clock.now += 60
    m.observe(GOOD)
    saved = m.export()
    again, _ = machine()
    assert again.resume_from(saved) and again.percent == 50.0 and len(again.history) == 1
    other, _ = machine(steps=(5.0, 100.0))
    assert not other.resume_from(saved) and other.percent == 5.0
    assert "webhooks" not in str(saved)


def test_weights_give_the_baseline_the_rest() -> None:
    route = Route(
        "chat",
        match=None,
        weights={"legacy": 90, "relay": 10, "x": 5},
        baseline="legacy",
        sticky=None,
    )  # type: ignore[arg-type]
    assert rollout_weights(route, "relay", 25.0) == {"legacy": 75.0, "relay": 25.0, "x": 0.0}


def test_judge_skips_bars_set_to_null() -> None:
    checks = judge(Analysis(max_latency_ratio_p95=None), Figures(10, 0, 5.0), None)
    assert [c.name for c in checks] == ["error_rate"]


def test_the_tally_counts_each_completed_second_once() -> None:
    tally = StepTally(after=9)
    export = {"buckets": [[9, 5, 5, 1, 1, [3, 5]], [10, 2, 2, 1, 1, [3, 2]], [11, 1, 1, 0, 1]]}
    tally.add(export, now_second=11)
    tally.add(export, now_second=11)
    assert (tally.requests, tally.errors) == (2, 1)
    tally.add(export, now_second=12)
    assert tally.figures().requests == 3 and tally.figures().p95_ms is not None


def test_latency_ratios_read_both_sides_as_at_least_the_floor() -> None:
    """Sub-10 ms p95s are jitter, not a provider: 3 ms against 1 ms is not 3x slower."""
    checks = judge(Analysis(), Figures(100, 0, 3.0), Figures(100, 0, 1.0))
    latency = next(c for c in checks if c.name == "latency_ratio_p95")
    assert latency.value == 1.0 and latency.verdict == "pass"
    slow = judge(Analysis(), Figures(100, 0, 40.0), Figures(100, 0, 1.0))
    assert next(c for c in slow if c.name == "latency_ratio_p95").verdict == "fail"
