"""Per-backend ``max_concurrency`` and ``max_qps``, in one process or shared through Redis.

    Limiter (Protocol)  acquire(backend, *, max_concurrency, max_qps, wait_s) -> Lease
    ├── MemoryLimiter   one replica; ``share`` scales the limits (Redis down: each of N takes 1/N)
    ├── RedisLimiter    all replicas against one Redis, one atomic Lua call per attempt
    └── FailoverLimiter Redis while it answers, else memory at 1/replicas (safety.failover)

A refusal after the queue time is ``RateLimited`` (429 with Retry-After, not a backend
error); Redis unreachable or slower than ``op_timeout_s`` is ``StateUnavailable`` (both in
``canary.errors``).

A start is granted only when both limits allow it, atomically: a concurrency slot (a lease,
released when the request ends) and a QPS start. Limits come with each call from the live
config, so a reload takes effect on the next acquire.

QPS is a sliding log, not GCRA: a start is allowed when fewer than ``n`` starts happened in
the last ``period`` seconds (``n = floor(max_qps)`` per second; below 1 qps, one per
``1/max_qps`` s); the log holds only the last period's starts. Only this meets SPEC §2
exactly, at most max_qps starts in *any* one-second window with bursts of one second's
worth: GCRA or a token bucket with burst = max_qps admits up to 2·max_qps - 1 in the second
after an idle spell. So after a full burst the next start waits for the burst's first start
to leave the window, not 1/max_qps.

Waiting is a bounded FIFO queue per backend in each process, and only its head asks for a
start; the others wait for their turn. A start alone (a retry: its call holds its slot) has
a queue of its own, so it never waits behind requests waiting for that very slot. In memory
the head wakes when a lease is released, or sleeps exactly until the next start is due (no
polling). With Redis the head asks again when the script says the next start is due, or for
a slot when this replica releases one or every ``poll_s``, with a little jitter. One head per
queue keeps Redis traffic to a round trip at a time however long the queue: a round trip per
waiter once took more connections than the client's pool holds, and "Too many connections"
read as Redis down sent the replica to memory with an empty start log, admitting a second's
worth twice. A request arriving while others wait joins the queue without asking. Past
``wait_s`` (or at once, when the next start is due later than that) a waiter is RateLimited.

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
import math
import os
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from itertools import count
from typing import Final, Protocol, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

# RateLimited is re-exported: canary.proxy imports it from here.
from canary.errors import RateLimited as RateLimited
from canary.errors import StateUnavailable
from canary.types import AsyncResource, Clock, Sleep

T = TypeVar("T")

# Nobody knows when an in-flight call ends: a concurrency refusal suggests this much.
CONCURRENCY_RETRY_AFTER_S: Final = 1.0
RELEASE_BATCH_S: Final = 0.005


class Lease(Protocol):
    async def release(self) -> None:
        """Give the concurrency slot back; idempotent."""


class Limiter(Protocol):
    async def acquire(
        self, backend: str, *, max_concurrency: int | None, max_qps: float | None, wait_s: float
    ) -> Lease:
        """One request start, waiting up to ``wait_s``; raises RateLimited after that."""

    async def aclose(self) -> None: ...


class _NoLease:
    __slots__ = ()

    async def release(self) -> None:
        return None


NO_LEASE: Final[Lease] = _NoLease()  # shared: nothing to give back


def qps_window(max_qps: float) -> tuple[int, float]:
    """``(n, period)``: at most n starts per period s, so never more than max_qps in a second."""
    if max_qps >= 1:
        return math.floor(max_qps), 1.0
    return 1, 1.0 / max_qps


class _Waiter:
    __slots__ = ("fut",)

    def __init__(self) -> None:
        self.fut: asyncio.Future[None] | None = None


class _Queue:
    """One backend's waiters in this process, oldest first; only the head asks for a start."""

    __slots__ = ("blocked_by", "queue")

    def __init__(self) -> None:
        self.queue: deque[_Waiter] = deque()
        self.blocked_by = "max_concurrency"  # what refused the head last

    def wake(self) -> None:
        if self.queue and (fut := self.queue[0].fut) is not None and not fut.done():
            fut.set_result(None)

    async def nap(self, waiter: _Waiter, sleep: Sleep, seconds: float) -> None:
        """Until ``wake()`` reaches ``waiter`` (a slot freed, or its turn came) or ``seconds``."""
        waiter.fut = fut = asyncio.get_running_loop().create_future()
        timer = asyncio.ensure_future(sleep(seconds))
        try:
            await asyncio.wait((fut, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            waiter.fut = None

    def leave(self, waiter: _Waiter) -> None:
        was_head = self.queue[0] is waiter
        self.queue.remove(waiter)
        if was_head:  # pass the turn on, even when cancelled
            self.wake()


class _Queues:
    """A backend's waiters for a slot and a start, and those for a start alone: a retry's
    call holds its slot already, so it must not wait behind requests waiting for that slot."""

    __slots__ = ("for_slot", "for_start")

    def __init__(self) -> None:
        self.for_slot = _Queue()
        self.for_start = _Queue()

    def of(self, slot: bool) -> _Queue:
        return self.for_slot if slot else self.for_start


class _Backend(_Queues):
    """One backend's in-process state: in-flight count, recent starts, waiters in order."""

    __slots__ = ("blocked_by", "in_flight", "starts")

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.starts: deque[float] = deque()  # the last period's starts, oldest first
        self.blocked_by = "max_concurrency"

    def take(self, now: float, concurrency: int | None, n: int, period: float) -> float | None:
        """Take a slot and a start if both are free (None); else seconds until a start is due."""
        if concurrency is not None and self.in_flight >= concurrency:
            self.blocked_by = "max_concurrency"
            return 0.0
        if n:
            starts = self.starts
            while starts and starts[0] <= now - period:  # left the window: keep only live ones
                starts.popleft()
            if len(starts) >= n:  # more than n after a lowered limit: the n-th newest decides
                self.blocked_by = "max_qps"
                return starts[-n] + period - now
            starts.append(now)
        if concurrency is not None:
            self.in_flight += 1
        return None


class _MemoryLease:
    __slots__ = ("_state",)

    def __init__(self, state: _Backend) -> None:
        self._state: _Backend | None = state

    async def release(self) -> None:
        state, self._state = self._state, None
        if state is not None:
            state.in_flight -= 1
            state.for_slot.wake()


class MemoryLimiter(AsyncResource):
    """Limits for one process; ``share`` is this replica's fraction of every limit."""

    def __init__(
        self, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep, share: float = 1.0
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self.share = share
        self._backends: dict[str, _Backend] = {}

    async def acquire(
        self, backend: str, *, max_concurrency: int | None, max_qps: float | None, wait_s: float
    ) -> Lease:
        if max_concurrency is None and max_qps is None:
            return NO_LEASE
        state = self._backends.get(backend)
        if state is None:
            state = self._backends[backend] = _Backend()
        concurrency = None if max_concurrency is None else max(1, int(max_concurrency * self.share))
        n, period = (0, 0.0) if max_qps is None else qps_window(max_qps * self.share)
        if not state.of(concurrency is not None).queue:  # FIFO: nobody waiting to overtake
            due = state.take(self._clock(), concurrency, n, period)
            if due is None:
                return NO_LEASE if concurrency is None else _MemoryLease(state)
            if due > wait_s or wait_s <= 0:
                raise self._refusal(backend, state, due, period)
        return await self._wait(backend, state, concurrency, n, period, wait_s)

    def remember(self, backend: str, starts: Iterable[float]) -> None:
        """Count starts made elsewhere (through Redis, just before a failover) in this
        replica's one-second log, so the share it now holds alone is not spent twice."""
        state = self._backends.get(backend)
        if state is None:
            state = self._backends[backend] = _Backend()
        state.starts = deque(sorted([*state.starts, *starts]))

    async def _wait(
        self,
        backend: str,
        state: _Backend,
        concurrency: int | None,
        n: int,
        period: float,
        wait_s: float,
    ) -> Lease:
        deadline = self._clock() + wait_s
        queue = state.of(concurrency is not None)
        waiter = _Waiter()
        queue.queue.append(waiter)
        try:
            while True:
                now = self._clock()
                head = queue.queue[0] is waiter
                due = state.take(now, concurrency, n, period) if head else 0.0
                if due is None:
                    return NO_LEASE if concurrency is None else _MemoryLease(state)
                remaining = deadline - now
                if due > remaining or remaining <= 0:
                    raise self._refusal(backend, state, due, period)
                if due > 0:  # the head waits for the next start; a release changes nothing
                    await self._sleep(due)
                    continue
                # For a slot, or for our turn: woken by wake(), or out of time.
                await queue.nap(waiter, self._sleep, remaining)
        finally:
            queue.leave(waiter)

    @staticmethod
    def _refusal(backend: str, state: _Backend, due: float, period: float) -> RateLimited:
        if state.blocked_by == "max_qps":
            return RateLimited(backend, "max_qps", due or period)
        return RateLimited(backend, "max_concurrency", max(due, CONCURRENCY_RETRY_AFTER_S))

    async def aclose(self) -> None:
        return None


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
        lease_ttl_s: float = 30.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        op_timeout_s: float = 0.25,
        poll_s: float = 0.05,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._ttl = lease_ttl_s
        self._clock = clock
        self._sleep = sleep
        self._rng = rng
        self._timeout = op_timeout_s
        self._poll = poll_s
        self._acquire = client.register_script(_ACQUIRE)  # EVALSHA, loaded again on NOSCRIPT
        self._renew = client.register_script(_RENEW)
        self._replica = os.urandom(6).hex()
        self._ids = count()
        self._keys: dict[str, tuple[str, str]] = {}
        self._queues: dict[str, _Queues] = {}  # leases key -> this replica's waiters
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
            self._queues[keys[0]] = _Queues()
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
        waiter = _Waiter()
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

    async def _ask(self, keys: tuple[str, str], args: _Args, queue: _Queue) -> float | None:
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
