"""Rollback decisions shared by replicas through Redis publish/subscribe.

Every local circuit transition (a ``CircuitEvent`` that did not come from another
replica) is published on ``CHANNEL`` from a background task, never on the request path.
Every replica subscribes and makes the same transition on its own circuit
(``Circuit.follow``), so a rollback tripped anywhere takes effect everywhere within a
Redis round trip, rather than after a poll interval.

While Redis is unreachable, publishing fails quietly (each replica keeps deciding on its
own traffic) and the listener reconnects every ``RETRY_S``. What is not shared yet: the
error windows themselves (each replica trips on its own counts) and the state of
circuits that changed before a replica started.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis

from canary.breaker import Breakers, CircuitEvent

log = structlog.get_logger("canary.shared")

CHANNEL = "canary:breakers"
PUBLISH_TIMEOUT_S = 0.5
RETRY_S = 1.0


class SharedBreakers:
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
