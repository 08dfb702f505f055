"""Automatic rollback: one circuit per canary backend, on pybreaker's state machine.

pybreaker gives the states (closed -> open -> half-open) and tells its listeners of every
change; canary decides the transitions itself, because pybreaker counts consecutive
failures on its own wall clock and its coroutine path is Tornado-only. Our rules, read
on the injected clock, all in ``Circuit._rule`` (pybreaker only makes the move, ``_go``,
and reports it, ``_changed``):

- closed: if the backend's window holds at least ``min_requests`` calls and its error
  rate exceeds ``max_error_rate``, open. The decision is made on the very call that
  crosses the line (no poll): a failure, or the call that fills the window to
  ``min_requests``; other successes only lower the rate and cost one comparison.
- open: routing skips the backend (its traffic goes to each route's baseline). After
  ``open_s`` (and only with ``auto_resume``), the next request that picks it turns the
  circuit half-open.
- half-open: exactly ``probe_requests`` calls are let through; a failed probe opens the
  circuit again, all of them good closes it with a fresh window. A probe whose client
  left gives its slot back.
- a change to routes.yaml that touches a backend (its settings or its weight anywhere)
  re-arms its circuit: closed, fresh window. With ``auto_resume: false`` this is how
  an operator resumes.

Every change is a frozen ``CircuitEvent``: logged as ``breaker.<state>`` and kept (the
last ``MAX_EVENTS``) for ``/status``. Readiness counters (calls and errors since the
circuit last closed or its config last changed) live here too.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pybreaker
import structlog

from canary.config.model import Config, Rollback, Route
from canary.safety.windows import Stats, Window
from canary.types import Clock

log = structlog.get_logger("canary.safety.breaker")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
_FROM_PYBREAKER = {
    pybreaker.STATE_CLOSED: CLOSED,
    pybreaker.STATE_OPEN: OPEN,
    pybreaker.STATE_HALF_OPEN: HALF_OPEN,
}
MAX_EVENTS = 100

# What happens to a circuit, as the rules (Circuit._rule) read it.
PICKED = "picked"  # routing chose the backend and asks admit()
SUCCEEDED, FAILED = "succeeded", "failed"  # a call to it ended
COUNTED = "counted"  # other replicas' calls reached its window
RECONFIGURED = "reconfigured"  # routes.yaml touched it


@dataclass(frozen=True, slots=True)
class CircuitEvent:
    """One state change of one backend's circuit, with the figures that caused it."""

    at: datetime
    backend: str
    from_state: str
    to_state: str
    reason: str
    requests: int
    errors: int
    remote: bool = False  # followed from another replica (not published again)


class _Listener(pybreaker.CircuitBreakerListener):
    def __init__(self, circuit: Circuit) -> None:
        self.circuit = circuit

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        old = _FROM_PYBREAKER.get(old_state.name if old_state else "", CLOSED)
        self.circuit._changed(old, _FROM_PYBREAKER[new_state.name])


