"""Limits shared by every replica through one Redis: one atomic Lua call per attempt.

The contract, the sliding-log QPS rule and the per-process wait queues are those of
``canary.safety.limits``. With Redis the queue's head asks again when the script says the
next start is due, or for a slot when this replica releases one or every ``poll_s``, with a
little jitter. One head per queue keeps Redis traffic to a round trip at a time however long
the queue: a round trip per waiter once took more connections than the client's pool holds,
and "Too many connections" read as Redis down sent the replica to memory with an empty start
log, admitting a second's worth twice.

ACQUIRE script: KEYS = [leases zset, starts list], ARGV = [max_concurrency or 0, n or 0,
period_s, lease_ttl_s, lease_id]. Drops expired leases and starts older than period; grants
when ZCARD < max_concurrency and LLEN < n (then ZADD the lease scored by its expiry, LPUSH
the start). Returns {1, "0", 0} granted, else {0, wait_s, 1} for max_concurrency or
{0, wait_s, 2} for max_qps (wait_s: until the next start is due).
Release is one ZREM. A replica renews its live leases every lease_ttl_s/3, so a long stream
keeps its slot while a crashed replica's slots come back within lease_ttl_s.

Clock: the scripts read Redis's own TIME, so every replica judges windows and lease expiry on
one clock and skew between replica hosts cannot loosen a limit. Keys carry a hash tag per
backend ({name}) so both keys of a backend live on one node (and one clock) in a cluster.
The local monotonic clock only bounds the wait. Needs Redis >= 5 (TIME before writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from itertools import count
from typing import Final, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from canary.errors import RateLimited, StateUnavailable
from canary.safety.limits import (
    CONCURRENCY_RETRY_AFTER_S,
    NO_LEASE,
    Lease,
    Queues,
    Waiter,
    WaitQueue,
    qps_window,
)
from canary.types import AsyncResource, Clock, Sleep

T = TypeVar("T")

RELEASE_BATCH_S: Final = 0.005


@dataclass(frozen=True, slots=True)
class RedisLimiterOptions:
    """RedisLimiter's tuning: how long a lease lives unrenewed, how long one Redis call may
    take before Redis counts as down, how often a waiting head asks again for a slot."""

    lease_ttl_s: float = 30.0
    op_timeout_s: float = 0.25
    poll_s: float = 0.05


# Concurrency check before the QPS check, both before any write: granted means both taken.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local concurrency, n, period = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 6, #ARGV do redis.call('ZREM', KEYS[1], ARGV[i]) end  -- this replica's queued releases
if concurrency > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if redis.call('ZCARD', KEYS[1]) >= concurrency then return {0, '0', 1} end
end
if n > 0 then
  local oldest = redis.call('LINDEX', KEYS[2], -1)
  while oldest and tonumber(oldest) <= now - period do  -- left the window
    redis.call('RPOP', KEYS[2])
    oldest = redis.call('LINDEX', KEYS[2], -1)
  end
  if redis.call('LLEN', KEYS[2]) >= n then
    local due = tonumber(redis.call('LINDEX', KEYS[2], n - 1)) + period - now
    return {0, string.format('%.6f', due), 2}
  end
  redis.call('LPUSH', KEYS[2], string.format('%.6f', now))
  redis.call('PEXPIRE', KEYS[2], math.ceil(period * 1000) + 1000)
end
if concurrency > 0 then
  local ttl = tonumber(ARGV[4])
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[5])
  redis.call('PEXPIRE', KEYS[1], math.ceil(ttl * 1000) + 1000)
end
return {1, '0', 0}
"""

# XX: a lease already released or expired is never brought back.
_RENEW = """
local t = redis.call('TIME')
local ttl = tonumber(ARGV[1])
local expiry = tonumber(t[1]) + tonumber(t[2]) / 1000000 + ttl
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], math.ceil(ttl * 1000) + 1000)
return 0
"""

