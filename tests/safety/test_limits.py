"""The limiter contract, run against MemoryLimiter and RedisLimiter (a real redis-server).

Waits are bounded (asyncio.timeout, asyncio.wait with a timeout); durations are never
asserted. Memory-only tests drive a fake clock; Redis tests use its real clock, briefly.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from canary.errors import RateLimited, StateUnavailable
from canary.safety.limits import NO_LEASE, Lease, Limiter, MemoryLimiter
from canary.safety.redis_limiter import RedisLimiter, RedisLimiterOptions
from tests.helpers import RedisServer, free_port, refused, take


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class Replicas:
    """Limiters on one store: in memory, or one Redis client each (as replicas have)."""

    def __init__(self, store: RedisServer | None) -> None:
        self.store = store
        self.prefix = f"test-{uuid.uuid4().hex[:8]}"  # tests share the server, not keys
        self._opened: list[tuple[Redis, RedisLimiter]] = []

    def __call__(self, *, max_connections: int | None = None, **kwargs: Any) -> Limiter:
        """A limiter; ``max_connections`` bounds a Redis client's pool (memory has none)."""
        if self.store is None:
            return MemoryLimiter(**kwargs)
        return self.redis(max_connections=max_connections, **kwargs)

    def redis(
        self, url: str | None = None, *, max_connections: int | None = None, **kwargs: Any
    ) -> RedisLimiter:
        assert self.store is not None
        client = Redis.from_url(url or self.store.url, max_connections=max_connections)
        limiter = RedisLimiter(client, prefix=self.prefix, **kwargs)
        self._opened.append((client, limiter))
        return limiter

    async def aclose(self) -> None:
        for client, limiter in self._opened:
            await limiter.aclose()
            await client.aclose()


@pytest.fixture(params=[pytest.param(False, id="memory"), pytest.param(True, id="redis")])
def store(request: pytest.FixtureRequest) -> RedisServer | None:
    if not request.param:
        return None
    server: RedisServer = request.getfixturevalue("redis_server")
    return server


@pytest.fixture
async def replicas(store: RedisServer | None) -> AsyncIterator[Replicas]:
    rig = Replicas(store)
    yield rig
    await rig.aclose()


@pytest.fixture
async def redis_replicas(redis_server: RedisServer) -> AsyncIterator[Replicas]:
    rig = Replicas(redis_server)
    yield rig
    await rig.aclose()


@pytest.fixture
def limiter(replicas: Replicas) -> Limiter:
    return replicas()


async def still_waiting(task: asyncio.Task[Lease]) -> bool:
    done, _ = await asyncio.wait([task], timeout=0.1)
    return not done


# -- the contract, both implementations -------------------------------------------------------


async def test_no_limits_is_immediate(limiter: Limiter) -> None:
    """With neither limit set every acquire is granted at once with the shared no-op lease."""
    for _ in range(1_000):
        lease = await take(limiter)
        assert lease is NO_LEASE
        await lease.release()


async def test_concurrency_slot_waits_for_release(limiter: Limiter) -> None:
    """N slots are granted; the next waits and gets the slot once one is released."""
    leases = [await take(limiter, concurrency=3) for _ in range(3)]
    late = await refused(take(limiter, concurrency=3, wait_s=0.05))
    assert late.reason == "max_concurrency"

    waiter = asyncio.create_task(take(limiter, concurrency=3, wait_s=5))
    assert await still_waiting(waiter)
    await leases.pop().release()
    async with asyncio.timeout(2):
        leases.append(await waiter)
    assert (await refused(take(limiter, concurrency=3))).reason == "max_concurrency"
    for lease in leases:
        await lease.release()


async def test_qps_burst_then_wait(limiter: Limiter) -> None:
    """Q starts are granted at once; the next waits until the burst leaves the window."""
    for _ in range(20):
        await take(limiter, qps=20)
    late = await refused(take(limiter, qps=20))
    assert late.reason == "max_qps"
    assert 0 < late.retry_after <= 1.0
    async with asyncio.timeout(3):
        await take(limiter, qps=20, wait_s=2)


