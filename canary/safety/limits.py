"""Per-backend ``max_concurrency`` and ``max_qps``: the contract, and one process's limiter.

    Limiter (Protocol)  acquire(backend, *, max_concurrency, max_qps, wait_s) -> Lease
    ├── MemoryLimiter   one replica; ``share`` scales the limits (Redis down: each of N takes 1/N)
    ├── RedisLimiter    all replicas against one Redis, slots and starts taken in batches
    │                   by one atomic Lua call (safety.redis_limiter, safety.redis_scripts)
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

Waiting is a bounded FIFO queue per backend in each process (``WaitQueue``, shared with
RedisLimiter), and only its head asks for a start; the others wait for their turn. A start
alone (a retry: its call holds its slot) has a queue of its own, so it never waits behind
requests waiting for that very slot. In memory the head wakes when a lease is released, or
sleeps exactly until the next start is due (no polling). A request arriving while others
wait joins the queue without asking. Past ``wait_s`` (or at once, when the next start is due
later than that) a waiter is RateLimited.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Iterable
from typing import Final, Protocol

# RateLimited is re-exported: canary.proxy imports it from here.
from canary.errors import RateLimited as RateLimited
from canary.types import AsyncResource, Clock, Sleep

# Nobody knows when an in-flight call ends: a concurrency refusal suggests this much.
CONCURRENCY_RETRY_AFTER_S: Final = 1.0


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


class Waiter:
    __slots__ = ("fut",)

    def __init__(self) -> None:
        self.fut: asyncio.Future[None] | None = None


class WaitQueue:
    """One backend's waiters in this process, oldest first; only the head asks for a start."""

    __slots__ = ("blocked_by", "queue")

    def __init__(self) -> None:
        self.queue: deque[Waiter] = deque()
        self.blocked_by = "max_concurrency"  # what refused the head last

    def wake(self) -> None:
        if self.queue and (fut := self.queue[0].fut) is not None and not fut.done():
            fut.set_result(None)

    async def nap(self, waiter: Waiter, sleep: Sleep, seconds: float) -> None:
        """Until ``wake()`` reaches ``waiter`` (a slot freed, or its turn came) or ``seconds``."""
        waiter.fut = fut = asyncio.get_running_loop().create_future()
        timer = asyncio.ensure_future(sleep(seconds))
        try:
            await asyncio.wait((fut, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            waiter.fut = None

    def leave(self, waiter: Waiter) -> None:
        was_head = self.queue[0] is waiter
        self.queue.remove(waiter)
        if was_head:  # pass the turn on, even when cancelled
            self.wake()


class Queues:
    """A backend's waiters for a slot and a start, and those for a start alone: a retry's
    call holds its slot already, so it must not wait behind requests waiting for that slot."""

    __slots__ = ("for_slot", "for_start")

    def __init__(self) -> None:
        self.for_slot = WaitQueue()
        self.for_start = WaitQueue()

    def of(self, slot: bool) -> WaitQueue:
        return self.for_slot if slot else self.for_start


class _Backend(Queues):
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
        waiter = Waiter()
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
