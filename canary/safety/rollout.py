"""Progressive rollout (SPEC §10): the pure state machine, on an injected clock.

    progressing --step passed--> progressing (next step) ... --last step passed--> promoted
         |  \\--step passed, next step gated--> awaiting_promotion --promote--> progressing
         |--a check failed, or the circuit opened--> failed      (also from awaiting/paused)
         |--pause--> paused --resume--> (where it was; a progressing step starts over)
         \\--abort--> aborted                                  (from any state but failed)

A step passes only when it has lasted ``step_s``, carried ``step_min_requests`` calls to
the backend and every analysis check *passes*: a check without data holds the step, it
never passes it (Flagger #1011, #1098; Argo Rollouts #3850, #4479). The last step is
really applied and analysed before ``promoted`` (Flagger #189). At a gate, and while
paused, the circuit and the checks keep being watched (Flagger #1801). A change to the
backend's settings restarts the step's analysis (Flagger #30): ``epoch`` counts those
restarts, and the caller starts its step figures over whenever it moves.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from canary.config.model import Rollout, Route
from canary.safety.analysis import Check, Figures, judge
from canary.types import Clock

PROGRESSING, AWAITING, PAUSED = "progressing", "awaiting_promotion", "paused"
PROMOTED, FAILED, ABORTED = "promoted", "failed", "aborted"
STATES = (PROGRESSING, AWAITING, PAUSED, PROMOTED, FAILED, ABORTED)
LIVE = frozenset({PROGRESSING, AWAITING, PAUSED})  # still deciding
MAX_HISTORY = 50
Wall = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Refused(Exception):
    """A steering verb that does not apply in the current state (``reason`` says why)."""


@dataclass(frozen=True, slots=True)
class Transition:
    """One change of a rollout's state (or of its step): a history line, an event, a POST."""

    at: datetime
    backend: str
    from_state: str
    to_state: str
    step: int  # 1-based; 0 before the first step
    percent: float
    reason: str
    requests: int = 0  # the backend's calls over the step so far
    errors: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "backend": self.backend,
            "from": self.from_state,
            "to": self.to_state,
            "step": self.step,
            "percent": self.percent,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class Observation:
    """What the rollout is told on each tick: both sides over the step, and the circuit."""

    canary: Figures
    baseline: Figures
    circuit_open: bool = False
    circuit_reason: str = ""