async def test_qps_never_exceeds_q_in_any_second(replicas: Replicas) -> None:
    """Driven hard for 1.5 s, no one-second window holds more than Q starts, and Q is used."""
    q = 20
    now: Callable[[], float]
    tick: Callable[[float], Awaitable[None]]
    if replicas.store is None:
        clock = FakeClock()
        limiter, now, tick, window = replicas(clock=clock), clock, clock.sleep, 1.0
    else:  # grants are timed at the client, after Redis decided: leave a margin
        limiter, now, tick, window = replicas(), time.monotonic, asyncio.sleep, 0.8
    grants: list[float] = []
    start = now()
    while now() - start < 1.5:
        try:
            await take(limiter, qps=q)
        except RateLimited:
            await tick(0.005)
        else:
            grants.append(now())
    assert q < len(grants) <= 2 * q  # two windows began within 1.5 s, and both were used
    for first in grants:
        assert sum(first <= g < first + window for g in grants) <= q


async def test_a_queue_longer_than_the_redis_pool_waits_in_order(replicas: Replicas) -> None:
    """Many waiters on one replica take their turns in order, without exhausting its Redis pool.

    Each waiter asking Redis by itself once took one pooled connection per waiter: past the
    pool, "Too many connections" read as Redis down, and the replica fell back to memory
    with an empty start log (the starts Redis had granted that second were not counted).
    """
    limiter = replicas(max_connections=4)
    held = await take(limiter, concurrency=1)
    order: list[int] = []

    async def queued(i: int) -> None:
        lease = await take(limiter, concurrency=1, qps=1000, wait_s=10)
        order.append(i)
        await lease.release()

    first = asyncio.create_task(queued(0))
    assert await still_waiting(first)  # in the queue: whoever comes next waits behind it
    rest = [asyncio.create_task(queued(i)) for i in range(1, 30)]
    assert await still_waiting(rest[-1])  # all queued, the head polling
    await held.release()
    async with asyncio.timeout(10):
        await asyncio.gather(first, *rest)
    assert order == list(range(30))


async def test_a_start_alone_does_not_queue_behind_waiters_for_a_slot(limiter: Limiter) -> None:
    """A retry (a start, its slot held already) passes waiters for a slot: they wait for it."""
    held = await take(limiter, concurrency=1, qps=100)
    waiting = asyncio.create_task(take(limiter, concurrency=1, qps=100, wait_s=5))
    assert await still_waiting(waiting)
    async with asyncio.timeout(2):
        await take(limiter, qps=100, wait_s=1)  # the holder's retry: not stuck behind `waiting`
    await held.release()
    async with asyncio.timeout(2):
        await (await waiting).release()


async def test_rate_limited_carries_retry_after(limiter: Limiter) -> None:
    """A refusal says how long to wait (> 0) and renders as 429 with Retry-After."""
    lease = await take(limiter, concurrency=1, qps=1)
    for exc in [
        await refused(take(limiter, concurrency=1)),
        await refused(take(limiter, qps=1)),
    ]:
        assert exc.retry_after > 0
        assert exc.status == 429
        assert int(dict(exc.headers())[b"retry-after"]) >= 1
    await lease.release()


async def test_limits_are_per_backend(limiter: Limiter) -> None:
    """A backend at its limits does not hold back another backend."""
    held = await take(limiter, "legacy", concurrency=1, qps=1)
    await refused(take(limiter, "legacy", concurrency=1, qps=1))
    other = await take(limiter, "relay", concurrency=1, qps=1)
    await held.release()
    await other.release()


async def test_changed_limits_apply_on_the_next_call(limiter: Limiter) -> None:
    """A reload that raises or lowers a limit takes effect on the next acquire."""
    first = await take(limiter, concurrency=1)
    await refused(take(limiter, concurrency=1))
    second = await take(limiter, concurrency=2)
    await refused(take(limiter, concurrency=1))  # lowered below what is in flight
    await first.release()
    await second.release()

    for _ in range(2):
        await take(limiter, "legacy", qps=2)
    await refused(take(limiter, "legacy", qps=2))
    for _ in range(3):
        await take(limiter, "legacy", qps=5)
    await refused(take(limiter, "legacy", qps=1))


