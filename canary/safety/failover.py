"""Shared limits while Redis answers; this replica's share of them in memory while it does not.

``state`` is "redis" or "degraded". A failed Redis call degrades at once and that request is
served from memory, each of N replicas taking 1/N of every limit, so that together they
still hold it. Only Redis answering again brings state back: the heartbeat of
``canary.fleet.membership`` counts the live replicas (``redis_answered``) and, while
degraded, is the one probe.

A switch must not spend a second's starts twice. Going to memory, the replica's log is
seeded with the starts Redis granted it in the last second; coming back, for one second
a start needs this replica's memory share as well as Redis, whose log never saw the
starts made in memory. So ``max_qps`` holds across replicas through either switch.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import structlog

from canary.errors import StateUnavailable
from canary.safety.limits import Lease, MemoryLimiter
from canary.safety.redis_limiter import RedisLimiter
from canary.types import AsyncResource, Clock


class FailoverLimiter(AsyncResource):
    """``redis`` while it answers, else a ``MemoryLimiter`` at 1/``replicas`` of each limit."""

    def __init__(
        self,
        redis: RedisLimiter,
        *,
        clock: Clock = time.monotonic,
        on_change: Callable[[str, str], None] | None = None,
    ) -> None:
        self.redis = redis
        self._memory = MemoryLimiter(clock=clock)
        self._clock = clock
        self._on_change = on_change
        self.state = "redis"
        self.replicas = 1
        self._granted: dict[str, deque[float]] = {}  # Redis starts of the last second
        self._both_until = 0.0  # just back on Redis: memory's share must agree too

    async def acquire(
        self, backend: str, *, max_concurrency: int | None, max_qps: float | None, wait_s: float
    ) -> Lease:
        deadline = self._clock() + wait_s
        if self.state == "redis":
            if max_qps is not None and self._clock() < self._both_until:
                await self._memory.acquire(
                    backend, max_concurrency=None, max_qps=max_qps, wait_s=wait_s
                )
                wait_s = max(0.0, deadline - self._clock())
            try:
                lease = await self.redis.acquire(
                    backend, max_concurrency=max_concurrency, max_qps=max_qps, wait_s=wait_s
                )
            except StateUnavailable as exc:
                self.degrade(exc)  # and serve this request from memory, with what is left
            else:
                if max_qps is not None:
                    self._note(backend)
                return lease
        wait_s = max(0.0, deadline - self._clock())
        return await self._memory.acquire(
            backend, max_concurrency=max_concurrency, max_qps=max_qps, wait_s=wait_s
        )

    def _note(self, backend: str) -> None:
        now = self._clock()
        granted = self._granted.get(backend)
        if granted is None:
            granted = self._granted[backend] = deque()
        granted.append(now)
        while granted[0] <= now - 1.0:
            granted.popleft()

    def redis_answered(self, replicas: int) -> None:
        """A heartbeat reached Redis and saw ``replicas`` live ones: limits are shared again."""
        self.replicas = max(1, replicas)
        if self.state != "redis":
            self._both_until = self._clock() + 1.0
        self._switch("redis", replicas=self.replicas)

    def degrade(self, exc: BaseException) -> None:
        """Redis failed: serve from memory until a heartbeat reaches it again."""
        if self.state != "degraded":
            # Each of N replicas takes 1/N of every limit, so together they still hold it.
            self._memory.share = 1.0 / self.replicas
            for backend, granted in self._granted.items():
                self._memory.remember(backend, granted)
            self._switch("degraded", error=str(exc))

    async def aclose(self) -> None:
        """Send queued releases to Redis; the caller owns its client."""
        await self.redis.aclose()
        await self._memory.aclose()

    def _switch(self, new: str, **fields: object) -> None:
        old = self.state
        if old == new:
            return
        self.state = new
        # Looked up per transition (rare), not cached: capture_logs in tests sees it too.
        log = structlog.get_logger("canary.safety.failover")
        if new == "degraded":
            log.warning("state.degraded", **fields)
        else:
            log.info("state.shared", **fields)
        if self._on_change is not None:
            self._on_change(old, new)