class Circuit:
    """The rollback state of one backend."""

    def __init__(
        self,
        backend: str,
        rules: Rollback,
        window: Window,
        clock: Clock,
        publish: Callable[[CircuitEvent], None],
    ) -> None:
        self.backend = backend
        self.rules = rules
        self.window = window
        self._clock = clock
        self._publish = publish
        self._reason = ""
        self._remote = False
        self.opened_at = 0.0
        self.changed_at = datetime.now(UTC)
        # What the window's counts cover, for processes that exchange them: counted since
        # ``epoch`` (creation or the last fresh window); another's counts from before
        # ``reset_at`` (the last fresh window; 0: never) cannot be added to ours.
        self.epoch = self.changed_at.timestamp()
        self.reset_at = 0.0
        self.probes_granted = 0
        self.probes_ok = 0
        self.since_requests = 0
        self.since_errors = 0
        self.since_kinds: dict[str, int] = {}  # failed calls by kind, over the same span
        self._cb = pybreaker.CircuitBreaker(
            fail_max=2**31,  # never trips on its own: the error-rate rule below decides
            reset_timeout=rules.open_s,
            exclude=[asyncio.CancelledError],  # a cancelled request is not a backend failure
            listeners=[_Listener(self)],
            name=backend,
        )
        self.state = CLOSED

    # --- what the proxy calls -----------------------------------------------------------

    def admit(self) -> bool:
        """May a call go to this backend now? Asked only when routing picked it."""
        if self.state == CLOSED:
            return True
        self._step(PICKED)
        if self.state == HALF_OPEN and self.probes_granted < self.rules.probe_requests:
            self.probes_granted += 1
            return True
        return False

    def record(self, *, error: bool, kind: str | None = None) -> None:
        """A call to this backend finished (after ``window.finish``); apply the rules.

        ``kind`` names how a failed call failed, for the readiness reason."""
        if self.state == CLOSED:
            self.since_requests += 1
            if error:
                self.since_errors += 1
                if kind is not None:
                    self.since_kinds[kind] = self.since_kinds.get(kind, 0) + 1
        elif self.state == HALF_OPEN and not error:
            self.probes_ok += 1
        self._step(FAILED if error else SUCCEEDED)

    def check(self) -> None:
        """Other replicas' calls reached the window: apply the trip rule to the whole."""
        self._step(COUNTED)

    def abandon(self) -> None:
        """A call ended without a verdict (the client left): a probe gives its slot back."""
        if self.state == HALF_OPEN and self.probes_granted > self.probes_ok:
            self.probes_granted -= 1

    def follow(self, state: str, reason: str) -> None:
        """Another replica changed this circuit: take the same state, without publishing it."""
        if state == self.state or state not in (CLOSED, OPEN, HALF_OPEN):
            return
        self._remote = True
        try:
            self._go(state, reason)
        finally:
            self._remote = False

    def rearm(self, reason: str) -> None:
        """routes.yaml changed this backend: closed, fresh window, fresh readiness counts."""
        if self.state == CLOSED:  # nothing moves; the window starts afresh all the same
            self._fresh(datetime.now(UTC))
        else:
            self._step(RECONFIGURED, reason)

    # --- the rules: every transition, in one place ----------------------------------------

    def _step(self, on: str, note: str = "") -> None:
        """Move as the rules say for what just happened (``on``); pybreaker makes the move."""
        move = self._rule(on, note)
        if move is not None:
            self._go(*move)

    def _rule(self, on: str, note: str) -> tuple[str, str] | None:
        """The state ``on`` moves this circuit to and why, read top to bottom; None: stay."""
        state, rules, window = self.state, self.rules, self.window
        if on == RECONFIGURED:  # an operator's resume when auto_resume is false
            return CLOSED, note
        if state == CLOSED and on in (FAILED, SUCCEEDED, COUNTED):
            # The rate can cross the bar only on a failure, on the call that brings the window
            # up to min_requests, or with other replicas' calls; other successes lower it.
            filled = window.requests + window.remote_requests == rules.min_requests
            if on == SUCCEEDED and not filled:
                return None
            requests, errors = window.global_counts()
            if requests >= rules.min_requests and errors > rules.max_error_rate * requests:
                rate = f"{errors / requests:.3f} > {rules.max_error_rate:g}"
                return OPEN, f"error rate {rate} over {requests} requests"
        if state == OPEN and on == PICKED:
            resume_at = self.opened_at + rules.open_s
            if rules.auto_resume and self._clock() >= resume_at:
                return HALF_OPEN, f"open for {rules.open_s:g} s: probing"
        if state == HALF_OPEN and on == FAILED:
            return OPEN, f"probe failed ({self.probes_ok} of {rules.probe_requests} ok)"
        if state == HALF_OPEN and on == SUCCEEDED and self.probes_ok >= rules.probe_requests:
            return CLOSED, f"{self.probes_ok} probes succeeded"
        # open, a call ended: it started before the circuit opened; the window has it already
        return None

    # --- pybreaker: the state machine that makes each move and tells its listener -----------

    def _go(self, state: str, reason: str) -> None:
        self._reason = reason
        if state == OPEN:
            self._cb.open()
        elif state == HALF_OPEN:
            self._cb.half_open()
        else:
            self._cb.close()

    def _changed(self, old: str, new: str) -> None:
        """pybreaker's listener hook: every state change lands here."""
        requests, errors = self.window.counts()
        now = datetime.now(UTC)
        self.state = new
        self.changed_at = now
        if new == OPEN:
            self.opened_at = self._clock()
        elif new == HALF_OPEN:
            self.probes_granted = self.probes_ok = 0
        else:
            self._fresh(now)
        event = CircuitEvent(
            now, self.backend, old, new, self._reason, requests, errors, self._remote
        )
        log.warning(
            f"breaker.{new}",
            backend=self.backend,
            previous=old,
            reason=self._reason,
            requests=requests,
            errors=errors,
        )
        self._publish(event)

    def _fresh(self, now: datetime) -> None:
        self.window.reset()
        self.since_requests = self.since_errors = 0
        self.since_kinds = {}
        self.changed_at = now
        self.epoch = self.reset_at = now.timestamp()


class Breakers:
    """Every canary backend's circuit, re-armed from config changes; events kept for /status."""

    def __init__(self, stats: Stats, clock: Clock) -> None:
        self.stats = stats
        self.clock = clock
        self.circuits: dict[str, Circuit] = {}
        self.events: deque[CircuitEvent] = deque(maxlen=MAX_EVENTS)
        self.listeners: list[Callable[[CircuitEvent], None]] = [self.events.append]

    def _publish(self, event: CircuitEvent) -> None:
        for listener in self.listeners:
            listener(event)

    def get(self, backend: str) -> Circuit | None:
        return self.circuits.get(backend)

    def state(self, backend: str) -> str:
        circuit = self.circuits.get(backend)
        return circuit.state if circuit else CLOSED

    def apply(self, old: Config | None, new: Config) -> None:
        """A config was applied: new rules everywhere; re-arm what the change touched."""
        for name in sorted(_canaries(new)):
            circuit = self.circuits.get(name)
            if circuit is None:
                self.circuits[name] = Circuit(
                    name, new.rollback, self.stats.window(name), self.clock, self._publish
                )
                continue
            circuit.rules = new.rollback
            if old is not None and _touched(old, new, name):
                circuit.rearm(f"routes.yaml changed {name}")

    def effective(
        self, route: Route, weights: Mapping[str, float] | None = None
    ) -> dict[str, float]:
        """Where the route's traffic goes now, in the file's units: every non-closed canary
        at 0, its share moved to the baseline (90/10 with relay open reads 100/0).

        ``weights``: what a progressive rollout put there instead of the file's."""
        weights = route.weights if weights is None else weights
        out = dict(weights)
        for name, w in weights.items():
            if name != route.baseline and self.state(name) != CLOSED:
                out[name] = 0.0
                out[route.baseline] += w
        return out

    def __iter__(self) -> Iterator[Circuit]:
        return iter(self.circuits.values())


def _canaries(cfg: Config) -> set[str]:
    """Backends that are not the baseline of some route they have weight on."""
    return {name for r in cfg.routes for name in r.weights if name != r.baseline}


def _touched(old: Config, new: Config, name: str) -> bool:
    def weights(cfg: Config) -> dict[str, float]:
        return {r.name: r.weights[name] for r in cfg.routes if name in r.weights}

    return old.backends.get(name) != new.backends.get(name) or weights(old) != weights(new)