async def test_release_is_idempotent(limiter: Limiter) -> None:
    """Releasing a lease twice frees one slot, not two."""
    lease = await take(limiter, concurrency=1)
    await lease.release()
    await lease.release()
    held = await take(limiter, concurrency=1)
    await refused(take(limiter, concurrency=1))
    await held.release()


# -- in memory: fake clock, queue order, share ------------------------------------------------


async def test_memory_qps_waiter_sleeps_once_until_due() -> None:
    """A waiter for a start sleeps exactly until it is due, without polling."""
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock, sleep=clock.sleep)
    for _ in range(10):
        await take(limiter, qps=10)
    clock.now += 0.25
    await take(limiter, qps=10, wait_s=5)
    assert clock.slept == [pytest.approx(0.75)]


async def test_memory_cancelled_waiter_passes_its_turn_on() -> None:
    """A waiter that gives up (client gone) does not strand the waiters behind it."""
    limiter = MemoryLimiter()
    held = await take(limiter, concurrency=1)
    first = asyncio.create_task(take(limiter, concurrency=1, wait_s=5))
    second = asyncio.create_task(take(limiter, concurrency=1, wait_s=5))
    assert await still_waiting(second)
    first.cancel()
    await held.release()
    async with asyncio.timeout(2):
        await (await second).release()
    assert first.cancelled()


async def test_memory_share_scales_the_limits() -> None:
    """With share 1/2 a replica takes half of max_concurrency and of max_qps."""
    limiter = MemoryLimiter(clock=FakeClock(), share=0.5)
    leases = [await take(limiter, concurrency=4) for _ in range(2)]
    assert (await refused(take(limiter, concurrency=4))).reason == "max_concurrency"
    for _ in range(5):
        await take(limiter, "legacy", qps=10)
    assert (await refused(take(limiter, "legacy", qps=10))).reason == "max_qps"
    for lease in leases:
        await lease.release()


# -- Redis only: replicas, crashes, outages ---------------------------------------------------


async def test_redis_replicas_share_the_limits(redis_replicas: Replicas) -> None:
    """Two replicas (two clients) draw on one set of limits."""
    a, b = redis_replicas.redis(), redis_replicas.redis()
    held = [await take(a, concurrency=2), await take(b, concurrency=2)]
    await refused(take(a, concurrency=2))
    await refused(take(b, concurrency=2))
    for replica in (a, b, a, b):
        await take(replica, "legacy", qps=4)
    await refused(take(a, "legacy", qps=4))
    await refused(take(b, "legacy", qps=4))
    for lease in held:
        await lease.release()


async def test_redis_crashed_replica_slot_comes_back(redis_replicas: Replicas) -> None:
    """A lease never released (its replica died) expires after lease_ttl_s."""
    crashed = redis_replicas.redis(options=RedisLimiterOptions(lease_ttl_s=0.5))
    survivor = redis_replicas.redis(options=RedisLimiterOptions(lease_ttl_s=0.5))
    await take(crashed, concurrency=1)
    await crashed.aclose()  # no release, no more renewals
    async with asyncio.timeout(5):
        await (await take(survivor, concurrency=1, wait_s=4)).release()


async def test_redis_live_lease_outlasts_its_ttl(redis_replicas: Replicas) -> None:
    """A replica renews the leases it holds, so a long request keeps its slot."""
    holder = redis_replicas.redis(options=RedisLimiterOptions(lease_ttl_s=0.3))
    other = redis_replicas.redis(options=RedisLimiterOptions(lease_ttl_s=0.3))
    lease = await take(holder, concurrency=1)
    await refused(take(other, concurrency=1, wait_s=1.0))  # more than three ttls
    await lease.release()
    # Another replica sees a release when its batch is sent (RELEASE_BATCH_S): wait for it.
    await (await take(other, concurrency=1, wait_s=1.0)).release()