@dataclass(slots=True)
class RolloutMachine:
    """One rollout of ``spec.backend``: its state, step and history (see the docstring)."""

    spec: Rollout
    clock: Clock
    wall: Wall = utc_now
    state: str = PROGRESSING
    index: int = 0  # into spec.steps; -1 before the first step (a gate on it)
    epoch: int = 0
    step_started: float = 0.0
    since: datetime = field(default_factory=utc_now)
    paused_from: str = PROGRESSING
    history: list[Transition] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    last: Observation | None = None
    previous_baseline: Figures | None = None  # for a step where the baseline has no calls

    def __post_init__(self) -> None:
        self.step_started = self.clock()
        self.since = self.wall()
        if self.spec.steps[0] in self.spec.gates:
            self.state, self.index = AWAITING, -1

    # --- what it is now ----------------------------------------------------------------

    @property
    def percent(self) -> float:
        """The backend's share of its routes now, in percent."""
        if self.state in (FAILED, ABORTED) or self.index < 0:
            return 0.0
        return self.spec.steps[self.index]

    @property
    def step(self) -> int:
        return self.index + 1

    def elapsed(self) -> float:
        return self.clock() - self.step_started

    # --- ticks --------------------------------------------------------------------------

    def observe(self, obs: Observation) -> Transition | None:
        """Judge the step so far; move on, fail or hold. Returns the transition, if any."""
        if self.state not in LIVE:
            return None  # the figures that decided it stay on show
        self.last = obs
        if obs.circuit_open:
            return self._go(FAILED, f"circuit opened: {obs.circuit_reason or 'rolled back'}")
        baseline = obs.baseline if obs.baseline.requests else self.previous_baseline
        self.checks = judge(self.spec.analysis, obs.canary, baseline)
        enough = obs.canary.requests >= self.spec.step_min_requests
        failed = [c for c in self.checks if c.verdict == "fail"]
        if enough and failed:
            return self._go(FAILED, "; ".join(c.words for c in failed))
        if self.state != PROGRESSING or self.index < 0:
            return None
        if self.elapsed() < self.spec.step_s or not enough:
            return None
        if any(c.verdict != "pass" for c in self.checks):
            return None  # no data is not a pass: hold (Argo Rollouts #3850)
        return self._passed(obs)

    def _passed(self, obs: Observation) -> Transition:
        if obs.baseline.requests:
            self.previous_baseline = obs.baseline
        done = f"step {self.step} ({self.percent:g}%) passed on {obs.canary.requests} calls"
        nxt = self.index + 1
        if nxt == len(self.spec.steps):
            return self._go(PROMOTED, done)
        if self.spec.steps[nxt] in self.spec.gates:
            return self._go(AWAITING, f"{done}; {self.spec.steps[nxt]:g}% waits for promote")
        self.index = nxt
        self._fresh()
        return self._go(PROGRESSING, done)

    # --- steering -----------------------------------------------------------------------

    def promote(self) -> Transition:
        if self.state != AWAITING:
            raise Refused(f"nothing to promote: the rollout is {self.state}, not at a gate")
        self.index += 1
        self._fresh()
        return self._go(PROGRESSING, f"promoted by the operator to {self.percent:g}%")

    def pause(self) -> Transition:
        if self.state not in (PROGRESSING, AWAITING):
            raise Refused(f"cannot pause: the rollout is {self.state}")
        self.paused_from = self.state
        return self._go(PAUSED, "paused by the operator")

    def resume(self) -> Transition:
        if self.state != PAUSED:
            raise Refused(f"cannot resume: the rollout is {self.state}, not paused")
        if self.paused_from == PROGRESSING:
            self._fresh()  # what happened while held is not this step's evidence
        return self._go(self.paused_from, "resumed by the operator")

    def abort(self) -> Transition:
        if self.state in (FAILED, ABORTED):
            raise Refused(f"nothing to abort: the rollout is {self.state} already")
        return self._go(ABORTED, "aborted by the operator")

    def restart_step(self) -> None:
        """The backend's settings changed: this step's analysis starts over."""
        if self.state in LIVE:
            self._fresh()

    # --- moves ----------------------------------------------------------------------------

    def _fresh(self) -> None:
        self.epoch += 1
        self.step_started = self.clock()
        self.checks = []

    def _go(self, to: str, reason: str) -> Transition:
        old, self.state = self.state, to
        self.since = self.wall()
        calls = self.last.canary if self.last else None
        t = Transition(
            self.since,
            self.spec.backend,
            old,
            to,
            self.step,
            self.percent,
            reason,
            calls.requests if calls else 0,
            calls.errors if calls else 0,
        )
        self.history.append(t)
        del self.history[:-MAX_HISTORY]
        return t

    # --- words ----------------------------------------------------------------------------

    def needs(self) -> str:
        """What the rollout waits for, in words."""
        name = self.spec.backend
        if self.state == AWAITING:
            nxt = self.spec.steps[self.index + 1]
            return f"canary rollout promote (next step: {nxt:g}%)"
        if self.state == PAUSED:
            return "canary rollout resume"
        if self.state == PROMOTED:
            return f"nothing: {name} holds {self.percent:g}%; write the weights into routes.yaml"
        if self.state in (FAILED, ABORTED):
            return f"nothing: {name} stays at 0% until the rollout block changes"
        return self._step_needs()

    def _step_needs(self) -> str:
        spec, out = self.spec, []
        left = spec.step_s - self.elapsed()
        if left > 0:
            out.append(f"{math.ceil(left)} s more")
        calls = self.last.canary.requests if self.last else 0
        if calls < spec.step_min_requests:
            out.append(f"{spec.step_min_requests - calls} more calls to {spec.backend}")
        out += [c.words for c in self.checks if c.verdict == "no_data"]
        if not self.checks:
            out.append("a first analysis")
        return "; ".join(out) or "nothing: the step passes on the next tick"

    # --- persistence ---------------------------------------------------------------------

    def export(self) -> dict[str, Any]:
        """What a restarted replica needs to resume (the step's analysis starts over)."""
        return {
            "backend": self.spec.backend,
            "fingerprint": fingerprint(self.spec),
            "state": self.state,
            "index": self.index,
            "paused_from": self.paused_from,
            "since": self.since.isoformat(),
            "history": [t.as_dict() for t in self.history],
        }

    def resume_from(self, saved: Mapping[str, Any]) -> bool:
        """Take a saved state of this same rollout; False (ignored) when it is another's."""
        if saved.get("fingerprint") != fingerprint(self.spec) or saved.get("state") not in STATES:
            return False
        index = saved.get("index")
        if not isinstance(index, int) or not -1 <= index < len(self.spec.steps):
            return False
        self.state, self.index = saved["state"], index
        self.paused_from = saved.get("paused_from", PROGRESSING)
        self.since = datetime.fromisoformat(saved["since"])
        self.history = [_transition(h) for h in saved.get("history", [])][-MAX_HISTORY:]
        self._fresh()
        return True


def _transition(h: Mapping[str, Any]) -> Transition:
    return Transition(
        datetime.fromisoformat(h["at"]),
        h["backend"],
        h["from"],
        h["to"],
        int(h["step"]),
        float(h["percent"]),
        h["reason"],
    )


def fingerprint(spec: Rollout) -> str:
    """Which rollout a saved state belongs to: a changed block is a new rollout."""
    # hashed: the webhook URLs it covers may carry tokens, and it lands in a state file
    return hashlib.sha256(repr(spec).encode() + repr(spec.webhooks).encode()).hexdigest()[:16]


def rollout_weights(route: Route, backend: str, percent: float) -> dict[str, float]:
    """The route's weights at ``percent`` for ``backend``: the baseline has the rest."""
    out = dict.fromkeys(route.weights, 0.0)
    out[route.baseline] = 100.0 - percent
    out[backend] = percent
    return out
