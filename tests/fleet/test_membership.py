"""Failover and membership against a real redis-server: each replica a FailoverLimiter with
its own client and its heartbeat, as the lifespan enters them.

Redis outages are real (the server stopped and started); every wait is bounded.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from canary.fleet.membership import Membership
from canary.safety.failover import FailoverLimiter
from canary.safety.redis_limiter import RedisLimiter
from tests.helpers import RedisServer, free_port, refused, take


@dataclass
class Replica:
    limiter: FailoverLimiter
    membership: Membership
    client: Redis


class Failovers:
    """Replicas on one prefix, each with its own client."""

    def __init__(self, server: RedisServer) -> None:
        self.url = server.url
        self.prefix = f"test-{uuid.uuid4().hex[:8]}"
        self._opened: list[Replica] = []

    def __call__(
        self,
        replica_id: str,
        *,
        on_change: Callable[[str, str], None] | None = None,
        heartbeat_s: float = 60.0,  # long: tests run heartbeat steps themselves
        retry_s: float = 60.0,
    ) -> Replica:
        client = Redis.from_url(self.url)
        limiter = FailoverLimiter(RedisLimiter(client, prefix=self.prefix), on_change=on_change)
        membership = Membership(limiter, replica_id, heartbeat_s=heartbeat_s, retry_s=retry_s)
        replica = Replica(limiter, membership, client)
        self._opened.append(replica)
        return replica

    async def aclose(self) -> None:
        for replica in self._opened:
            async with asyncio.timeout(5):
                await replica.membership.aclose()
                await replica.limiter.aclose()
            await replica.client.aclose()


@pytest.fixture
async def failovers(redis_server: RedisServer) -> AsyncIterator[Failovers]:
    rig = Failovers(redis_server)
    yield rig
    await rig.aclose()


async def test_failover_counts_live_replicas(failovers: Failovers) -> None:
    """With Redis up, state is "redis" and each replica's heartbeat counts both replicas."""
    a, b = failovers("a"), failovers("b")
    async with asyncio.timeout(2):
        await a.membership.start()
        await b.membership.start()
        await a.membership.heartbeat()
    assert (a.limiter.state, b.limiter.state) == ("redis", "redis")
    assert (a.limiter.replicas, b.limiter.replicas) == (2, 2)
    await (await take(a.limiter, concurrency=1, qps=10)).release()


async def test_failover_serves_its_share_from_memory(
    redis_server: RedisServer, failovers: Failovers
) -> None:
    """Redis stopped: the next acquire is served from memory at a 1/replicas share."""
    changes: list[tuple[str, str]] = []
    a = failovers("a", on_change=lambda old, new: changes.append((old, new)))
    b = failovers("b")
    async with asyncio.timeout(2):
        await a.membership.start()
        await b.membership.start()
        await a.membership.heartbeat()
    assert a.limiter.replicas == 2
    shared = await take(a.limiter, concurrency=4)  # from Redis: released to Redis, quietly failing
    redis_server.stop()
    try:
        async with asyncio.timeout(2):
            first = await take(a.limiter, concurrency=4)
            assert a.limiter.state == "degraded"
            second = await take(a.limiter, concurrency=4)
            refusal = await refused(take(a.limiter, concurrency=4, wait_s=0.0))
            assert refusal.reason == "max_concurrency"
            await first.release()
            await (await take(a.limiter, concurrency=4)).release()  # the freed memory slot
            await second.release()
            await shared.release()
        assert changes == [("redis", "degraded")]
    finally:
        redis_server.start()


async def test_failover_returns_to_redis(redis_server: RedisServer, failovers: Failovers) -> None:
    """Redis started again: a heartbeat step brings state back to "redis"."""
    a = failovers("a")
    async with asyncio.timeout(2):
        await a.membership.start()
    redis_server.stop()
    try:
        async with asyncio.timeout(2):
            await a.membership.heartbeat()
        assert a.limiter.state == "degraded"
    finally:
        redis_server.start()
    async with asyncio.timeout(3):
        while a.limiter.state != "redis":  # each step is bounded by the call timeout
            await a.membership.heartbeat()
    assert a.limiter.replicas == 1
    await (await take(a.limiter, concurrency=1, qps=10)).release()


