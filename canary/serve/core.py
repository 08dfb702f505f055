"""What ``create_app`` takes and what it builds before anything runs.

``AppOptions`` is every choice and seam in one frozen object (``AppOptionFields`` is the same
as keyword arguments, for ``create_app(path, watch=False, ...)``). ``Core`` is the part that
holds no process resource: the config store and the figures every request updates. The
lifespan (``canary.serve.lifespan``) opens the rest around it.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import TypedDict

import httpx

from canary.config.model import Config
from canary.config.store import ConfigStore
from canary.observe.billing import Billing
from canary.observe.equivalence import prompt_mismatch_since
from canary.observe.logs import redactor
from canary.observe.meter import Meter
from canary.observe.tracing import Tracing
from canary.safety.breaker import Breakers
from canary.safety.rollouts import Rollouts
from canary.safety.windows import Stats
from canary.serve.drain import Traffic
from canary.types import Clock, Sleep


@dataclass(frozen=True, kw_only=True, slots=True)
class AppOptions:
    """How to build the router; the defaults are what ``canary serve`` uses."""

    transport: httpx.AsyncBaseTransport | None = None  # upstream; None: pooled aiohttp
    clock: Clock = time.monotonic
    rng: random.Random | None = None  # weighted picks; None: a fresh random.Random
    sleep: Sleep = asyncio.sleep  # retry back-off
    watch: bool = True  # poll routes.yaml and reload when it changes
    watch_interval_s: float = 0.25
    signals: bool = False  # SIGHUP reloads (serve only: needs the main thread's loop)
    access_log: bool = True
    # This process's part of each backend's limits: with N workers on in-process state,
    # each takes 1/N so the host as a whole keeps them.
    limit_share: float = 1.0
    # The directory through which the workers of one ``serve --workers N`` share their
    # figures (``canary.fleet.workers``).
    fleet_dir: str | None = None
    rollout_tick_s: float = 0.25  # how often a progressive rollout judges its step
    tracing: Tracing | None = None  # spans of each call; None: per telemetry.traces and OTEL_*


class AppOptionFields(TypedDict, total=False):
    """``AppOptions`` as keyword arguments (see there)."""

    transport: httpx.AsyncBaseTransport | None
    clock: Clock
    rng: random.Random | None
    sleep: Sleep
    watch: bool
    watch_interval_s: float
    signals: bool
    access_log: bool
    limit_share: float
    fleet_dir: str | None
    rollout_tick_s: float
    tracing: Tracing | None


def audit_totals(meter: Meter, backend: str) -> tuple[int, int]:
    """(answers audited with a model name, mismatches) of ``backend`` so far (SPEC §9)."""
    rows = [counts for (name, _), counts in meter.audits.items() if name == backend]
    return sum(c[0] + c[1] + c[2] for c in rows), sum(c[2] for c in rows)


@dataclass(frozen=True, slots=True)
class Core:
    """The config store and the in-process figures: built once, alive across lifespans."""

    store: ConfigStore
    stats: Stats
    breakers: Breakers
    meter: Meter
    traffic: Traffic
    rollouts: Rollouts
    billing: Billing  # the spend audit's ledgers and alerts (SPEC §11)

    @classmethod
    def build(cls, config_path: str, clock: Clock) -> Core:
        stats = Stats(window_s=60.0, clock=clock)
        breakers = Breakers(stats, clock)
        rollouts = Rollouts(stats, breakers, clock)
        store, meter = ConfigStore(config_path), Meter(clock)
        core = cls(store, stats, breakers, meter, Traffic(), rollouts, Billing(time.time))
        rollouts.audit = lambda backend: audit_totals(core.meter, backend)
        rollouts.shadow = lambda backend, since: prompt_mismatch_since(
            core.meter, core.store.config.routes if core.store.config else (), backend, since
        )
        core.store.listeners.append(core.on_config)
        return core

    def on_config(self, old: Config | None, new: Config) -> None:
        """A config applied: windows, circuits and the log redactor follow it."""
        self.stats.resize(new.rollback.window_s)
        self.breakers.apply(old, new)
        self.rollouts.on_config(old, new)
        # Keep the old keys masked too: requests still running on the old config log them.
        redactor.update(new.secrets() | (old.secrets() if old else frozenset()))
