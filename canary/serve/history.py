"""The history's sampler and its reader: one lifespan resource (``canary.observe.history``
holds the ring and the merge, ``canary.fleet.history`` carries rows between processes).

Once a second, just after the second turns, it samples the ring, then hands the new rows to
the sibling workers' files and to Redis, off the request path; a failure there is logged
and only makes the fleet's view partial. ``read(since)`` answers ``/status/history``: this
process's rows, plus the other replicas' from Redis when it answers (every worker is a
replica there), else the sibling workers' files.
"""

from __future__ import annotations

import asyncio
import contextlib
import math

import structlog

from canary.fleet.history import ReplicaRows, WorkerRows
from canary.observe.history import History, HistoryDoc, Row, document, merge
from canary.types import AsyncResource

log = structlog.get_logger("canary.serve.history")

INTERVAL_S = 1.0
PAST_THE_TURN_S = 0.05  # sample just after a second ends, when its bucket is complete


class Sampling(AsyncResource):
    """The sampling task over ``history`` and, with a fleet, where its rows go."""

    def __init__(
        self,
        history: History,
        workers: WorkerRows | None = None,
        replicas: ReplicaRows | None = None,
    ) -> None:
        self.history = history
        self.workers = workers
        self.replicas = replicas
        self._task: asyncio.Task[None] | None = None
        self._sent = -1  # the last row's second handed to the fleet

    async def start(self) -> None:
        self.history.sample()  # sets the start: the ring begins with this process
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        clock = self.history.stats.clock
        while True:
            now = clock()
            await asyncio.sleep(math.floor(now) + INTERVAL_S + PAST_THE_TURN_S - now)
            await self.tick()

    async def tick(self) -> None:
        """Sample, then share the rows not shared yet; never raises (a sampler must live)."""
        try:
            if self.history.sample() == 0:
                return
            rows = self.history.rows(self._sent + 1)
        except Exception:  # a bug here must not stop the next second's sample
            log.exception("history.sample_failed")
            return
        if not rows:
            return
        self._sent = rows[-1]["t"]
        if self.workers is not None:
            try:
                self.workers.append(rows)
            except OSError as exc:
                log.warning("history.write_failed", error=type(exc).__name__)
        if self.replicas is not None:
            try:
                await self.replicas.push(rows)
            except Exception as exc:  # Redis down or slow: this replica's rows stay local
                log.debug("history.push_failed", error=type(exc).__name__)

    async def read(self, since: int) -> HistoryDoc:
        """``/status/history``: every process's rows from ``since`` on, merged per second."""
        others: list[list[Row]] | None = None
        if self.replicas is not None:
            try:
                others = await self.replicas.read(since)
            except Exception as exc:  # Redis down: the sibling workers, if any, still count
                log.debug("history.read_failed", error=type(exc).__name__)
        if others is None and self.workers is not None:
            others = self.workers.read(since)
        own = self.history.rows(since)
        others = others or []
        return document(merge(own, others), since, 1 + len(others), self.history.keep_s)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
