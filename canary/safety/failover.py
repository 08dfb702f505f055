"""Shared limits while Redis answers; this replica's share of them in memory while it does not.

``state`` is "redis" or "degraded". A failed Redis call degrades at once and that request is
served from memory, each of N replicas taking 1/N of every limit, so that together they
still hold it. Only Redis answering again brings state back: the heartbeat of
``canary.fleet.membership`` counts the live replicas (``redis_answered``) and, while
degraded, is the one probe.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from canary.errors import StateUnavailable
from canary.safety.limits import Lease, MemoryLimiter, RedisLimiter
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

    async def acquire(
        self, backend: str, *, max_concurrency: int | None, max_qps: float | None, wait_s: float
    ) -> Lease:
        deadline = self._clock() + wait_s
        if self.state == "redis":
            try:
                return await self.redis.acquire(
                    backend, max_concurrency=max_concurrency, max_qps=max_qps, wait_s=wait_s
                )
            except StateUnavailable as exc:
                self.degrade(exc)  # and serve this request from memory, with what is left
        wait_s = max(0.0, deadline - self._clock())
        return await self._memory.acquire(
            backend, max_concurrency=max_concurrency, max_qps=max_qps, wait_s=wait_s
        )

    def redis_answered(self, replicas: int) -> None:
        """A heartbeat reached Redis and saw ``replicas`` live ones: limits are shared again."""
        self.replicas = max(1, replicas)
        self._switch("redis", replicas=self.replicas)

    def degrade(self, exc: BaseException) -> None:
        """Redis failed: serve from memory until a heartbeat reaches it again."""
        if self.state != "degraded":
            # Each of N replicas takes 1/N of every limit, so together they still hold it.
            self._memory.share = 1.0 / self.replicas
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
