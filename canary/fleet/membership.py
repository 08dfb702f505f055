"""Which replicas are alive: each one's heartbeat in one Redis sorted set.

Every ``heartbeat_s`` a replica adds itself, scored by Redis's own TIME (so every replica
judges liveness on one clock), drops the entries older than three periods and counts the
rest, in one script. The count is the share a degraded replica keeps of each limit
(``FailoverLimiter.redis_answered``); while degraded, the heartbeat runs every ``retry_s``
and is the probe that finds Redis back. Leaving removes the entry at once; a replica that
crashed drops out after three periods.
"""

from __future__ import annotations

import asyncio
import contextlib

from canary.errors import StateUnavailable
from canary.safety.failover import FailoverLimiter
from canary.types import AsyncResource

# KEYS = [replicas zset], ARGV = [replica_id, window_s]; returns the replicas seen within it.
_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000) + 1000)
return redis.call('ZCARD', KEYS[1])
"""


class Membership(AsyncResource):
    """This replica's heartbeat; it tells ``limiter`` whether Redis answers, and how many
    replicas do."""

    def __init__(
        self,
        limiter: FailoverLimiter,
        replica_id: str,
        *,
        heartbeat_s: float = 2.0,
        retry_s: float = 1.0,
    ) -> None:
        self.limiter = limiter
        self.replica_id = replica_id
        self.heartbeat_s = heartbeat_s
        self.retry_s = retry_s  # heartbeat period while degraded: how soon Redis is back
        self._redis = limiter.redis
        self._key = f"{self._redis.prefix}:replicas"
        self._beat = self._redis.client.register_script(_HEARTBEAT)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """One heartbeat now (bounded; Redis down means degraded, not an error), then a timer."""
        await self.heartbeat()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._beat_forever())

    async def heartbeat(self) -> None:
        """One heartbeat round trip; the limiter switches state on its outcome."""
        try:
            seen = await self._redis.call(
                self._beat(keys=[self._key], args=[self.replica_id, 3 * self.heartbeat_s])
            )
        except StateUnavailable as exc:
            self.limiter.degrade(exc)
            return
        self.limiter.redis_answered(int(seen))

    async def aclose(self) -> None:
        """Stop the heartbeat and leave the replica set."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(StateUnavailable):  # else it drops out after 3 heartbeats
            await self._redis.call(self._redis.client.zrem(self._key, self.replica_id))

    async def _beat_forever(self) -> None:
        while True:
            degraded = self.limiter.state != "redis"
            await asyncio.sleep(self.retry_s if degraded else self.heartbeat_s)
            await self.heartbeat()