_REASONS: Final = {1: "max_concurrency", 2: "max_qps"}
_Args = tuple[int, int, float, float, str]  # ACQUIRE's ARGV before the queued releases


class _RedisLease:
    __slots__ = ("_id", "_key", "_limiter")

    def __init__(self, limiter: RedisLimiter, key: str, lease_id: str) -> None:
        self._limiter: RedisLimiter | None = limiter
        self._key = key
        self._id = lease_id

    async def release(self) -> None:
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            await limiter._release(self._key, self._id)


class RedisLimiter(AsyncResource):
    """Limits shared by every replica on one Redis; the caller owns ``client``."""

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = "canary",
        options: RedisLimiterOptions = RedisLimiterOptions(),
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._ttl = options.lease_ttl_s
        self._clock = clock
        self._sleep = sleep
        self._rng = rng
        self._timeout = options.op_timeout_s
        self._poll = options.poll_s
        self._acquire = client.register_script(_ACQUIRE)  # EVALSHA, loaded again on NOSCRIPT
        self._renew = client.register_script(_RENEW)
        self._replica = os.urandom(6).hex()
        self._ids = count()
        self._keys: dict[str, tuple[str, str]] = {}
        self._queues: dict[str, Queues] = {}  # leases key -> this replica's waiters
        self._live: dict[str, set[str]] = {}  # leases key -> ids this replica holds
        self._renewer: asyncio.Task[None] | None = None
        self._pending: dict[str, list[str]] = {}  # released, not yet sent
        self._flush_scheduled = False
        self._flushes: set[asyncio.Task[None]] = set()

    async def acquire(
        self, backend: str, *, max_concurrency: int | None, max_qps: float | None, wait_s: float
    ) -> Lease:
        if max_concurrency is None and max_qps is None:
            return NO_LEASE
        keys = self._keys.get(backend)
        if keys is None:
            base = f"{self._prefix}:limits:{{{backend}}}"
            keys = self._keys[backend] = (f"{base}:leases", f"{base}:starts")
            self._queues[keys[0]] = Queues()
        n, period = (0, 0.0) if max_qps is None else qps_window(max_qps)
        lease_id = f"{self._replica}:{next(self._ids)}"
        args = (max_concurrency or 0, n, period, self._ttl, lease_id)
        deadline = self._clock() + wait_s
        queue = self._queues[keys[0]].of(bool(max_concurrency))
        if not queue.queue:  # FIFO: nobody waiting here, so nobody to overtake
            due = await self._ask(keys, args, queue)
            if due is None:
                return self._granted(keys[0], args)
            remaining = deadline - self._clock()
            if remaining <= 0 or due > remaining:
                raise self._refusal(backend, queue.blocked_by, due)
        return await self._wait(backend, keys, args, deadline)

    async def _wait(
        self, backend: str, keys: tuple[str, str], args: _Args, deadline: float
    ) -> Lease:
        """Wait in this replica's queue: only its head asks Redis, one round trip at a time."""
        queue = self._queues[keys[0]].of(bool(args[0]))
        waiter = Waiter()
        queue.queue.append(waiter)
        try:
            while True:
                head = queue.queue[0] is waiter
                due = await self._ask(keys, args, queue) if head else 0.0
                if due is None:
                    return self._granted(keys[0], args)
                remaining = deadline - self._clock()
                if remaining <= 0 or due > remaining:
                    raise self._refusal(backend, queue.blocked_by, due)
                if not head:  # woken when the turn comes, or out of time
                    await queue.nap(waiter, self._sleep, remaining)
                elif due > 0:  # the next start is due then; a release changes nothing
                    # Jitter keeps replicas told the same instant from arriving in lockstep.
                    await self._sleep(min(due + self._jitter(), remaining))
                elif keys[0] not in self._pending:  # else our own release rides along now
                    # For a slot: woken by a release of ours, or poll for the others'.
                    await queue.nap(
                        waiter, self._sleep, min(self._poll + self._jitter(), remaining)
                    )
        finally:
            queue.leave(waiter)

    async def _ask(self, keys: tuple[str, str], args: _Args, queue: WaitQueue) -> float | None:
        """One ACQUIRE: None when granted, else seconds until a start is due (0: a slot)."""
        # Releases queued for this key ride along: a replica always sees its own at once.
        released = self._pending.pop(keys[0], None)
        try:
            granted, wait, code = await self._call(
                self._acquire(keys=keys, args=(*args, *released) if released else args)
            )
        except StateUnavailable:
            if released:  # not sent: keep them for the next flush
                self._pending.setdefault(keys[0], []).extend(released)
            raise
        if granted:
            return None
        queue.blocked_by = _REASONS[int(code)]
        return float(wait)

    def _granted(self, key: str, args: _Args) -> Lease:
        return self._hold(key, args[4]) if args[0] else NO_LEASE

    def _jitter(self) -> float:
        return self._rng() * 0.2 * self._poll

    @staticmethod
    def _refusal(backend: str, reason: str, due: float) -> RateLimited:
        # A slot, or a waiter behind the head: nobody knows when; suggest a second.
        return RateLimited(backend, reason, due if due > 0 else CONCURRENCY_RETRY_AFTER_S)

    def _hold(self, key: str, lease_id: str) -> Lease:
        self._live.setdefault(key, set()).add(lease_id)
        if self._renewer is None:
            self._renewer = asyncio.get_running_loop().create_task(self._renew_forever())
        return _RedisLease(self, key, lease_id)

    async def _release(self, key: str, lease_id: str) -> None:
        """Queue the release; one ZREM per key every RELEASE_BATCH_S carries them all.

        Off the request's path, and one round trip for many requests: another replica may
        see a freed slot up to RELEASE_BATCH_S late, which leases of seconds can afford.
        """
        self._live[key].discard(lease_id)
        self._pending.setdefault(key, []).append(lease_id)
        self._queues[key].for_slot.wake()  # a head waiting for a slot takes this one at once
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(RELEASE_BATCH_S, self._start_flush)

    def _start_flush(self) -> None:
        self._flush_scheduled = False
        batch, self._pending = self._pending, {}
        task = asyncio.get_running_loop().create_task(self._flush(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: dict[str, list[str]]) -> None:
        for key, ids in batch.items():
            with contextlib.suppress(StateUnavailable):  # then they lapse within lease_ttl_s
                await self._call(self._client.zrem(key, *ids))

    async def _renew_forever(self) -> None:
        while True:
            await self._sleep(self._ttl / 3)
            for key, ids in list(self._live.items()):
                if ids:  # Redis down: try again next round; meanwhile leases may lapse
                    with contextlib.suppress(StateUnavailable):
                        await self._call(self._renew(keys=[key], args=[self._ttl, *ids]))

    @property
    def client(self) -> Redis:
        return self._client

    @property
    def prefix(self) -> str:
        """Every key this limiter writes starts with it (membership's replica set too)."""
        return self._prefix

    async def call(self, op: Awaitable[T]) -> T:
        """A Redis call of someone sharing this client (membership), bounded the same way."""
        return await self._call(op)

    async def _call(self, op: Awaitable[T]) -> T:
        """One Redis round trip, bounded; unreachable or slow Redis -> StateUnavailable."""
        try:
            async with asyncio.timeout(self._timeout):
                return await op
        except (RedisError, OSError) as exc:  # OSError covers asyncio's TimeoutError
            raise StateUnavailable(f"Redis did not answer: {exc!r}") from exc

    async def aclose(self) -> None:
        """Send queued releases; stop renewing (leases still held lapse after lease_ttl_s)."""
        batch, self._pending = self._pending, {}
        await self._flush(batch)
        await asyncio.gather(*self._flushes, return_exceptions=True)
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
