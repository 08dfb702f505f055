"""The rollout controller: config in, weights out, on a control-plane tick (SPEC §10).

``Rollouts`` follows the config store (a block that appears or changes starts a rollout,
one removed ends it, a change to the backend's settings restarts the step's analysis),
ticks the ``RolloutMachine`` with the step's figures, and publishes the weights it wants in
``overrides`` (route name -> weights), the one dict the proxy reads when it picks a
backend. Transitions go to ``listeners`` (log, state file, webhooks) and ``events``.

Figures come from each backend's window (``StepTally``), the backend's circuit from
``Breakers``: nothing here runs on the request path. The baseline compared is that of the
rollout's first route. Time to first byte comes from the streams' own windows
(``Stats.first_byte``), the mismatch rate from the model audit; ``extra`` can add more.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import structlog

from canary.config.model import Config, Rollout, Route
from canary.safety.analysis import MIN_SHADOW_PAIRS, Figures, StepTally
from canary.safety.breaker import CLOSED, Breakers
from canary.safety.rollout import (
    MAX_HISTORY,
    Observation,
    Refused,
    RolloutMachine,
    Transition,
    Wall,
    rollout_weights,
    utc_now,
)
from canary.safety.windows import Stats
from canary.types import Clock

log = structlog.get_logger("canary.safety.rollout")

TICK_S = 0.25
VERBS = ("promote", "pause", "resume", "abort")
Extra = Callable[[str, Figures], Figures]  # backend, figures -> figures with more filled in


class Steering(Protocol):
    """A steering call made where the rollout is decided (``canary.fleet.rollout``)."""

    async def steer(self, verb: str) -> Transition: ...


class Rollouts:
    """The one rollout of the config (if any); see the module docstring."""

    def __init__(self, stats: Stats, breakers: Breakers, clock: Clock, wall: Wall = utc_now):
        self.stats = stats
        self.breakers = breakers
        self.clock = clock
        self.wall = wall
        self.machine: RolloutMachine | None = None
        self.routes: tuple[Route, ...] = ()
        self.overrides: dict[str, dict[str, float]] = {}  # read by the proxy's pick
        self.listeners: list[Callable[[Transition], None]] = [self._log]
        self.events: deque[Transition] = deque(maxlen=MAX_HISTORY)
        self.extra: Extra = lambda _backend, f: f
        # (answers audited, mismatches) of a backend so far: the model audit, set by serve
        self.audit: Callable[[str], tuple[int, int]] | None = None
        self._audit_base = (0, 0)
        # (pairs, share whose prompt tokens differ) of a backend's shadow copies since a
        # clock time: the shadow comparison, set by serve
        self.shadow: Callable[[str, float], tuple[int, float] | None] | None = None
        self._step_began = 0.0
        self.leading = True  # False: another replica decides, this one follows
        self.shared: Steering | None = None  # set while replicas share the rollout
        self.persisted = "nowhere: a restart starts the rollout over"  # for /status
        self._epoch = -1
        self._tallies: dict[str, StepTally] = {}
        self._ttfb: dict[str, StepTally] = {}  # streams' time to first byte, over the step

    # --- config ------------------------------------------------------------------------

    def on_config(self, old: Config | None, new: Config) -> None:
        """A config applied: start, replace, end or restart the rollout (SPEC §10)."""
        spec = new.rollout
        m = self.machine
        if spec is None:
            self.machine = None
        elif m is None or m.spec != spec:
            self.machine = RolloutMachine(spec, self.clock, self.wall)
            log.info("rollout.started", backend=spec.backend, steps=list(spec.steps))
        elif old is not None and old.backends.get(spec.backend) != new.backends.get(spec.backend):
            m.restart_step()
            log.info("rollout.step_restarted", backend=spec.backend, reason="settings changed")
        self.routes = tuple(r for r in new.routes if spec is not None and r.name in spec.routes)
        self._publish_weights()

    # --- ticks -------------------------------------------------------------------------

    def tick(self) -> Transition | None:
        """Read the step's figures, judge them; move the weights if the rollout moved."""
        m = self.machine
        if m is None or not self.routes:
            return None
        obs = self._observe(m)
        if not self.leading:
            return None
        t = m.observe(obs)
        if t is not None:
            self._moved(t)
        return t

    def steer(self, verb: str) -> Transition:
        """``promote``, ``pause``, ``resume`` or ``abort``; ``Refused`` when it cannot apply."""
        m = self.machine
        if m is None:
            raise Refused("no rollout: routes.yaml has no rollout block")
        if verb not in VERBS:
            raise Refused(f"unknown verb {verb!r} (one of: {', '.join(VERBS)})")
        t: Transition = getattr(m, verb)()
        self._moved(t)
        return t

    async def steer_shared(self, verb: str) -> Transition:
        """``steer``, through the replica that decides when state is shared (``shared``)."""
        if self.shared is not None:
            return await self.shared.steer(verb)
        return self.steer(verb)

    def _observe(self, m: RolloutMachine) -> Observation:
        if m.epoch != self._epoch:  # a new step, or its analysis starts over
            self._epoch = m.epoch
            second = int(self.clock())
            self._tallies = {name: StepTally(second) for name in self._sides(m.spec)}
            self._ttfb = {name: StepTally(second) for name in self._sides(m.spec)}
            self._audit_base = self.audit(m.spec.backend) if self.audit else (0, 0)
            self._step_began = self.clock()
        now = int(self.clock())
        figures = []
        for name, tally in self._tallies.items():
            tally.add(self.stats.window(name).export(), now)
            figures.append(self.extra(name, self._with_ttfb(name, tally.figures(), now)))
        state = self.breakers.state(m.spec.backend)
        canary = self._shadowed(m.spec.backend, self._audited(m.spec.backend, figures[0]))
        return Observation(canary, figures[1], state != CLOSED, self._circuit_reason())

    def _with_ttfb(self, backend: str, f: Figures, now: int) -> Figures:
        """The step's p95 time to first byte of the backend's streams (None: no stream)."""
        window, tally = self.stats.ttfb(backend), self._ttfb[backend]
        if window is not None:
            tally.add(window.export(), now)
        return dataclasses.replace(f, ttfb_p95_ms=tally.figures().p95_ms)

    def _shadowed(self, backend: str, f: Figures) -> Figures:
        """The step's shadow pairs whose prompt tokens differ (None: too few pairs)."""
        found = self.shadow(backend, self._step_began) if self.shadow else None
        if found is None or found[0] < MIN_SHADOW_PAIRS:
            return f
        return dataclasses.replace(f, shadow_mismatch=found[1])

    def _audited(self, backend: str, f: Figures) -> Figures:
        """The step's model mismatch rate, from the audit's counts since the step began."""
        if self.audit is None:
            return f
        audited, mismatched = self.audit(backend)
        n = audited - self._audit_base[0]
        rate = (mismatched - self._audit_base[1]) / n if n > 0 else None
        return dataclasses.replace(f, mismatch_rate=rate)

    def _sides(self, spec: Rollout) -> tuple[str, str]:
        return spec.backend, self.routes[0].baseline

    def _circuit_reason(self) -> str:
        m = self.machine
        for e in reversed(self.breakers.events):
            if m is not None and e.backend == m.spec.backend and e.to_state != CLOSED:
                return e.reason
        return ""

    def _moved(self, t: Transition) -> None:
        self._publish_weights()
        self.events.append(t)
        for listener in self.listeners:
            listener(t)

    def _publish_weights(self) -> None:
        m = self.machine
        fresh = {}
        if m is not None:
            fresh = {r.name: rollout_weights(r, m.spec.backend, m.percent) for r in self.routes}
        self.overrides.clear()
        self.overrides.update(fresh)

    @staticmethod
    def _log(t: Transition) -> None:
        log.warning(
            f"rollout.{t.to_state}",
            backend=t.backend,
            previous=t.from_state,
            step=t.step,
            percent=t.percent,
            reason=t.reason,
        )

    # --- followers and resuming ---------------------------------------------------------

    def adopt(self, saved: dict[str, Any]) -> bool:
        """Take the state another replica (or an earlier process) saved for this rollout."""
        m = self.machine
        if m is None:
            return False
        before = (m.state, m.index)
        if not m.resume_from(saved):
            return False
        if (m.state, m.index) != before:
            self._publish_weights()
        return True

    @contextlib.asynccontextmanager
    async def ticking(self, interval_s: float = TICK_S) -> AsyncIterator[None]:
        """Tick every ``interval_s`` while the block runs."""

        async def loop() -> None:
            while True:
                await asyncio.sleep(interval_s)
                try:
                    self.tick()
                except Exception:  # a bug here must not stop the rollout being watched
                    log.exception("rollout.tick_failed")

        task = asyncio.get_running_loop().create_task(loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
