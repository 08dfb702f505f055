"""Rollback decisions shared by replicas through Redis publish/subscribe.

Every local circuit transition (a ``CircuitEvent`` that did not come from another
replica) is published on ``CHANNEL`` from a background task, never on the request path.
Every replica subscribes and makes the same transition on its own circuit
(``Circuit.follow``), so a rollback tripped anywhere takes effect everywhere within a
Redis round trip, rather than after a poll interval.

While Redis is unreachable, publishing fails quietly (each replica keeps deciding on its
own traffic) and the listener reconnects every ``RETRY_S``. ``SharedWindows`` below
shares the error windows. Not shared: the state of circuits that changed before a
replica started, and readiness counts (each replica judges its own traffic).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis

from canary.safety.breaker import Breakers, CircuitEvent
from canary.safety.windows import Stats
from canary.types import AsyncResource

log = structlog.get_logger("canary.fleet.shared")

CHANNEL = "canary:breakers"
PUBLISH_TIMEOUT_S = 0.5
RETRY_S = 1.0


class SharedBreakers(AsyncResource):
    """Publishes this replica's circuit transitions and follows the others'."""

    def __init__(self, client: Redis, breakers: Breakers, replica_id: str) -> None:
        self.client = client
        self.breakers = breakers
        self.replica_id = replica_id
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listener: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()
        breakers.listeners.append(self._on_event)

    def _on_event(self, event: CircuitEvent) -> None:
        if event.remote:
            return  # followed from another replica: it has been published already
        payload = orjson.dumps(
            {
                "replica": self.replica_id,
                "backend": event.backend,
                "to": event.to_state,
                "reason": event.reason,
            }
        )
        task = asyncio.get_running_loop().create_task(self._publish(payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, payload: bytes) -> None:
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await self.client.publish(CHANNEL, payload)
        except Exception as exc:  # Redis down: this replica's decision stays local
            log.debug("shared.publish_failed", error=type(exc).__name__)

    async def start(self) -> None:
        self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                self.subscribed.set()
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._follow(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis unreachable: try again shortly
                self.subscribed.clear()
                log.debug("shared.listen_failed", error=type(exc).__name__)
                await asyncio.sleep(RETRY_S)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.reset()  # unsubscribes and releases the connection

    def _follow(self, data: bytes) -> None:
        try:
            msg = orjson.loads(data)
            if msg["replica"] == self.replica_id:
                return
            circuit = self.breakers.get(str(msg["backend"]))
            if circuit is not None:
                circuit.follow(str(msg["to"]), f"{msg['reason']} (on replica {msg['replica']})")
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            log.warning("shared.bad_message", error=type(exc).__name__)

    async def aclose(self) -> None:
        tasks = [*self._tasks, *([self._listener] if self._listener else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


WINDOWS_SYNC_S = 0.5
FRESH_S = 2.0  # an entry older than this is a replica that left or lost Redis
SKEW_S = 1.0  # counts taken since the same circuit change, give or take clock skew


def apply_remote(
    stats: Stats,
    breakers: Breakers,
    name: str,
    entries: Iterable[tuple[float, ...]],
    now: float,
) -> None:
    """Sum other processes' (requests, errors, since, sent_at) into ``name``'s window and
    apply the trip rule to the new figures.

    An entry counts only while fresh and only if everything in it was counted after our
    circuit's last fresh window (give or take clock skew), so errors from before a circuit
    closed cannot re-trip it; a process that started later counts from its start.
    """
    circuit = breakers.get(name)
    reset_at = circuit.reset_at if circuit is not None else 0.0
    remote_requests = remote_errors = 0
    for requests, errors, their_since, sent in entries:
        if now - sent > FRESH_S or their_since < reset_at - SKEW_S:
            continue
        remote_requests += int(requests)
        remote_errors += int(errors)
    window = stats.window(name)
    window.remote_requests, window.remote_errors = remote_requests, remote_errors
    if circuit is not None:
        circuit.check()


class SharedWindows(AsyncResource):
    """Each replica's window counts per backend, exchanged through Redis every 0.5 s.

    One pipelined round trip per interval, off the request path: write this replica's
    (requests, errors, since, sent_at) into a hash per backend, read everyone's. Others'
    counts are summed into ``Window.remote_*``, so the trip rule and ``/status`` see the
    whole fleet, and the trip rule is applied at once to the new figures. An entry counts
    only while fresh and only if it was counted since the same circuit change as ours
    (closing propagates by pub/sub), so old errors cannot re-trip a circuit that closed.
    """

    def __init__(
        self,
        client: Redis,
        stats: Stats,
        breakers: Breakers,
        replica_id: str,
        *,
        interval_s: float = WINDOWS_SYNC_S,
        wall: Callable[[], float] = time.time,
        forget_on_failure: bool = True,
    ) -> None:
        self.client = client
        self.healthy = False  # the last exchange succeeded
        # False when sibling workers take over the exchange while Redis is down (fleet)
        self.forget_on_failure = forget_on_failure
        self.stats = stats
        self.breakers = breakers
        self.replica_id = replica_id
        self.interval_s = interval_s
        self._wall = wall
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.sync()
                self.healthy = True
            except Exception as exc:  # Redis down: decide on local counts (and siblings')
                self.healthy = False
                if self.forget_on_failure:
                    self._forget()
                log.debug("shared.windows_failed", error=type(exc).__name__)

    def _since(self, backend: str) -> float:
        circuit = self.breakers.get(backend)
        return circuit.epoch if circuit is not None else 0.0

    async def sync(self) -> None:
        """One exchange: publish ours, sum the others', apply the trip rule."""
        names = list(self.stats.windows)
        if not names:
            return
        now = self._wall()
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            window = self.stats.windows[name]
            requests, errors = window.counts()
            key = f"canary:windows:{{{name}}}"
            value = f"{requests},{errors},{self._since(name):.3f},{now:.3f}"
            pipe.hset(key, self.replica_id, value)
            pipe.pexpire(key, int(max(10.0, 2 * window.window_s) * 1000))
            pipe.hgetall(key)
        async with asyncio.timeout(PUBLISH_TIMEOUT_S):
            results = await pipe.execute()
        me = self.replica_id.encode()
        for i, name in enumerate(names):
            entries = (
                tuple(float(x) for x in value.split(b","))
                for replica, value in results[3 * i + 2].items()
                if replica != me
            )
            apply_remote(self.stats, self.breakers, name, entries, now)

    def _forget(self) -> None:
        for window in self.stats.windows.values():
            window.remote_requests = window.remote_errors = 0

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._forget()