async def test_failover_starts_with_redis_down(failovers: Failovers) -> None:
    """Redis unreachable at start-up: start() does not raise, state is degraded, acquire works."""
    failovers.url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    a = failovers("a")
    async with asyncio.timeout(2):
        await a.membership.start()
        assert a.limiter.state == "degraded"
        await (await take(a.limiter, concurrency=1, qps=10)).release()
        await a.membership.heartbeat()  # still down: stays degraded
    assert a.limiter.state == "degraded"


async def test_failover_logs_once_per_transition(
    redis_server: RedisServer, failovers: Failovers
) -> None:
    """Many requests through an outage log one warning going down and one info coming back."""
    a = failovers("a")
    async with asyncio.timeout(2):
        await a.membership.start()
    with capture_logs() as logs:
        redis_server.stop()
        try:
            async with asyncio.timeout(5):
                for _ in range(50):
                    await (await take(a.limiter, concurrency=10, qps=1000)).release()
                await a.membership.heartbeat()
        finally:
            redis_server.start()
        async with asyncio.timeout(3):
            while a.limiter.state != "redis":
                await a.membership.heartbeat()
        await (await take(a.limiter, concurrency=10, qps=1000)).release()
    events = [(entry["event"], entry["log_level"]) for entry in logs]
    assert events == [("state.degraded", "warning"), ("state.shared", "info")]
    assert logs[0]["error"] and logs[1]["replicas"] == 1


async def test_failover_heartbeat_timer_runs(failovers: Failovers) -> None:
    """After start(), the heartbeat task keeps counting replicas by itself."""
    a = failovers("a", heartbeat_s=0.05)
    async with asyncio.timeout(2):
        await a.membership.start()
        assert a.limiter.replicas == 1
        await failovers("b").membership.start()
        while a.limiter.replicas != 2:  # polled against the deadline, not a fixed settle time
            await asyncio.sleep(0.01)


async def test_membership_leaves_the_replica_set_on_exit(failovers: Failovers) -> None:
    """``async with`` a membership joins at once and leaves on the way out: others count 1."""
    a, b = failovers("a"), failovers("b")
    async with asyncio.timeout(2):
        await a.membership.start()
        async with b.membership:
            await a.membership.heartbeat()
            assert a.limiter.replicas == 2
        await a.membership.heartbeat()
    assert a.limiter.replicas == 1


class _FlakyRedis:
    """A RedisLimiter stand-in: grants every start until ``down``, then is unreachable."""

    def __init__(self) -> None:
        self.down = False
        self.granted = 0

    async def acquire(self, backend: str, **kw: Any) -> Any:
        from canary.errors import StateUnavailable
        from canary.safety.limits import NO_LEASE

        if self.down:
            raise StateUnavailable("redis: down")
        self.granted += 1
        return NO_LEASE

    async def aclose(self) -> None:
        return None


async def test_a_failover_does_not_spend_a_seconds_starts_twice() -> None:
    """Going to memory, the starts Redis granted in the last second count against this
    replica's share; coming back, memory's starts still count for one second."""
    from canary.errors import RateLimited

    now = [100.0]
    redis = _FlakyRedis()
    limiter = FailoverLimiter(redis, clock=lambda: now[0])  # type: ignore[arg-type]
    limiter._memory._clock = lambda: now[0]  # the same fake clock for its share
    for _ in range(10):  # the whole second's worth through Redis
        await limiter.acquire("relay", max_concurrency=None, max_qps=10, wait_s=0)
    now[0] += 0.5
    redis.down = True
    with pytest.raises(RateLimited):  # memory knows those 10: nothing left this second
        await limiter.acquire("relay", max_concurrency=None, max_qps=10, wait_s=0)
    assert limiter.state == "degraded"
    now[0] += 0.6  # the Redis starts have left the window
    for _ in range(10):
        await limiter.acquire("relay", max_concurrency=None, max_qps=10, wait_s=0)
    redis.down = False
    limiter.redis_answered(1)
    with pytest.raises(RateLimited):  # Redis would grant, but memory's 10 are still live
        await limiter.acquire("relay", max_concurrency=None, max_qps=10, wait_s=0)
    assert redis.granted == 10
    now[0] += 1.01
    await limiter.acquire("relay", max_concurrency=None, max_qps=10, wait_s=0)
    assert redis.granted == 11
