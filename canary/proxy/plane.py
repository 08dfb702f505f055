"""The data plane's parts: built once by the composition root, shared by every exchange.

``Plane`` is the one object an ``Exchange`` is given (instead of a dozen values): the
config store, the windows and circuits, the limiter, the upstream transport, the meter,
and the seams tests replace (clock, rng, sleep). It also builds the upstream request,
caching parsed URLs: parsing one is httpx's dearest step, and upstream URLs are few.
"""

from __future__ import annotations

import asyncio
import functools
import random
from dataclasses import dataclass, field

import httpx
from starlette.types import Scope

from canary.config.model import Backend
from canary.config.store import ConfigStore
from canary.observe.meter import Meter
from canary.proxy.headers import upstream_headers
from canary.proxy.retry import RetryBudget
from canary.proxy.shadow import Shadows
from canary.proxy.watchdog import Watchdog
from canary.safety.breaker import Breakers
from canary.safety.limits import Limiter
from canary.safety.windows import Stats
from canary.types import Clock, Sleep

_URL_CACHE_SIZE = 4096


def connect_s(timeout_s: float) -> float:
    """The bound on opening a connection to a backend whose ``timeout_s`` is given."""
    return min(10.0, timeout_s)


@functools.cache
def _timeouts(t: float) -> dict[str, float | None]:
    """httpx's timeout extension for a backend's ``timeout_s``; shared, never mutated.

    No read bound: the call's watch bounds the wait for the headers and each next chunk
    (``canary.proxy.watchdog``), where a transport's timer would cost one per call."""
    return {"connect": connect_s(t), "read": None, "write": t, "pool": t}


@dataclass(slots=True)
class Plane:
    """What every exchange uses (see the module docstring)."""

    store: ConfigStore
    stats: Stats
    breakers: Breakers
    limiter: Limiter
    transport: httpx.AsyncBaseTransport
    meter: Meter
    clock: Clock
    rng: random.Random
    sleep: Sleep = asyncio.sleep
    access_log: bool = True
    # route name -> the weights a progressive rollout wants there (canary.safety.rollouts)
    weights: dict[str, dict[str, float]] = field(default_factory=dict)
    budget: RetryBudget = field(init=False)
    shadows: Shadows = field(init=False)  # routes' shadow copies (SPEC §9)
    watchdog: Watchdog = field(init=False, default_factory=Watchdog)  # every stream's deadline
    _urls: dict[str, httpx.URL] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.budget = RetryBudget(self.clock)
        self.shadows = Shadows(self.meter, self, self.rng)

    def upstream_request(
        self, scope: Scope, backend: Backend, content: bytes, rid: bytes, rewritten: bool
    ) -> httpx.Request:
        """The client's request as ``backend`` gets it (``canary.proxy.headers``)."""
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        target = backend.base_url + raw_path[3:].decode("latin-1")
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        url = self._urls.get(target)
        if url is None:
            if len(self._urls) >= _URL_CACHE_SIZE:
                self._urls.clear()
            url = self._urls[target] = httpx.URL(target)
        # stream= rather than content=: the body is final, so httpx need not encode it or
        # re-build the headers; the transport sets Host and Content-Length from them.
        return httpx.Request(
            scope["method"],
            url,
            headers=upstream_headers(scope["headers"], backend, rid, rewritten),
            stream=httpx.ByteStream(content),
            extensions={"timeout": _timeouts(backend.timeout_s)},
        )
