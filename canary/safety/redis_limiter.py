"""Limits shared by every replica through one Redis, taken in batches when far from them.

The contract, the sliding-log QPS rule and the per-process wait queues are those of
``canary.safety.limits``. What costs Redis time is the call, not the admit, so a replica
takes slots and starts from Redis in batches and hands them out locally:

- **Slots** (``max_concurrency``). Redis holds how many slots each replica has reserved
  (a hash, replica -> count) and until when each replica is alive (a sorted set scored by
  expiry, renewed every ``lease_ttl_s / 3``). A call takes a spare slot of its replica
  without a round trip; only when none is spare does the replica ask for more. A released
  slot stays reserved as a spare up to ``keep`` (the size of the batch last granted, minus
  one), the rest goes back within ``RELEASE_BATCH_S`` in one command; an idle replica gives
  all its spares back at its next renewal. Concurrency is never over: the script grants
  only while the sum of the reservations is under the limit, and a replica admits only
  within its reservation.
- **Starts** (``max_qps``). A batch of k starts goes into Redis's log as one entry
  ``"expiry k"`` (a list, oldest at the tail, and its running total). The replica uses them
  within ``HOLD_S`` of sending the request, which Redis received later, so each real start
  is at most ``HOLD_S`` after the time the log gives it; a batch's entry therefore stays in
  the log for ``period + HOLD_S`` (a single start for ``period``, as before). The log then
  holds at most n entries in any ``period + HOLD_S``, so at most n real starts happen in any
  ``period``: the limit is exact, fleet-wide, at the price of up to ``HOLD_S / period``
  (10 %) of the limit's throughput while batches are taken, and of starts that expire
  unused (counted, never made).
- **Batch size.** The replica asks for as many starts as it made in the last ``HOLD_S`` at
  its recent rate (at least 1, at most ``BATCH_MAX``), and for ``BATCH_MAX`` slots. Redis
  grants at most ``1/SHARE_DIV`` of what is still free: near a limit every grant is a single
  slot or start, exactly as one call per admit would be; far from it, one round trip
  serves many calls.

So at a steady rate r a replica makes about one ACQUIRE per ``HOLD_S`` (not one per call),
plus one batched return and one renewal now and then: at 100 calls/s, about one Redis
script per ten calls, instead of a script and a ZREM per call.

ACQUIRE: KEYS = [slots hash, alive zset, starts list, starts total], ARGV = [replica,
max_concurrency or 0, slots wanted, n or 0, period_s, hold_s, starts wanted, lease_ttl_s].
Returns {1, slots granted, starts granted} or {0, wait_s, 1} for max_concurrency, {0, wait_s,
2} for max_qps (wait_s: until the next start is due). Nothing is written unless both pass.

Clock: the scripts read Redis's own TIME, so every replica judges windows and expiry on one
clock. Keys carry a hash tag per backend ({name}) so a backend's keys live on one node in a
cluster. The local monotonic clock bounds the wait and a batch's local validity. Needs
Redis >= 5 (TIME before writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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
from canary.safety.redis_scripts import ACQUIRE, RENEW
from canary.types import AsyncResource, Clock, Sleep

T = TypeVar("T")

RELEASE_BATCH_S: Final = 0.005  # spare slots beyond ``keep`` go back within this
HOLD_S: Final = 0.1  # a batch of starts is used within this of asking for it
BATCH_MAX: Final = 64  # slots or starts asked for at once
RATE_S: Final = 0.25  # the local rate, which sizes a batch of starts, is measured over this
SHARE_DIV: Final = 32  # Redis grants at most 1/SHARE_DIV of what is free (at least 1)
_REASONS: Final = {1: "max_concurrency", 2: "max_qps"}


@dataclass(frozen=True, slots=True)
class RedisLimiterOptions:
    """RedisLimiter's tuning: how long a reservation lives unrenewed, how long one Redis
    call may take before Redis counts as down, how often a waiting head asks again."""

    lease_ttl_s: float = 30.0
    op_timeout_s: float = 0.25
    poll_s: float = 0.05


class _Share(Queues):
    """One backend as this replica holds it: slots reserved and in use, starts in hand."""

    __slots__ = (
        "asking",
        "concurrency",
        "counted",
        "held",
        "in_flight",
        "keep",
        "keys",
        "n",
        "rate",
        "since",
        "tokens",
        "until",
        "used",
    )

    def __init__(self, keys: tuple[str, str, str, str], now: float) -> None:
        super().__init__()
        self.keys = keys
        self.held = 0  # slots reserved in Redis for this replica
        self.in_flight = 0  # of those, in use
        self.keep = 0  # spares kept reserved after a release
        self.concurrency = 0  # the limit the reservation was granted under
        self.tokens = 0  # starts granted, not yet used
        self.until = 0.0  # ... usable until then (local clock)
        self.n = 0  # the start limit they were granted under
        self.counted = 0  # starts since ``since``, for the rate
        self.since = now
        self.rate = 0.0  # starts per second, over the last RATE_S or more
        self.used = False  # an acquire since the last renewal
        self.asking: asyncio.Future[None] | None = None  # the ACQUIRE under way, if any

    def has_slot(self, concurrency: int) -> bool:
        """A spare slot reserved under this very limit."""
        return bool(concurrency) and self.in_flight < self.held and concurrency == self.concurrency

    def has_start(self, now: float, n: int) -> bool:
        """A start in hand, still usable, granted under this very limit."""
        return bool(n) and self.tokens > 0 and now < self.until and n == self.n

    def give_back(self, slot: bool, start: bool) -> None:
        """Undo what was taken locally for a call that Redis then refused."""
        if slot:
            self.in_flight -= 1
            self.for_slot.wake()
        if start:
            self.tokens += 1

    def forget(self, slot: bool) -> None:
        """Redis failed: undo the slot taken for this call, keep no spare beyond what is
        reserved (given back when Redis answers) and no start in hand. A reservation Redis
        lost (a restart) is found at the next renewal."""
        if slot:
            self.in_flight -= 1
            self.for_slot.wake()
        self.keep, self.tokens = 0, 0

    def count_start(self, now: float) -> None:
        self.counted += 1
        if now - self.since >= RATE_S:
            self.rate = self.counted / (now - self.since)
            self.counted, self.since = 0, now

    def wanted_starts(self) -> int:
        return max(1, min(BATCH_MAX, math.ceil(self.rate * HOLD_S) + 1))

    def spare(self) -> int:
        """Reserved slots to give back now: the spares beyond ``keep``."""
        return max(0, self.held - self.in_flight - self.keep)


class _RedisLease:
    __slots__ = ("_limiter", "_share")

    def __init__(self, limiter: RedisLimiter, share: _Share) -> None:
        self._limiter: RedisLimiter | None = limiter
        self._share = share

    async def release(self) -> None:
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            limiter._release(self._share)


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
        self._acquire = client.register_script(ACQUIRE)  # EVALSHA, loaded again on NOSCRIPT
        self._renew = client.register_script(RENEW)
        self._replica = os.urandom(6).hex()
        self._shares: dict[str, _Share] = {}
        self._renewer: asyncio.Task[None] | None = None
        # The pending give-back of spare slots; cancelled by ``aclose``, so a closed limiter
        # never starts one on a pool (or a loop) that is gone.
        self._flush_timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._flushes: set[asyncio.Task[None]] = set()

    async def acquire(
        self, backend: str, *, max_concurrency: int | None, max_qps: float | None, wait_s: float
    ) -> Lease:
        if max_concurrency is None and max_qps is None:
            return NO_LEASE
        share = self._shares.get(backend) or self._share(backend)
        share.used = True
        concurrency = max_concurrency or 0
        n, period = (0, 0.0) if max_qps is None else qps_window(max_qps)
        limits = (concurrency, n, period)
        deadline = self._clock() + wait_s
        queue = share.of(bool(concurrency))
        if not queue.queue:  # FIFO: nobody waiting here, so nobody to overtake
            due = await self._ask(share, limits, queue)
            if due is None:
                return self._granted(share, concurrency)
            remaining = deadline - self._clock()
            if remaining <= 0 or due > remaining:
                raise self._refusal(backend, queue.blocked_by, due)
        return await self._wait(backend, share, limits, deadline)

    def _share(self, backend: str) -> _Share:
        base = f"{self._prefix}:limits:{{{backend}}}"
        keys = (f"{base}:slots", f"{base}:alive", f"{base}:starts", f"{base}:started")
        share = self._shares[backend] = _Share(keys, self._clock())
        return share

    async def _wait(
        self, backend: str, share: _Share, limits: tuple[int, int, float], deadline: float
    ) -> Lease:
        """Wait in this replica's queue: only its head asks Redis, one round trip at a time."""
        queue = share.of(bool(limits[0]))
        waiter = Waiter()
        queue.queue.append(waiter)
        try:
            while True:
                head = queue.queue[0] is waiter
                due = await self._ask(share, limits, queue) if head else 0.0
                if due is None:
                    return self._granted(share, limits[0])
                remaining = deadline - self._clock()
                if remaining <= 0 or due > remaining:
                    raise self._refusal(backend, queue.blocked_by, due)
                if not head:  # woken when the turn comes, or out of time
                    await queue.nap(waiter, self._sleep, remaining)
                elif due > 0:  # the next start is due then; a release changes nothing
                    # Jitter keeps replicas told the same instant from arriving in lockstep.
                    await self._sleep(min(due + self._jitter(), remaining))
                else:  # for a slot: woken by a release of ours, or poll for the others'
                    await queue.nap(
                        waiter, self._sleep, min(self._poll + self._jitter(), remaining)
                    )
        finally:
            queue.leave(waiter)

    async def _ask(
        self, share: _Share, limits: tuple[int, int, float], queue: WaitQueue
    ) -> float | None:
        """A slot and a start, from what this replica holds or else one ACQUIRE for what it
        lacks: None when granted, else seconds until a start is due (0: a slot)."""
        concurrency, n, period = limits
        while share.asking is not None:  # one ACQUIRE per backend at a time: wait for its
            await asyncio.shield(share.asking)  # batch rather than each asking Redis too
        sent = self._clock()
        slot = share.has_slot(concurrency)
        start = share.has_start(sent, n)
        if slot:  # taken before the round trip: nobody else can take it meanwhile
            share.in_flight += 1
        if start:
            share.tokens -= 1
        if (slot or not concurrency) and (start or not n):
            return None
        args = (
            self._replica,
            concurrency,
            BATCH_MAX if concurrency and not slot else 0,
            n,
            period,
            HOLD_S,
            share.wanted_starts() if n and not start else 0,
            self._ttl,
            SHARE_DIV,
        )
        share.asking = asyncio.get_running_loop().create_future()
        try:
            granted, got_slots, got_starts = await self._call(
                self._acquire(keys=share.keys, args=args)
            )
        except StateUnavailable:
            share.forget(slot)  # Redis may have lost what we hold: nothing kept
            raise
        finally:
            share.asking.set_result(None)
            share.asking = None
        if not granted:
            share.give_back(slot, start)
            queue.blocked_by = _REASONS[int(got_starts)]
            return float(got_slots)
        if concurrency and not slot:
            share.held += int(got_slots)
            share.in_flight += 1
            share.keep, share.concurrency = int(got_slots) - 1, concurrency
        if n and not start:
            share.tokens, share.until, share.n = int(got_starts) - 1, sent + HOLD_S, n
        return None

    def _granted(self, share: _Share, concurrency: int) -> Lease:
        share.count_start(self._clock())
        if not concurrency:
            return NO_LEASE
        if self._renewer is None:
            self._renewer = asyncio.get_running_loop().create_task(self._renew_forever())
        return _RedisLease(self, share)

    def _jitter(self) -> float:
        return self._rng() * 0.2 * self._poll

    @staticmethod
    def _refusal(backend: str, reason: str, due: float) -> RateLimited:
        # A slot, or a waiter behind the head: nobody knows when; suggest a second.
        return RateLimited(backend, reason, due if due > 0 else CONCURRENCY_RETRY_AFTER_S)

    def _release(self, share: _Share) -> None:
        """The slot is this replica's spare at once; spares beyond ``keep`` go back to Redis
        in one command per backend every RELEASE_BATCH_S, off the request's path. Another
        replica may see a freed slot up to RELEASE_BATCH_S late."""
        share.in_flight -= 1
        share.for_slot.wake()  # a head waiting for a slot takes this one at once
        if share.spare() and self._flush_timer is None and not self._closed:
            loop = asyncio.get_running_loop()
            self._flush_timer = loop.call_later(RELEASE_BATCH_S, self._start_flush)

    def _start_flush(self) -> None:
        self._flush_timer = None
        task = asyncio.get_running_loop().create_task(self._flush())
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self, keep: bool = True) -> None:
        """Give back the spares beyond ``keep`` (all of them with ``keep`` False)."""
        for share in list(self._shares.values()):
            back = share.spare() if keep else share.held - share.in_flight
            if back > 0:
                share.held -= back  # at once: no call takes them while they travel
                try:
                    await self._call(self._client.hincrby(share.keys[0], self._replica, -back))
                except StateUnavailable:  # still ours in Redis: given back next time
                    share.held += back

    async def _renew_forever(self) -> None:
        while True:
            await self._sleep(self._ttl / 3)
            for share in self._shares.values():
                if not share.used:  # idle since the last renewal: no spares kept
                    share.keep = 0
                share.used = False
            await self._flush()
            for share in list(self._shares.values()):
                if share.held:  # Redis down: try again next round; meanwhile it may lapse
                    with contextlib.suppress(StateUnavailable):
                        await self._renew_one(share)

    async def _renew_one(self, share: _Share) -> None:
        """This replica alive for another ``lease_ttl_s``; a reservation that lapsed (Redis
        restarted, or down too long) is taken again for the slots in use."""
        lapsed = await self._call(
            self._renew(keys=share.keys[:2], args=[self._replica, self._ttl, share.in_flight])
        )
        if int(lapsed):
            share.held = share.in_flight

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
        """Give back every spare slot; stop renewing (slots in use lapse after lease_ttl_s)."""
        self._closed = True
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        await self._flush(keep=False)
        await asyncio.gather(*self._flushes, return_exceptions=True)
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
