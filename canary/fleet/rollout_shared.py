"""One rollout shared by every replica, or every worker of a host (SPEC §10).

One process decides: it holds the store's lease (Redis: a key renewed every ``PERIOD_S``
that lapses ``LEASE_S`` after its holder dies; a host: an ``flock`` the kernel drops with
its holder) and writes the rollout's state when it changes. The others follow: they read
the state each period and take it (``Rollouts.adopt``), so their weights move within a
second. A process that starts, or takes over the lease, resumes from that state; only
the step's analysis starts over.

Steering on a follower is queued for the decider, which answers on a reply the follower
waits for (bounded). While the store does not answer nobody decides: the rollout holds
where it is (circuits still roll back in each process), and says so. The decider judges
the calls it saw itself (``step_min_requests`` counts those).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from datetime import datetime
from typing import Any

import orjson
import structlog

from canary.fleet.rollout_stores import Store
from canary.safety.rollout import Refused, Transition
from canary.safety.rollouts import Rollouts
from canary.types import AsyncResource

log = structlog.get_logger("canary.fleet.rollout")

PERIOD_S, LEASE_S, REPLY_WAIT_S = 0.25, 2.0, 3.0


class SharedRollout(AsyncResource):
    """The lease, the shared state and the steering queue (see the module docstring)."""

    def __init__(self, store: Store, rollouts: Rollouts, replica_id: str) -> None:
        self.store = store
        self.rollouts = rollouts
        self.replica_id = replica_id
        self._task: asyncio.Task[None] | None = None
        self._seen: bytes | None = None
        self._healthy = True

    async def start(self) -> None:
        self.rollouts.leading = False  # until the lease says otherwise
        self.rollouts.shared = self
        with contextlib.suppress(Exception):
            await self.step()  # decide or follow from the first request on
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        self.rollouts.shared = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.store.release(self.replica_id)  # hand over now, not after LEASE_S
        self.rollouts.leading = True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(PERIOD_S)
            try:
                await self.step()
                if not self._healthy:
                    log.info("rollout.shared_back", where=self.store.where)
                self._healthy = True
            except Exception as exc:  # the store does not answer: nobody decides, it holds
                self.rollouts.leading = False
                self.rollouts.persisted = f"{self.store.where}: not answering, the rollout holds"
                if self._healthy:
                    log.warning("rollout.shared_unavailable", error=type(exc).__name__)
                self._healthy = False

    async def step(self) -> None:
        """One period: hold or take the lease; then decide and write, or read and follow."""
        if self.rollouts.machine is None:
            return  # no rollout block: nothing to decide, no lock file, no Redis call
        mine = await self.store.lease(self.replica_id, int(LEASE_S * 1000))
        if mine and not self.rollouts.leading:
            await self._follow()  # take over from where the last decider left it
            log.info("rollout.deciding", replica=self.replica_id)
        self.rollouts.leading = mine
        if mine:
            await self._answer_commands()
            await self._write()
            self.rollouts.persisted = self.store.where
        else:
            await self._follow()
            self.rollouts.persisted = f"{self.store.where}; another process decides"

    async def _write(self) -> None:
        m = self.rollouts.machine
        if m is None:
            return
        state = orjson.dumps(m.export())
        if state != self._seen:
            await self.store.set_state(state)
            self._seen = state

    async def _follow(self) -> None:
        raw = await self.store.get_state()
        if raw is None or raw == self._seen:
            return
        self._seen = raw
        with contextlib.suppress(ValueError, KeyError, TypeError):
            self.rollouts.adopt(orjson.loads(raw))

    async def _answer_commands(self) -> None:
        for _ in range(10):
            raw = await self.store.pop()
            if raw is None:
                return
            command = orjson.loads(raw)
            reply = self._apply(str(command.get("verb", "")))
            await self.store.reply(str(command.get("id")), orjson.dumps(reply))

    def _apply(self, verb: str) -> dict[str, Any]:
        try:
            return {"transition": self.rollouts.steer(verb).as_dict()}
        except Refused as exc:
            return {"refused": str(exc)}

    async def steer(self, verb: str) -> Transition:
        """Steer here when this process decides, else through the queue to the one that does."""
        if self.rollouts.leading:
            t = self.rollouts.steer(verb)
            with contextlib.suppress(Exception):
                await self._write()  # followers see it on their next read
            return t
        ident = os.urandom(8).hex()
        try:
            await self.store.push(ident, orjson.dumps({"id": ident, "verb": verb}))
            reply = await self._reply(ident)
        except Refused:
            raise
        except Exception as exc:
            raise Refused(f"the shared state is not answering ({type(exc).__name__})") from None
        if "refused" in reply:
            raise Refused(reply["refused"])
        await self._follow()
        return _transition(reply["transition"])

    async def _reply(self, ident: str) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REPLY_WAIT_S
        while loop.time() < deadline:
            raw = await self.store.answer(ident)
            if raw is not None:
                reply: dict[str, Any] = orjson.loads(raw)
                return reply
            await asyncio.sleep(0.05)
        raise Refused(f"no process decided within {REPLY_WAIT_S:g} s: is one holding the lease?")


def _transition(d: dict[str, Any]) -> Transition:
    return Transition(
        datetime.fromisoformat(d["at"]),
        d["backend"],
        d["from"],
        d["to"],
        int(d["step"]),
        float(d["percent"]),
        d["reason"],
    )
