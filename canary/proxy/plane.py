"""The data plane's parts: built once by the composition root, shared by every exchange.

``Plane`` is the one object an ``Exchange`` is given (instead of a dozen values): the
config store, the windows and circuits, the limiter, the upstream (``canary.proxy.transport``),
the meter, and the seams tests replace (clock, rng, sleep). It also builds the upstream
request: plain bytes and strings, no httpx object.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from starlette.types import Scope

from canary.config.model import Backend, Route
from canary.config.store import ConfigStore
from canary.errors import RouterError
from canary.observe.meter import Meter
from canary.observe.tracing import OFF, Tracing
from canary.proxy.headers import upstream_headers
from canary.proxy.retry import RetryBudget
from canary.proxy.router import pick
from canary.proxy.shadow import Shadows
from canary.proxy.sockets import Sockets
from canary.proxy.transport import Outgoing, Upstream
from canary.proxy.watchdog import Watchdog
from canary.safety.breaker import Breakers
from canary.safety.limits import Lease, Limiter, RateLimited
from canary.safety.windows import Stats
from canary.types import Clock, Sleep

_WAIT_S = 0.001  # a limiter acquire slower than this queued for a slot (not just a Redis hop)


def connect_s(timeout_s: float) -> float:
    """The bound on opening a connection to a backend whose ``timeout_s`` is given."""
    return min(10.0, timeout_s)


class Waiting(Protocol):
    """A call's or a session's try, as ``Plane.admit`` reads and marks it."""

    backend: Backend
    origin: str | None
    since: float
    status: int
    outcome: str


Deny = Callable[[RouterError, str | None, str | None], Awaitable[int]]


@dataclass(slots=True)
class Plane:
    """What every exchange uses (see the module docstring)."""

    store: ConfigStore
    stats: Stats
    breakers: Breakers
    limiter: Limiter
    upstream: Upstream
    meter: Meter
    clock: Clock
    rng: random.Random
    sleep: Sleep = asyncio.sleep
    access_log: bool = True
    sockets: Sockets | None = None  # upstream WebSockets (sessions); None: none can open
    # route name -> the weights a progressive rollout wants there (canary.safety.rollouts)
    weights: dict[str, dict[str, float]] = field(default_factory=dict)
    tracing: Tracing = OFF  # OpenTelemetry spans of each call; OFF: no-ops (SPEC §12)
    budget: RetryBudget = field(init=False)
    shadows: Shadows = field(init=False)  # routes' shadow copies (SPEC §9)
    watchdog: Watchdog = field(init=False, default_factory=Watchdog)  # every stream's deadline

    def __post_init__(self) -> None:
        self.budget = RetryBudget(self.clock)
        self.shadows = Shadows(self.meter, self, self.rng)

    def choose(self, route: Route, key: str | None) -> str:
        """The backend for one call (or session) on ``route``: a rollout's weights if any,
        by ``key`` when sticky; a canary whose circuit is not closed gives it to the baseline."""
        name = pick(self.weights.get(route.name, route.weights), key, self.rng)
        if name != route.baseline:
            circuit = self.breakers.circuits.get(name)
            if circuit is not None and not circuit.admit():
                name = route.baseline  # rolled back: the baseline takes this call
        return name

    def count(self, name: str, seconds: float, kind: str | None, verdict: bool = True) -> None:
        """A try ended: its window, its circuit and its failure kind move here, and only here."""
        self.stats.window(name).finish(seconds, error=kind is not None)
        circuit = self.breakers.circuits.get(name)
        if circuit is not None:
            if verdict:
                circuit.record(error=kind is not None, kind=kind)
            else:
                circuit.abandon()
        if kind is not None:
            self.meter.failure(name, kind)

    async def admit(self, t: Waiting, wait_s: float, deny: Deny) -> Lease | None:
        """A slot under ``t.backend``'s limits, or None once ``deny`` answered the 429 (the
        limit is canary's, not the backend's fault): for a call or a session alike."""
        try:
            return await self.lease(t.backend, wait_s, t.since)
        except RateLimited as limited:
            t.status = await deny(limited, t.backend.name, t.origin)
            t.outcome = "rate_limited"
            return None

    async def lease(self, backend: Backend, wait_s: float, since: float) -> Lease:
        """A slot under ``backend``'s limits, for a call or a session; ``RateLimited`` (counted
        as a rejection) past ``wait_s`` in the queue. A wait is metered from ``since``."""
        try:
            lease = await self.limiter.acquire(
                backend.name,
                max_concurrency=backend.max_concurrency,
                max_qps=backend.max_qps,
                wait_s=wait_s,
            )
        except RateLimited:
            self.meter.rejected(backend.name)
            raise
        waited = self.clock() - since
        if waited > _WAIT_S:
            self.meter.waited(backend.name, waited)
        return lease

    def upstream_request(
        self,
        scope: Scope,
        backend: Backend,
        content: bytes | AsyncIterator[bytes],
        rid: bytes,
        rewritten: bool,
    ) -> Outgoing:
        """The client's request as ``backend`` gets it (``canary.proxy.headers``).

        The connect is bounded here; the headers and the body by the call's watch
        (``canary.proxy.watchdog``), where a transport's timer would cost one per call."""
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        target = backend.base_url + raw_path[3:].decode("latin-1")
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        return Outgoing(
            scope["method"],
            target,
            upstream_headers(scope["headers"], backend, rid, rewritten),
            content,
            connect_s(backend.timeout_s),
        )