async def test_redis_unreachable_raises_state_unavailable(redis_replicas: Replicas) -> None:
    """With nothing listening, acquire raises StateUnavailable promptly instead of hanging."""
    limiter = redis_replicas.redis(url=f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(StateUnavailable):
        async with asyncio.timeout(2):
            await take(limiter, concurrency=1, qps=10)


async def test_redis_outage_and_return(redis_server: RedisServer, redis_replicas: Replicas) -> None:
    """Redis stopped: StateUnavailable, a release is dropped quietly; restarted: back to work."""
    limiter = redis_replicas.redis()
    lease = await take(limiter, concurrency=1)
    redis_server.stop()
    try:
        with pytest.raises(StateUnavailable):
            async with asyncio.timeout(2):
                await take(limiter, concurrency=1)
        async with asyncio.timeout(2):
            await lease.release()
    finally:
        redis_server.start()
    async with asyncio.timeout(2):
        await (await take(limiter, concurrency=1, qps=10)).release()


async def test_redis_too_slow_raises_state_unavailable(
    redis_server: RedisServer, redis_replicas: Replicas
) -> None:
    """A Redis stalled past the call timeout gives StateUnavailable, then serves again."""
    limiter = redis_replicas.redis()
    await (await take(limiter, concurrency=1)).release()  # connected, script loaded
    admin = Redis.from_url(redis_server.url)
    try:
        await admin.execute_command("CLIENT", "PAUSE", 600, "ALL")
        with pytest.raises(StateUnavailable):
            async with asyncio.timeout(2):  # a backend it holds no spare slot of: Redis asked
                await take(limiter, "paused", concurrency=1)
    finally:
        await admin.aclose()
    # Another backend: the timed-out call may still run once Redis resumes, and the lease
    # it takes then has no owner until its TTL (by design) -- on a busy machine, often.
    async with asyncio.timeout(3):
        while True:
            try:
                await (await take(limiter, "legacy", concurrency=1)).release()
                break
            except StateUnavailable:
                continue  # still paused: each try is bounded by the call timeout


async def _drive(
    limiter: Limiter, backend: str, seconds: float, q: int, grants: list[float]
) -> None:
    """Acquire as fast as granted for ``seconds``, a few calls in flight, the oldest ending."""
    held: list[Lease] = []
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        try:
            lease = await take(limiter, backend, concurrency=200, qps=q)
        except RateLimited:
            await asyncio.sleep(0.005)
            continue
        grants.append(time.monotonic())
        held.append(lease)
        if len(held) > 8:
            await held.pop(0).release()
        await asyncio.sleep(0.001)
    for lease in held:
        await lease.release()


async def test_redis_batches_far_from_the_limits_and_stay_exact(
    redis_server: RedisServer, redis_replicas: Replicas
) -> None:
    """Two replicas far below their limits need far fewer Redis calls than admits; driven
    into max_qps, no second holds more than max_qps starts, batches or not."""
    replicas = [redis_replicas.redis(), redis_replicas.redis()]
    admin = Redis.from_url(redis_server.url)

    async def scripts() -> int:
        calls: int = (await admin.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0)
        return calls

    try:
        before, far = await scripts(), list[float]()
        async with asyncio.timeout(10):
            await asyncio.gather(*(_drive(r, "legacy", 0.8, 100_000, far) for r in replicas))
        assert await scripts() - before < len(far) / 3  # one script served several admits
    finally:
        await admin.aclose()
    q, grants = 300, list[float]()
    async with asyncio.timeout(10):
        await asyncio.gather(*(_drive(r, "relay", 1.6, q, grants) for r in replicas))
    assert q < len(grants) <= 2 * q
    for first in grants:  # grants are timed at the client, after Redis decided: a margin
        assert sum(first <= g < first + 0.9 for g in grants) <= q
